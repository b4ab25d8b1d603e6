"""The command line: verbs, help from docstrings, and one clear error line for bad input."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.cli import VERBS, load_verb, main


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_verb_with_its_purpose(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name, (purpose, _) in VERBS.items():
        assert name.split()[0] in out
        if len(name.split()) == 1:
            assert purpose.split()[0] in out


def test_verb_help_shows_field_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert "--train.lr" in out and "Peak learning rate" in out
    assert "--model.n_kv_heads" in out and "grouped-query attention" in out


def one_error_line(err: str, *needles: str) -> None:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("lmlab: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n")
    code, _, err = run(["tokenizer", "train", "--input", str(tmp_path / "empty.txt"),
                        "--out", str(tmp_path / "t.json")], capsys)
    assert code == 2
    one_error_line(err, "empty.txt")
    assert not (tmp_path / "t.json").exists()


def test_vocab_below_alphabet(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("hello world " * 20)
    code, _, err = run(["tokenizer", "train", "--input", str(tmp_path / "c.txt"), "--vocab_size", "100",
                        "--out", str(tmp_path / "t.json")], capsys)
    assert code == 2
    one_error_line(err, "100")


def test_unknown_config_key_suggests(tmp_path, capsys):
    code, _, err = run(["pretrain", "--set", "train.lrr=0.1"], capsys)
    assert code == 2
    one_error_line(err, "train.lrr", "train.lr")


def test_unknown_key_in_yaml_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("model:\n  d_modle: 64\n")
    code, _, err = run(["pretrain", "--config", str(cfg)], capsys)
    assert code == 2
    one_error_line(err, "model.d_modle", "r.yaml", "model.d_model")


def _tree_hash(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def trained_run(tiny_data, tmp_path, capsys) -> Path:
    out = tmp_path / "run"
    code, _, err = run(["pretrain", "--data", str(tiny_data), "--out", str(out), "--set", "model.d_model=32",
                        "--set", "model.n_layers=1", "--set", "model.n_heads=2", "--set", "model.max_seq_len=32",
                        "--set", "train.steps=10", "--set", "train.batch_size=2", "--set", "train.progress=false",
                        "--set", "train.precision=fp32", "--set", "train.eval_batches=1"], capsys)
    assert code == 0, err
    return out


def test_negative_lr_leaves_checkpoint_intact(trained_run, tiny_data, capsys):
    before = _tree_hash(trained_run / "checkpoint")
    code, _, err = run(["pretrain", "--data", str(tiny_data), "--out", str(trained_run),
                        "--set", "train.lr=-0.001"], capsys)
    assert code == 2
    one_error_line(err, "train.lr", "-0.001")
    assert _tree_hash(trained_run / "checkpoint") == before


def test_corrupted_checkpoint_is_reported_and_not_overwritten(trained_run, tiny_data, capsys):
    f = trained_run / "checkpoint" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    before = _tree_hash(trained_run / "checkpoint")
    code, _, err = run(["sample", "--checkpoint", str(trained_run / "checkpoint")], capsys)
    assert code == 2
    one_error_line(err, "model.safetensors", "corrupted")
    code, _, err = run(["pretrain", "--data", str(tiny_data), "--out", str(trained_run), "--set",
                        "model.d_model=32", "--set", "model.n_layers=1", "--set", "model.n_heads=2",
                        "--set", "model.max_seq_len=32", "--set", "train.steps=20"], capsys)
    assert code == 2
    one_error_line(err, "model.safetensors")
    assert _tree_hash(trained_run / "checkpoint") == before


def test_truncated_checkpoint(trained_run, capsys):
    f = trained_run / "checkpoint" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    code, _, err = run(["sample", "--checkpoint", str(trained_run / "checkpoint")], capsys)
    assert code == 2
    one_error_line(err, "truncated")


def test_sample_greedy_is_deterministic(trained_run, capsys):
    args = ["sample", "--checkpoint", str(trained_run / "checkpoint"), "--prompt", "Question:",
            "--max_new_tokens", "12", "--json"]
    code1, out1, _ = run(args, capsys)
    code2, out2, _ = run(args, capsys)
    assert code1 == code2 == 0
    assert out1 == out2 and out1.startswith('{"samples": ["Question:')


def test_console_script_exit_code(tmp_path):
    """The real process: a bad value exits non-zero with one error line on stderr."""
    r = subprocess.run([sys.executable, "-m", "lmlab.cli", "world", "--out", str(tmp_path / "w"),
                        "--people", "1"], capture_output=True, text=True)
    assert r.returncode == 2
    one_error_line(r.stderr, "people")
    assert not (tmp_path / "w").exists()


def test_world_verb_writes_files(tmp_path, capsys):
    code, out, _ = run(["world", "--out", str(tmp_path / "w"), "--people", "10", "--unknown", "2",
                        "--arithmetic", "5", "--arithmetic_test", "2", "--json"], capsys)
    assert code == 0
    assert (tmp_path / "w" / "pretrain.jsonl").is_file() and (tmp_path / "w" / "facts.json").is_file()


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_config_field_has_help_text(verb):
    from lmlab.config import leaf_fields

    cls, _ = load_verb(verb)
    missing = [name for name, _, _, doc in leaf_fields(cls) if not doc.strip()]
    assert not missing, f"{verb}: fields without a docstring: {missing}"


def test_sampling_with_temperature_is_seeded(trained_run, capsys):
    base = ["sample", "--checkpoint", str(trained_run / "checkpoint"), "--prompt", "Question:",
            "--max_new_tokens", "16", "--temperature", "1.0", "--json"]
    a = run(base + ["--seed", "1"], capsys)[1]
    b = run(base + ["--seed", "1"], capsys)[1]
    c = run(base + ["--seed", "2"], capsys)[1]
    assert a == b and a != c
