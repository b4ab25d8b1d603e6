"""`lmlab rl` under torchrun on the CPU (gloo): two processes train the run one process trains.

Each process samples and trains on every other prompt of a step; the engine seeds a prompt's replies the same
whatever process samples them, so the two runs see the same rollouts and must log the same rewards, KL and
losses (fp32, within 1e-5) and end with nearly the same weights.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.config import from_dict
from lmlab.errors import LmlabError
from lmlab.post.rl import RLConfig, rl

pytestmark = pytest.mark.slow

STEPS, LR = 3, 1e-3
# Reward: minus the reply's length. The tiny model is not chat-tuned, so a world-facts reward would score
# nearly every reply alike (zero advantages, a test that passes trivially); lengths vary from reply to reply.
REWARD = "def reward(prompt, reply):\n    return -len(reply) / 20\n"


def _env(path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "LMLAB_NATIVE": "0",
            "PYTHONPATH": os.pathsep.join(p for p in (str(path), env.get("PYTHONPATH")) if p)}


def _prompts(model: Path, world: Path, path: Path) -> Path:
    """Raw-text prompts (chat false) that leave 1 to 8 tokens of the model's context for the reply: replies end
    at the context, so they differ in length (the tiny model hardly ever ends a document within 8 tokens) and
    the processes' shares of a step's response tokens differ, which the loss weighting must account for."""
    from lmlab.data.tokenizer import Tokenizer
    from lmlab.model.checkpoint import load_checkpoint

    tok = Tokenizer.load(model / "tokenizer.json")
    ctx = load_checkpoint(model).config.max_seq_len
    docs = [json.loads(line)["text"] for line in (world / "pretrain.jsonl").read_text().splitlines()]
    docs = [d for d in docs if len(tok.encode(d)) > ctx]
    prompts = []
    for i, doc in enumerate(docs[:12]):
        room = 1 + i % 8
        cut = next(c for c in range(len(doc)) if 1 + len(tok.encode(doc[:c])) >= ctx - room)
        prompts.append(doc[:cut])
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def _rl(nproc: int, model: Path, world: Path, out: Path, algo: str, *extra: str) -> subprocess.CompletedProcess:
    (out.parent / "rl_reward.py").write_text(REWARD)
    prompts = _prompts(model, world, out.parent / "prompts.jsonl")
    args = ["rl", "--init", str(model), "--data", str(world), "--prompts", str(prompts), "--out", str(out),
            "--set", f"algo={algo}", "--set", "chat=false",
            "--set", "reward=python:rl_reward:reward", "--set", "prompts_per_step=4", "--set", "group_size=2",
            "--set", "max_new_tokens=8", "--set", "eval_questions=2", "--set", f"train.steps={STEPS}",
            "--set", "train.device=cpu", "--set", "train.threads=1", "--set", "train.log_interval=1",
            "--set", f"train.lr={LR}", "--set", f"train.min_lr={LR}", "--set", "train.warmup_steps=0", *extra]
    if nproc == 1:
        cmd = [sys.executable, "-m", "lmlab.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "lmlab.cli", *args, "--set", "train.parallel=ddp"]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(out.parent), timeout=300)


def _rows(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "step" in r}


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_rl_on_two_processes_is_the_one_process_run(tiny_data, tiny_model, tmp_path, algo):
    """4 prompts x 2 replies a step, 2 prompts per process: the same rollouts, rewards, KL and losses, and the
    losses weighted by each process's response tokens (and PPO's advantages whitened over both) so the update
    is the one-process update."""
    import torch

    from lmlab.model.checkpoint import load_checkpoint

    world = tiny_data.parent / "world"
    runs = {}
    for n in (1, 2):
        done = _rl(n, tiny_model, world, tmp_path / str(n), algo)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("checkpoint ") == 1  # rank 0 alone printed the report
        runs[n] = _rows(tmp_path / str(n))
    one, two = runs[1], runs[2]
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    rewards = [one[s]["reward"] for s in one]
    assert len(set(rewards)) > 1 and all(one[s]["policy_loss"] != 0 for s in one)  # advantages were not all 0
    assert len({one[s]["reply_tokens"] for s in one}) > 1  # replies of different lengths
    # and in some step the two processes' shares of the response tokens differ (rl's prompt draw, every 2nd each)
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    room = {p: 1 + i % 8 for i, p in enumerate(prompts)}  # as _prompts made them
    rng = random.Random(1337 + 1)  # train.seed + 1
    draws = [rng.sample(prompts, 4) for _ in range(STEPS)]
    assert any(sum(room[p] for p in d[0::2]) != sum(room[p] for p in d[1::2]) for d in draws)
    if algo == "ppo":
        assert all(one[s]["value_loss"] > 0 for s in one)
    keys = ("reward", "kl", "policy_loss", "value_loss", "clip_fraction", "entropy", "reply_tokens")
    for step in one:
        for key in keys:
            assert two[step][key] == pytest.approx(one[step][key], abs=1e-5), (step, key)
        # the gradient sums terms that nearly cancel (advantages have mean 0): its rounding is coarser
        assert two[step]["grad_norm"] == pytest.approx(one[step]["grad_norm"], rel=1e-4), step
    assert any(one[s]["kl"] > 0 for s in one)  # the policy moved away from the reference
    a = load_checkpoint(tmp_path / "1" / "checkpoint").weights
    b = load_checkpoint(tmp_path / "2" / "checkpoint").weights
    assert sorted(a) == sorted(b) and not any(k.startswith("value_head") for k in a)
    # Adam divides by the gradient's own scale, so an element whose gradient is at rounding level can move by
    # up to lr a step either way (2 epochs a step): every weight within that, nearly all within 1e-5.
    diffs = torch.cat([(b[name].float() - a[name].float()).abs().flatten() for name in a])
    assert float(diffs.max()) <= STEPS * 2 * LR
    assert float((diffs > 1e-5).float().mean()) < 1e-3
    s1 = json.loads((tmp_path / "1" / "summary.json").read_text())["rl"]
    s2 = json.loads((tmp_path / "2" / "summary.json").read_text())["rl"]
    assert s1["processes"] == 1 and s2["processes"] == 2  # rank 0 wrote it
    assert s2["after"] is not None and s2["before"] is not None  # rank 0 evaluated before and after
    assert s2["train_tokens"] > 0 and s2["train_flops"] > 0
    # the same tokens in all (flops differ a little: each process pads its rows to its own longest)
    assert s2["train_tokens"] == s1["train_tokens"]


def test_fewer_prompts_per_step_than_processes_is_refused(tiny_data, tiny_model, tmp_path):
    done = _rl(2, tiny_model, tiny_data.parent / "world", tmp_path / "out", "grpo", "--set", "prompts_per_step=1")
    assert done.returncode != 0
    err = done.stderr + done.stdout
    assert "rl on 2 processes needs at least one prompt per process" in err and "prompts_per_step=1" in err
    assert err.count("lmlab: error: rl on 2 processes") == 2  # each process stopped with the error, not a crash
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_fsdp_is_refused_at_any_world_size(tiny_model, tmp_path):
    """rl samples from the whole policy in every process: FSDP would shard it. Refused even alone, where it
    would otherwise run as one process and hide the recipe's mistake."""
    cfg = from_dict(RLConfig, {"init": str(tiny_model), "data": str(tmp_path), "out": str(tmp_path / "out"),
                               "train": {"device": "cpu", "steps": 1}})
    cfg.train.parallel = "fsdp"  # set after construction: PostTrainConfig may or may not accept it
    with pytest.raises(LmlabError, match="rl cannot run with train.parallel=fsdp.*use train.parallel=ddp"):
        rl(cfg)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
