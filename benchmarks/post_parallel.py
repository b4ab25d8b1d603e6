"""Post-training under torchrun on a CPU: each stage on 1 process, then on 2 with DDP and with FSDP2.

    python benchmarks/post_parallel.py runs/quickstart [RL_STEPS]

Runs the quickstart's SFT, reward-model and DPO stages (its settings, from its checkpoints and world) and a
GRPO run against its reward model (RL_STEPS steps, default 30; DDP only), each with one thread per process,
logging every step. Prints, per stage and mode, the wall time and the largest difference from the
one-process run's logged loss (RL: reward and policy loss) over all steps. Same global batch throughout:
the differences are rounding, the wall times what two gloo processes cost on the cores at hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = {
    "sft": ("checkpoint", ["train.steps=300", "train.batch_size=16", "train.lr=1e-3", "train.min_lr=1e-4",
                           "train.warmup_steps=20", "train.eval_interval=100", "eval_questions=100"]),
    "rm": ("sft/checkpoint", ["train.steps=120", "train.batch_size=16", "train.lr=3e-4", "train.min_lr=3e-5",
                              "train.warmup_steps=20", "train.eval_interval=100", "logprob_feature=true"]),
    "dpo": ("sft/checkpoint", ["train.steps=200", "train.batch_size=16", "train.lr=3e-5", "train.min_lr=3e-6",
                               "beta=1.0", "nll_weight=1.0", "eval_questions=100"]),
}


def launch(verb: str, nproc: int, mode: str, args: list[str], out: str) -> tuple[float, list[dict]]:
    cmd = [sys.executable, "-m", "lmlab.cli"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "lmlab.cli"]
    sets = [*args, "train.threads=1", "train.log_interval=1", "train.device=cpu", f"train.parallel={mode}"]
    cmd += [verb, "--out", out, *[x for s in sets for x in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return wall, [r for r in rows if "step" in r and not r.get("eval")]


def compare(verb: str, args: list[str], keys: tuple[str, ...], modes: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wall1, one = launch(verb, 1, "none", args, f"{tmp}/one")
        print(f"| {verb} | 1 process | {wall1:.1f} | (reference) |")
        for mode in modes:
            wall, two = launch(verb, 2, mode, args, f"{tmp}/{mode}")
            assert [r["step"] for r in one] == [r["step"] for r in two]
            diff = max(abs(a[k] - b[k]) for a, b in zip(one, two) for k in keys)
            print(f"| {verb} | {mode}, 2 processes | {wall:.1f} | {diff:.1e} |", flush=True)


def main() -> None:
    run = Path(sys.argv[1])
    rl_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    print("| stage | run | wall s | max \\|difference\\| from 1 process, every step |")
    print("|---|---|---|---|")
    for verb, (init, sets) in STAGES.items():
        compare(verb, [f"init={run / init}", f"data={run / 'world'}", *sets], ("loss",), ("ddp", "fsdp"))
    rl = [f"init={run / 'sft' / 'checkpoint'}", f"data={run / 'world'}", f"reward=rm:{run / 'rm' / 'checkpoint'}",
          "algo=grpo", "group_size=8", f"train.steps={rl_steps}", "train.lr=3e-5", "eval_questions=100"]
    compare("rl", rl, ("reward", "policy_loss"), ("ddp",))


if __name__ == "__main__":
    main()
