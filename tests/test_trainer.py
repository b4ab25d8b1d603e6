"""The training loop: it learns, it resumes exactly after SIGKILL, and it refuses bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmlab.config import from_dict
from lmlab.errors import LmlabError
from lmlab.train.trainer import PretrainConfig, pretrain


def tiny_cfg(data: Path, out: Path, **train) -> PretrainConfig:
    t = dict(steps=40, batch_size=4, block_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=20,
             eval_batches=2, ckpt_interval=10, log_interval=5, precision="fp32", threads=1, progress=False)
    t.update(train)
    return from_dict(PretrainConfig, {
        "data": str(data), "out": str(out),
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
        "train": t,
    })


def test_training_lowers_loss_and_writes_run_dir(tiny_data, tmp_path):
    out = tmp_path / "run"
    s = pretrain(tiny_cfg(tiny_data, out, steps=60))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if not r.get("eval")]
    assert losses[-1] < losses[0] - 1.0  # from ~ln(300)=5.7 it must drop well below
    assert s["val_loss"] < 4.5
    for key in ("val_loss", "train_tokens", "tokens_per_s", "wall_s", "params"):
        assert key in json.loads((out / "summary.json").read_text())["pretrain"]
    assert s["train_tokens"] == 60 * 4 * 32
    assert (out / "loss.png").stat().st_size > 1000
    assert {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt", "meta.json"} <= {
        p.name for p in (out / "checkpoint").iterdir()}
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["step"] == 60
    row = rows[-1]
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
        assert key in row or rows[-2].get(key) is not None


def test_finished_run_is_not_retrained(tiny_data, tmp_path):
    out = tmp_path / "run"
    first = pretrain(tiny_cfg(tiny_data, out, steps=20))
    again = pretrain(tiny_cfg(tiny_data, out, steps=20))
    assert again["steps_this_run"] == 0
    assert again["val_loss"] == first["val_loss"]


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_data, tmp_path):
    """A run SIGKILLed after a checkpoint, then resumed, ends exactly where an uninterrupted run ends."""
    steps = 400
    ref = pretrain(tiny_cfg(tiny_data, tmp_path / "ref", steps=steps, ckpt_interval=40, eval_interval=100))
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "lmlab.cli", "pretrain", "--data", str(tiny_data), "--out", str(out),
            "--set", "model.d_model=32", "--set", "model.n_layers=2", "--set", "model.n_heads=2",
            "--set", "model.max_seq_len=32"]
    for k, v in dict(steps=steps, batch_size=4, block_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                     eval_interval=100, eval_batches=2, ckpt_interval=40, log_interval=5, precision="fp32",
                     threads=1, progress=False).items():
        args += ["--set", f"train.{k}={v}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meta = out / "checkpoint" / "meta.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if meta.exists() and json.loads(meta.read_text())["step"] >= 40:
            break
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(meta.read_text())["step"]
    assert 40 <= killed_at < steps, f"the run was not killed mid-way (checkpoint at {killed_at})"
    resumed = pretrain(tiny_cfg(tiny_data, out, steps=steps, ckpt_interval=40, eval_interval=100))
    assert resumed["resumed_from_step"] == killed_at
    assert abs(resumed["val_loss"] - ref["val_loss"]) <= 1e-6
    assert abs(resumed["train_loss"] - ref["train_loss"]) <= 1e-6
    ref_rows = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    new_rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rows: [(r["step"], round(r.get("loss", r.get("val_loss")), 6)) for r in rows]  # noqa: E731
    assert strip(new_rows) == strip(ref_rows)


@pytest.mark.parametrize("train, msg", [
    ({"lr": -1.0}, "train.lr must be a positive number"),
    ({"steps": 0}, "train.steps must be >= 1"),
    ({"precision": "fp8"}, "train.precision must be one of"),
    ({"block_size": 64}, "exceeds model.max_seq_len"),
])
def test_bad_training_config(tiny_data, tmp_path, train, msg):
    with pytest.raises(LmlabError, match=msg):
        pretrain(tiny_cfg(tiny_data, tmp_path / "run", **train))


def test_block_larger_than_data(tmp_path):
    from lmlab.data.shards import PrepareConfig, prepare
    from lmlab.data.tokenizer import Tokenizer

    (tmp_path / "t.txt").write_text("tiny corpus " * 3)
    tok = Tokenizer.train_char(["tiny corpus "])
    tok.save(tmp_path / "tok.json")
    prepare(PrepareConfig(input=str(tmp_path / "t.txt"), tokenizer=str(tmp_path / "tok.json"),
                          out=str(tmp_path / "data"), val_fraction=0.5))
    with pytest.raises(LmlabError, match="block size 32 is larger than the data"):
        pretrain(tiny_cfg(tmp_path / "data", tmp_path / "run"))


def test_resume_refuses_a_different_model(tiny_data, tmp_path):
    out = tmp_path / "run"
    pretrain(tiny_cfg(tiny_data, out, steps=10))
    cfg = tiny_cfg(tiny_data, out, steps=20)
    cfg.model.n_layers = 3
    with pytest.raises(LmlabError, match="different model config"):
        pretrain(cfg)


def test_bf16_master_trains_close_to_fp32(tiny_data, tmp_path):
    a = pretrain(tiny_cfg(tiny_data, tmp_path / "fp32", steps=60))
    b = pretrain(tiny_cfg(tiny_data, tmp_path / "bf16", steps=60, precision="bf16-master"))
    assert b["precision"] == "bf16-master"
    assert abs(a["val_loss"] - b["val_loss"]) < 0.1


@pytest.mark.parametrize("precision", ["bf16-autocast", "bf16-master"])
def test_other_precisions_train(tiny_data, tmp_path, precision):
    s = pretrain(tiny_cfg(tiny_data, tmp_path / "run", steps=40, precision=precision))
    assert s["precision"] == precision and s["val_loss"] < 5.0


def test_llama_style_model_trains_and_resumes(tiny_data, tmp_path):
    """RoPE + RMSNorm + SwiGLU + grouped-query attention + untied head through the same loop."""
    def cfg(steps):
        c = tiny_cfg(tiny_data, tmp_path / "run", steps=steps)
        c.model = type(c.model)(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, norm="rmsnorm",
                                positions="rope", mlp="swiglu", tie_embeddings=False)
        return c

    first = pretrain(cfg(20))
    second = pretrain(cfg(40))  # resumes from step 20
    assert first["val_loss"] < 5.5 and second["resumed_from_step"] == 20 and second["val_loss"] < first["val_loss"]


def test_grad_accumulation_counts_tokens(tiny_data, tmp_path):
    s = pretrain(tiny_cfg(tiny_data, tmp_path / "run", steps=10, grad_accum=3))
    assert s["train_tokens"] == 10 * 3 * 4 * 32


def test_resume_refuses_other_data(tiny_data, tmp_path):
    from lmlab.data.shards import PrepareConfig, prepare

    out = tmp_path / "run"
    pretrain(tiny_cfg(tiny_data, out, steps=10))
    other = tmp_path / "data2"
    prepare(PrepareConfig(input=str(tiny_data.parent / "world" / "pretrain.jsonl"),
                          tokenizer=str(tiny_data / "tokenizer.json"), out=str(other), val_fraction=0.3))
    with pytest.raises(LmlabError, match="different data"):
        pretrain(tiny_cfg(other, out, steps=20))


def test_raising_steps_on_a_finished_run_says_the_schedule_is_replanned(tiny_data, tmp_path):
    out = tmp_path / "run"
    pretrain(tiny_cfg(tiny_data, out, steps=10))
    with (out / "metrics.jsonl").open("ab") as f:
        f.write(b'[1, 2]\n\xff\xfe not a line this log wrote\n')  # garbage after the kept rows
    with pytest.warns(UserWarning, match="train.steps is 20 but the checkpoint was planned for 10"):
        s = pretrain(tiny_cfg(tiny_data, out, steps=20))
    assert s["resumed_from_step"] == 10
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 20


def test_a_default_compile_that_fails_falls_back_to_eager(tiny_data, tmp_path):
    """train.compile unset means 'compile on CUDA, if it compiles': a first step that fails to compile (here a
    stand-in for a missing compiler) warns once and the run trains eagerly, to the eager run's losses."""
    from lmlab.train.trainer import Trainer

    eager = Trainer(tiny_cfg(tiny_data, tmp_path / "eager", steps=3, compile=False))
    expected = eager.fit()["val_loss"]
    trainer = Trainer(tiny_cfg(tiny_data, tmp_path / "auto", steps=3))
    assert trainer.cfg.train.compile is None and not trainer.compiled  # off on a CPU

    def broken(*args, **kwargs):
        raise RuntimeError("inductor: no C++ compiler found")

    trainer.compiled, trainer.fwd = True, broken  # what a failing compile looks like at the first forward
    with pytest.warns(UserWarning, match="torch.compile failed on the first step .*no C\\+\\+ compiler"):
        summary = trainer.fit()
    assert not trainer.compiled and summary["val_loss"] == pytest.approx(expected, abs=1e-6)
    asked = Trainer(tiny_cfg(tiny_data, tmp_path / "asked", steps=3, compile=True))
    asked.fwd = broken  # asked for explicitly: the error is the user's to see
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        asked.fit()


def test_a_compiled_model_trains_and_evaluates(tiny_data, tmp_path):
    """With train.compile the run goes through torch.compile's wrapper (here with its 'eager' backend: the
    wrapper without a C++ compile), evaluations included, to the eager run's losses."""
    import torch

    from lmlab.train.trainer import Trainer

    eager = Trainer(tiny_cfg(tiny_data, tmp_path / "eager", steps=4, compile=False, eval_interval=2)).fit()
    trainer = Trainer(tiny_cfg(tiny_data, tmp_path / "compiled", steps=4, compile=False, eval_interval=2))
    trainer.fwd, trainer.compiled = torch.compile(trainer.wrapped, backend="eager"), True
    summary = trainer.fit()
    assert trainer.compiled
    assert summary["val_loss"] == pytest.approx(eager["val_loss"], abs=1e-5)
