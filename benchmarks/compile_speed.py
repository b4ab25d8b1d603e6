"""`train.compile` against eager: the quickstart model's pretraining speed, both ways, in each precision.

    python benchmarks/compile_speed.py runs/quickstart/data [STEPS]

Runs `lmlab pretrain` on the quickstart's model (4 layers, d=128, 128 tokens, batch 16) for STEPS steps
(default 300), fp32 and bf16-master, with and without torch.compile, and prints each run's median tokens/s
after the first two log windows (compiling happens in the first), its wall time, last loss, and the
compiled/eager ratio. Set LMLAB_NATIVE=0 to measure the plain PyTorch path.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = {"d_model": 128, "n_layers": 4, "n_heads": 4, "max_seq_len": 128, "norm": "layernorm",
         "positions": "rope", "mlp": "gelu", "bias": "false"}
TRAIN = {"batch_size": 16, "lr": 3e-3, "warmup_steps": 100, "eval_interval": 0, "eval_batches": 2,
         "ckpt_interval": 0, "log_interval": 50, "progress": "false"}


def run(data: str, steps: int, precision: str, compiled: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        sets = [f"model.{k}={v}" for k, v in MODEL.items()] + [f"train.{k}={v}" for k, v in TRAIN.items()]
        sets += [f"train.steps={steps}", f"train.precision={precision}", f"train.compile={str(compiled).lower()}"]
        cmd = [sys.executable, "-m", "lmlab.cli", "pretrain", "--data", data, "--out", tmp]
        for s in sets:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "tokens_per_s" in r]
    return {"tok_s": statistics.median(r["tokens_per_s"] for r in rows[2:]), "wall_s": wall, "loss": rows[-1]["loss"]}


def main() -> None:
    data = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    print("| precision | eager tokens/s | compiled tokens/s | ratio | wall s, eager / compiled "
          "| last loss, eager / compiled |")
    print("|---|---|---|---|---|---|")
    for precision in ("fp32", "bf16-master"):
        eager, comp = run(data, steps, precision, False), run(data, steps, precision, True)
        print(f"| {precision} | {eager['tok_s']:,.0f} | {comp['tok_s']:,.0f} | {comp['tok_s'] / eager['tok_s']:.2f}x | "
              f"{eager['wall_s']:.1f} / {comp['wall_s']:.1f} | {eager['loss']:.4f} / {comp['loss']:.4f} |")


if __name__ == "__main__":
    main()
