"""Every problem a user can fix ends `lmlab` with exit code 2 and one `lmlab: error:` line, never a traceback.

To add a case, add a row to CASES: an id, a function that builds the bad input under `env.tmp` and returns
the argv, and a keyword the error line must contain (what names the problem).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.usercode import call_user


@pytest.fixture(scope="module")
def ckpt(cli_model) -> Path:
    return cli_model


@pytest.fixture()
def env(ckpt, tiny_data, tmp_path, monkeypatch) -> types.SimpleNamespace:
    """What a row's builder may use: a scratch dir, the checkpoint, the shards, the world, monkeypatch."""
    return types.SimpleNamespace(tmp=tmp_path, ckpt=str(ckpt), data=str(tiny_data),
                                 world=str(tiny_data.parent / "world"), monkeypatch=monkeypatch)


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def user_module(env, **fns: Callable) -> str:
    """A module of user functions, importable by name for `mod:fn` flags; returns its name."""
    mod = types.ModuleType("lmlab_test_user_fns")
    for name, fn in fns.items():
        setattr(mod, name, fn)
    env.monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod.__name__


def boom(*args):
    raise ValueError("user code failed")


# ------------------------------------------------------------------------------------------ builders
def bad_utf8_prompts(env, suffix: str) -> list[str]:
    f = write(env.tmp / f"prompts{suffix}", b'{"prompt": "ok"}\n{"prompt": "\xff\xfe"}\n')
    return ["generate", "--checkpoint", env.ckpt, "--prompts_file", f]


def device_argv(env, verb: str, device: str) -> list[str]:
    if verb == "pretrain":
        return ["pretrain", "--data", env.data, "--out", str(env.tmp / "run"), "--train.device", device]
    if verb == "fill-mask":
        return ["fill-mask", "a [MASK] b", "--checkpoint", env.ckpt, "--device", device]
    return ["generate", "--checkpoint", env.ckpt, "--prompt", "hi", "--device", device]


def rm_bad_margin(env) -> list[str]:
    pair = {"prompt": "Where?", "chosen": "Here.", "rejected": "There.", "margin": "big"}
    f = write(env.tmp / "pairs.jsonl", json.dumps(pair) + "\n")
    return ["rm", "--init", env.ckpt, "--data", f, "--out", str(env.tmp / "rm"), "--margin", "true",
            "--set", "train.steps=1", "--set", "train.device=cpu"]


def shards_past_vocab(env) -> list[str]:
    data = env.tmp / "data"
    shutil.copytree(env.data, data)
    meta = json.loads((data / "meta.json").read_text())
    meta["vocab_size"] = 10  # the shards hold ids up to ~300
    (data / "meta.json").write_text(json.dumps(meta))
    return ["pretrain", "--data", str(data), "--out", str(env.tmp / "run"), "--set", "model.d_model=32",
            "--set", "model.n_layers=1", "--set", "model.n_heads=2", "--set", "model.max_seq_len=48",
            "--set", "train.steps=1", "--set", "train.device=cpu"]


def scorer_raises(env) -> list[str]:
    mod = user_module(env, score=boom)
    return ["testtime", "--task", "world-qa", "--world", env.world, "--model", env.ckpt, "--chat", "false",
            "--problems", "1", "--n", "[1]", "--methods", "[scorer]", "--scorer", f"{mod}:score",
            "--max_tokens", "2", "--time_problems", "0", "--device", "cpu", "--out", str(env.tmp / "tt")]


def reward_raises(env) -> list[str]:
    mod = user_module(env, reward=boom)
    f = write(env.tmp / "prompts.jsonl", '{"prompt": "Tell me."}\n{"prompt": "Say."}\n')
    return ["rl", "--init", env.ckpt, "--data", f, "--reward", f"python:{mod}:reward", "--out",
            str(env.tmp / "rl"), "--prompts_per_step", "2", "--group_size", "2", "--max_new_tokens", "2",
            "--set", "train.steps=1", "--set", "train.device=cpu"]


def rehash(ckpt: Path) -> None:
    """Make meta.json's hashes match edited files, as someone editing a checkpoint on purpose would."""
    from lmlab.io import sha256_file

    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                     for p in sorted(ckpt.iterdir()) if p.name != "meta.json"}
    (ckpt / "meta.json").write_text(json.dumps(meta))


def edited_checkpoint(env, name: str, data: str | bytes, verb: str = "generate") -> list[str]:
    ckpt = env.tmp / "ckpt"
    shutil.copytree(env.ckpt, ckpt)
    write(ckpt / name, data)
    if name != "meta.json":
        rehash(ckpt)
    return [verb, "--checkpoint", str(ckpt), "--prompt", "hi"]


def huge_max_seq_len(env) -> list[str]:
    cfg = json.loads((Path(env.ckpt) / "config.json").read_text())
    return edited_checkpoint(env, "config.json", json.dumps({**cfg, "max_seq_len": 10**12}))


def hf_dir(env, **files: str) -> list[str]:
    """A Hugging Face directory exported from the checkpoint, with files replaced."""
    hf = env.tmp / "hf"
    assert main(["export-hf", env.ckpt, str(hf)]) == 0
    for name, text in files.items():
        write(hf / name.replace("__", "."), text)
    return ["import-hf", str(hf), str(env.tmp / "imported")]


def hf_huge_positions(env) -> list[str]:
    argv = hf_dir(env)
    cfg = json.loads((env.tmp / "hf" / "config.json").read_text())
    write(env.tmp / "hf" / "config.json", json.dumps({**cfg, "n_positions": 10**9}))
    return argv


CASES = [
    pytest.param(lambda e: ["pretrain", "--config", write(e.tmp / "r.yaml", bytes(range(256)))], "not UTF-8",
                 id="config-binary-file"),
    pytest.param(lambda e: ["pretrain", "--config", write(e.tmp / "r.yaml", b"a\x00b: 1")], "binary file",
                 id="config-nul-bytes"),
    pytest.param(lambda e: bad_utf8_prompts(e, ".txt"), "not valid UTF-8", id="generate-prompts-txt-bad-utf8"),
    pytest.param(lambda e: bad_utf8_prompts(e, ".jsonl"), "not valid UTF-8", id="generate-prompts-jsonl-bad-utf8"),
    *[pytest.param(lambda e, v=verb, d=dev: device_argv(e, v, d), dev, id=f"{verb}-device-{dev}")
      for verb in ("generate", "pretrain", "fill-mask") for dev in ("cuda", "bogus")],
    pytest.param(lambda e: ["sampling", "explain", "--checkpoint", e.ckpt, "--prompt", "hi", "--out", str(e.tmp)],
                 "is a directory", id="explain-out-is-a-directory"),
    pytest.param(rm_bad_margin, "'margin' must be a finite number", id="rm-non-numeric-margin"),
    pytest.param(shards_past_vocab, "vocab_size 10", id="pretrain-shard-ids-past-vocab"),
    pytest.param(lambda e: edited_checkpoint(e, "meta.json", "[1, 2]"), "not a JSON object", id="meta-json-list"),
    pytest.param(lambda e: edited_checkpoint(e, "meta.json", '{"files": {"config.json": {"sha256": "0"}, '
                                                             '"model.safetensors": {"bytes": 1}}}'),
                 "needs 'bytes' and 'sha256'", id="meta-json-entry-without-bytes"),
    pytest.param(lambda e: edited_checkpoint(e, "config.json", b"\xff\xfe{"), "cannot read config.json",
                 id="config-json-undecodable"),
    pytest.param(lambda e: edited_checkpoint(e, "config.json", '"a string"'), "must be a JSON object",
                 id="config-json-not-an-object"),
    pytest.param(huge_max_seq_len, "pos_emb.weight", id="checkpoint-max-seq-len-1e12"),
    pytest.param(hf_huge_positions, "pos_emb.weight", id="import-hf-n-positions-1e9"),
    pytest.param(lambda e: hf_dir(e, model__safetensors__index__json="{oops"), "not a safetensors index",
                 id="import-hf-malformed-index"),
    pytest.param(lambda e: hf_dir(e, model__safetensors__index__json='{"metadata": {}}'), "weight_map",
                 id="import-hf-index-without-weight-map"),
    pytest.param(scorer_raises, "raised ValueError", id="testtime-scorer-raises"),
    pytest.param(reward_raises, "raised ValueError", id="rl-python-reward-raises"),
]


def assert_one_error_line(code: int, err: str, keyword: str) -> None:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("lmlab: error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert keyword in errors[0], errors[0]


@pytest.mark.parametrize("build, keyword", CASES)
def test_user_error_is_one_line_exit_2(build, keyword, env, capsys):
    argv = build(env)
    capsys.readouterr()  # drop what building printed
    code = main(argv)
    assert_one_error_line(code, capsys.readouterr().err, keyword)


# ------------------------------------------------------------------- chat: a bad message is skipped, chat goes on
CHAT_CASES = [
    pytest.param(b"\xff\xfe hello\n", "not valid UTF-8", id="chat-bad-utf8"),
    pytest.param(("word " * 200 + "\n").encode(), "longer than the model's context", id="chat-message-too-long"),
]


@pytest.mark.parametrize("bad, keyword", CHAT_CASES)
def test_chat_skips_a_bad_message_and_goes_on(bad, keyword, ckpt, monkeypatch, capsys):
    stdin = io.TextIOWrapper(io.BytesIO(b"Hello\n" + bad + b"Where was\n\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    code = main(["chat", "--checkpoint", str(ckpt), "--max_new_tokens", "3", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    warnings = [line for line in err.splitlines() if line.startswith("lmlab: warning:")]
    assert len(warnings) == 1 and keyword in warnings[0], err
    assert out.count("model> ") == 2  # the messages before and after the bad one were both answered


# ------------------------------------------------------------------------------ a closed pipe is a quiet exit
def test_closed_stdout_exits_quietly_with_141(ckpt):
    # The reader is gone before lmlab writes, as with `lmlab generate --json ... | head -c 10` on a big result.
    p = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "generate", "--checkpoint", str(ckpt), "--prompt",
                          "hi", "--max_new_tokens", "2", "--device", "cpu", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err


# ------------------------------------------------------------------------------------------- call_user
def test_call_user_names_the_function_and_the_abbreviated_input():
    assert call_user(lambda a, b: a + b, "adder", 1, 2) == 3
    expected = r"^scorer 'm:f' raised ValueError: user code failed on input \('x+\.\.\."
    with pytest.raises(LmlabError, match=expected) as e:
        call_user(boom, "scorer 'm:f'", "x" * 1000, "reply")
    assert isinstance(e.value.__cause__, ValueError) and len(str(e.value)) < 300
