"""`lmlab generate`, `lmlab chat`, `lmlab sampling explain` and the chat template."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.cli import main
from lmlab.data.chat import render
from lmlab.errors import LmlabError


@pytest.fixture(scope="module")
def ckpt(cli_model) -> Path:
    return cli_model


def test_generate_json_with_every_control(ckpt, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Question: Where"}\n{"prompt": "The answer"}\n')
    code = main(["generate", "--checkpoint", str(ckpt), "--prompts_file", str(prompts), "--temperature", "0.9",
                 "--top_k", "20", "--top_p", "0.95", "--min_p", "0.01", "--repetition_penalty", "1.1",
                 "--presence_penalty", "0.2", "--frequency_penalty", "0.1", "--seed", "3", "--n", "2",
                 "--max_new_tokens", "7", "--top_logprobs", "2", "--stop", "[\"zzz\"]", "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)["results"]
    assert [r["prompt"] for r in res] == ["Question: Where", "The answer"]
    for r in res:
        assert len(r["completions"]) == 2
        for c in r["completions"]:
            assert len(c["logprobs"]) == len(c["token_ids"]) <= 7 and len(c["top_logprobs"][0]) == 2
            assert c["finish_reason"] in ("stop", "length")
        assert r["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in r["completions"])


def test_generate_backends_agree_and_a_bad_backend_is_named(ckpt, capsys):
    """--backend torch and native give the same greedy text; an unknown backend is one clear error."""
    from lmlab.infer import native

    args = ["generate", "--checkpoint", str(ckpt), "--prompt", "Question: Where", "--temperature", "0",
            "--max_new_tokens", "12", "--json", "--device", "cpu"]  # the native step is CPU-only (GPU visible or not)
    texts = []
    for backend in ("torch", "native") if native.load() is not None else ("torch",):
        assert main(args + ["--backend", backend]) == 0
        texts.append(json.loads(capsys.readouterr().out)["results"][0]["completions"][0]["text"])
    assert len(set(texts)) == 1
    assert main(args + ["--backend", "gpu"]) == 2
    assert "backend must be 'auto', 'torch' or 'native'" in capsys.readouterr().err


def test_generate_bad_sampling_value(ckpt, capsys):
    code = main(["generate", "--checkpoint", str(ckpt), "--prompt", "x", "--top_p", "1.5"])
    assert code == 2
    assert "top_p" in capsys.readouterr().err


def test_generate_prompt_longer_than_context(ckpt, capsys):
    code = main(["generate", "--checkpoint", str(ckpt), "--prompt", "word " * 200])
    assert code == 2
    assert "longer than the model's context" in capsys.readouterr().err


def test_explain_prints_and_draws(ckpt, tmp_path, capsys):
    png = tmp_path / "e.png"
    code = main(["sampling", "explain", "--checkpoint", str(ckpt), "--prompt", "Question:", "--out", str(png),
                 "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert png.stat().st_size > 2000
    cands = res["candidates"]
    assert cands[0]["T=0.5"] >= cands[0]["T=1"] >= cands[0]["T=2"]  # the top token sharpens as T falls
    assert sum(c["top-k=5"] > 0 for c in cands) <= 5
    assert res["entropy_nats"]["T=0.5"] < res["entropy_nats"]["T=1"] < res["entropy_nats"]["T=2"]
    assert res["kept"]["top-p=0.9"] == res["nucleus_size"]


def test_chat_reads_turns_and_streams(ckpt):
    r = subprocess.run([sys.executable, "-m", "lmlab.cli", "chat", "--checkpoint", str(ckpt), "--max_new_tokens",
                        "5", "--seed", "0", "--system", "Be brief."], input="hello\nand again\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("model> ") == 2


def test_chat_template():
    text = render([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])
    assert text == "<|system|> S<|end_of_turn|><|user|> Hi<|end_of_turn|><|assistant|>"
    with pytest.raises(LmlabError, match="role"):
        render([{"role": "robot", "content": "x"}])


def test_chat_turn_markers_are_single_special_tokens(tiny_data):
    from lmlab.data.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    ids = tok.encode(render([{"role": "user", "content": "Hi"}]))
    assert ids[0] == tok.token_to_id("<|user|>") and tok.end_of_turn_id in ids
    assert ids[-1] == tok.token_to_id("<|assistant|>")


@pytest.mark.parametrize("verb", [["sample"], ["generate", "--prompt", "x"], ["sampling", "explain", "--prompt", "x"]])
def test_a_missing_default_checkpoint_names_it_and_points_at_pretrains(verb, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(verb) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found: runs/quickstart/checkpoint" in err and "runs/pretrain" not in err
    (tmp_path / "runs" / "pretrain" / "checkpoint").mkdir(parents=True)
    assert main(verb) == 2
    assert "pass --checkpoint runs/pretrain/checkpoint" in capsys.readouterr().err
