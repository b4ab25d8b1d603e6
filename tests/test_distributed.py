"""Data parallelism under torchrun on the CPU (gloo): K processes train the run one process trains.

Two processes must give the one-process losses on the same global batch (fp32, within 1e-5), continue a
one-process checkpoint as the one process would, and fail with a clear error, not hang, when a peer dies.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SMALL = ["--set", "model.d_model=32", "--set", "model.n_layers=2", "--set", "model.n_heads=2",
         "--set", "model.max_seq_len=32", "--set", "train.batch_size=4", "--set", "train.grad_accum=2",
         "--set", "train.precision=fp32", "--set", "train.threads=1", "--set", "train.progress=false",
         "--set", "train.eval_batches=2", "--set", "train.log_interval=1", "--set", "train.warmup_steps=2",
         "--set", "train.eval_interval=0", "--set", "train.decay_steps=9"]  # one schedule, however a run is split


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "LMLAB_NATIVE": "0"}


def _pretrain(nproc: int, data: Path, out: Path, steps: int, *extra: str, mode: str = "ddp"
              ) -> subprocess.CompletedProcess:
    args = ["pretrain", "--data", str(data), "--out", str(out), *SMALL, "--set", f"train.steps={steps}", *extra]
    if nproc == 1:
        cmd = [sys.executable, "-m", "lmlab.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "lmlab.cli", *args, "--set", f"train.parallel={mode}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and not r.get("eval")}


@pytest.mark.parametrize("mode,split", [("ddp", "micro"), ("fsdp", "micro"), ("ddp", "rows"), ("fsdp", "rows")])
def test_two_processes_train_the_one_process_run(tiny_data, tmp_path, mode, split):
    """grad_accum 2 on 2 processes: each takes one micro-batch whole; grad_accum 1: each takes half its rows."""
    accum = ("--set", "train.grad_accum=1") if split == "rows" else ()
    _pretrain(1, tiny_data, tmp_path / "one", 6, *accum)
    _pretrain(2, tiny_data, tmp_path / "two", 6, *accum, mode=mode)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5), step
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())["pretrain"]
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())["pretrain"]
    assert s2["val_loss"] == pytest.approx(s1["val_loss"], abs=1e-5)
    assert s2["train_tokens"] == s1["train_tokens"]  # the same global batch
    assert (s1["parallel"], s1["processes"], s2["parallel"], s2["processes"]) == ("none", 1, mode, 2)
    assert (tmp_path / "two" / "loss.png").is_file()  # rank 0 drew it


def test_fsdp_with_activation_checkpointing_trains_the_one_process_run(tiny_data, tmp_path):
    recompute = ("--set", "train.activation_checkpointing=true")
    _pretrain(1, tiny_data, tmp_path / "one", 4)
    _pretrain(2, tiny_data, tmp_path / "two", 4, *recompute, mode="fsdp")
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5), step


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_continue_a_one_process_checkpoint_and_back(tiny_data, tmp_path, mode):
    """1 process to step 3, 2 processes to step 6 (their checkpoint is a plain one), 1 process to step 9:
    the losses of one process going all the way."""
    _pretrain(1, tiny_data, tmp_path / "ref", 9)
    _pretrain(1, tiny_data, tmp_path / "run", 3)
    _pretrain(2, tiny_data, tmp_path / "run", 6, mode=mode)  # resumes at step 3 with two processes
    _pretrain(1, tiny_data, tmp_path / "run", 9)  # and one process resumes their checkpoint
    ref, run = _losses(tmp_path / "ref"), _losses(tmp_path / "run")
    assert sorted(run) == list(range(1, 10))
    for step in range(4, 10):
        assert run[step] == pytest.approx(ref[step], abs=1e-5), step


def test_batch_must_split_evenly(tiny_data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m", "lmlab.cli",
           "pretrain", "--data", str(tiny_data), "--out", str(tmp_path / "x"), *SMALL, "--set", "train.steps=2",
           "--set", "train.parallel=ddp"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode != 0 and "must be divisible by the 3 processes" in done.stderr  # neither 4 nor 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_peer_is_a_clear_error_within_the_timeout(tiny_data, tmp_path):
    """Rank 1 is killed after the first checkpoint; rank 0 fails with an error naming the cause, well within
    its process-group timeout, and the checkpoint on disk is whole."""
    from lmlab.model.checkpoint import load_checkpoint

    out = tmp_path / "run"
    port = str(_free_port())
    args = [sys.executable, "-m", "lmlab.cli", "pretrain", "--data", str(tiny_data), "--out", str(out), *SMALL,
            "--set", "train.steps=100000", "--set", "train.ckpt_interval=3", "--set", "train.parallel=ddp",
            "--set", "train.dist_timeout=20"]
    procs = []
    for rank in (0, 1):
        env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_RANK": str(rank)}
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint" / "meta.json").is_file():
            assert time.time() < deadline and procs[0].poll() is None, procs[0].stderr.read() if procs[0].poll() else ""
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        _, err = procs[0].communicate(timeout=60)
        assert time.time() - killed < 40
        assert procs[0].returncode == 2, err[-2000:]
        assert "lmlab: error: rank 0 of 2" in err and "another rank died or did not answer" in err
        assert "Traceback" not in err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    ck = load_checkpoint(out / "checkpoint", with_trainer_state=True)
    assert ck.trainer_state["step"] % 3 == 0 and ck.trainer_state["step"] >= 3


STAGE_ARGS = {"sft": ["--set", "eval_questions=4"], "dpo": ["--set", "eval_questions=4"],
              "rm": ["--set", "logprob_feature=true"]}  # a scalar weight outside the blocks, which FSDP shards too


def _stage(verb: str, nproc: int, model: Path, world: Path, out: Path, mode: str = "ddp") -> dict[int, float]:
    args = [verb, "--init", str(model), "--data", str(world), "--out", str(out), *STAGE_ARGS[verb],
            "--set", "train.steps=5", "--set", "train.batch_size=6", "--set", "train.device=cpu",
            "--set", "train.threads=1", "--set", "train.log_interval=1", "--set", "train.eval_interval=3",
            "--set", "train.lr=3e-3", "--set", "train.warmup_steps=1"]
    if nproc == 1:
        cmd = [sys.executable, "-m", "lmlab.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "lmlab.cli", *args, "--set", f"train.parallel={mode}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("checkpoint") >= 1  # rank 0 printed the report, once
    return _losses(out)


def _evals(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]


@pytest.mark.parametrize("verb", ["sft", "rm", "dpo"])
def test_post_training_on_two_processes_is_the_one_process_run(tiny_data, tiny_model, tmp_path, verb):
    """Conversations differ in length: each process weighs its loss by its share of the batch's response
    tokens (sft) or pairs (rm, dpo), so the update is the one-process update on the whole batch, with DDP and
    with FSDP2 (which shards the model, and gathers it for rank 0's evaluations mid-run and after)."""
    import torch

    from lmlab.model.checkpoint import load_checkpoint

    world = tiny_data.parent / "world"
    one = _stage(verb, 1, tiny_model, world, tmp_path / "one")
    a = load_checkpoint(tmp_path / "one" / "checkpoint").weights
    report = json.loads((tmp_path / "one" / "summary.json").read_text())[verb]
    for mode in ("ddp", "fsdp"):
        two = _stage(verb, 2, tiny_model, world, tmp_path / mode, mode)
        assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5]
        for step in one:
            assert two[step] == pytest.approx(one[step], abs=1e-5), (mode, step)
        b = load_checkpoint(tmp_path / mode / "checkpoint").weights
        assert sorted(a) == sorted(b)
        # Adam divides by the gradient's own scale, so an element whose gradient is at rounding level can move
        # by up to lr a step either way: every weight within steps x lr, nearly all within 1e-5.
        diffs = torch.cat([(b[name].float() - a[name].float()).abs().flatten() for name in a])
        assert float(diffs.max()) <= 5 * 3e-3
        assert float((diffs > 1e-5).float().mean()) < 1e-3
        summary = json.loads((tmp_path / mode / "summary.json").read_text())[verb]
        assert summary["processes"] == 2  # rank 0 wrote it
        # rank 0's evaluations (of a gathered copy under FSDP) see the one-process model
        for x, y in zip(_evals(tmp_path / "one"), _evals(tmp_path / mode), strict=True):
            assert x.keys() == y.keys() and x["step"] == y["step"]
            for key in x.keys() - {"step", "eval", "elapsed_s"}:
                assert y[key] == pytest.approx(x[key], abs=1e-4), (mode, key)
        if verb == "sft":
            for group, result in report["after"].items():
                assert summary["after"][group] == pytest.approx(result, abs=0.05), (mode, group)
        if verb == "rm":
            assert summary["heldout_accuracy"] == pytest.approx(report["heldout_accuracy"], abs=0.05), mode


def test_fsdp_refuses_what_it_cannot_do(tiny_model, tiny_data, tmp_path):
    """DPO under FSDP scores its reference once before training; a reference scored every step is refused."""
    from lmlab.errors import LmlabError
    from lmlab.post.dpo import DPOConfig, dpo
    from lmlab.post.stage import PostTrainConfig

    cfg = DPOConfig(init=str(tiny_model), data=str(tiny_data.parent / "world"), out=str(tmp_path / "d"),
                    precompute_ref=False, train=PostTrainConfig(parallel="fsdp", device="cpu"))
    with pytest.raises(LmlabError, match="precompute_ref=true"):
        dpo(cfg)
    with pytest.raises(LmlabError, match="train.parallel must be one of"):
        PostTrainConfig(parallel="zero3")


ON_EVAL = '''
import json, sys
import torch
from lmlab.config import from_dict
from lmlab.post.sft import SFTConfig, sft

seen = {}


def on_eval(step, model, val_loss):
    assert not model.training
    ids = torch.arange(12).remainder(model.cfg.vocab_size)[None]
    model(ids)  # it runs in this process alone
    seen[step] = [sum(float(p.double().abs().sum()) for p in model.parameters()),
                  type(next(model.parameters())).__name__]


cfg = from_dict(SFTConfig, json.loads(sys.argv[1]))
sft(cfg, on_eval=on_eval)
if int(__import__("os").environ.get("RANK", "0")) == 0:
    (__import__("pathlib").Path(cfg.out) / "on_eval.json").write_text(json.dumps(seen))
'''


def test_fsdp_hands_on_eval_a_whole_model(tiny_data, tiny_model, tmp_path):
    """`sft(on_eval=...)` (how experiments follow a model through training) gets, under FSDP, a plain model on
    rank 0 holding the gathered weights: the one-process model's outputs at every evaluation."""
    script = tmp_path / "on_eval.py"
    script.write_text(ON_EVAL)
    seen = {}
    for mode, nproc in (("none", 1), ("fsdp", 2)):
        cfg = {"init": str(tiny_model), "data": str(tiny_data.parent / "world"), "out": str(tmp_path / mode),
               "eval_questions": 0, "train": {"steps": 4, "batch_size": 6, "device": "cpu", "threads": 1,
                                              "eval_interval": 2, "lr": 3e-3, "warmup_steps": 1, "parallel": mode}}
        launch = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        done = subprocess.run([sys.executable, *launch, str(script), json.dumps(cfg)], capture_output=True,
                              text=True, env=_env(), timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        seen[mode] = json.loads((tmp_path / mode / "on_eval.json").read_text())
    assert sorted(seen["none"]) == sorted(seen["fsdp"]) == ["2", "4"]
    for step, (total, kind) in seen["fsdp"].items():
        assert kind == "Parameter"  # a plain copy, not the sharded DTensors
        # the runs' weights agree to rounding but for a few elements (see the post-training test): near, not equal
        assert total == pytest.approx(seen["none"][step][0], rel=1e-4), step
        assert total != pytest.approx(seen["fsdp"]["2" if step == "4" else "4"][0], rel=1e-4)  # the model moved
    # at the last evaluation the copy holds exactly the weights the run then saved
    from lmlab.model.checkpoint import load_model

    saved = sum(float(p.double().abs().sum()) for p in load_model(tmp_path / "fsdp" / "checkpoint").parameters())
    assert seen["fsdp"]["4"][0] == pytest.approx(saved, rel=1e-12)
