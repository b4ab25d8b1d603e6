"""GPT-2 124M throughput: training (`configs/gpt2-124m.yaml`, on 1 GPU and, under torchrun, on all of them)
and generation (the KV-cache engine, batch 1 and 64). Ends with one JSON line of figures.

Training reads random tokens (GPT-2's vocabulary, written as lmlab shards), so the figure is the
machine's, not a corpus's; MFU is against the device's measured bf16 matmul peak (the trainer's own
figure, from metrics.jsonl, after the first steps of compiling and warming up).

    python benchmarks/gpt2_124m.py --out /tmp/gpt2bench                      # on a CUDA machine
    python benchmarks/gpt2_124m.py --out /tmp/gpt2bench --device cpu --smoke  # the script itself, in seconds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lmlab import cbuild

VOCAB = 50257


def write_shards(out: Path, n_train: int, seed: int = 0) -> Path:
    """Random token shards in lmlab's format (no tokenizer: the trainer needs none)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = {"train": n_train, "val": max(n_train // 20, 4096)}
    for split, n in sizes.items():
        rng.integers(0, VOCAB, n, dtype=np.uint16).astype("<u2").tofile(out / f"{split}.bin")
    meta = {"format": "lmlab-tokens", "version": 1, "dtype": "uint16", "vocab_size": VOCAB, "eos_id": VOCAB - 1,
            "bos_id": None, "split": "tail", "val_fraction": 0.05, "seed": seed, "source": "random",
            "splits": {s: {"file": f"{s}.bin", "n_tokens": n, "n_documents": 1} for s, n in sizes.items()}}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def train(data: Path, out: Path, nproc: int, steps: int, device: str, smoke: bool) -> dict:
    args = ["pretrain", "--config", "gpt2-124m", "--set", f"data={data}", "--set", f"out={out}",
            "--set", f"train.steps={steps}", "--set", "train.eval_interval=0", "--set", "train.eval_batches=1",
            "--set", "train.ckpt_interval=0", "--set", "train.log_interval=1", "--set", "train.progress=false",
            "--set", "resume=false", "--set", f"train.device={device}"]
    if smoke:  # the script's path at a size a CPU runs in seconds
        args += ["--set", "model.n_layers=2", "--set", "model.d_model=64", "--set", "model.n_heads=2",
                 "--set", "train.batch_size=2", "--set", "train.block_size=64", "--set", "train.grad_accum=2",
                 "--set", "train.precision=fp32"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "lmlab.cli", *args]
    else:
        cmd = [sys.executable, "-m", "lmlab.cli", *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"processes": nproc, "error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r]
    steady = rows[len(rows) // 3:] or rows  # compile and warm-up in the first steps
    tps = sorted(r["tokens_per_s"] for r in steady)
    mfus = sorted(r["mfu"] for r in steady if r.get("mfu") is not None)
    return {"processes": nproc, "steps": steps, "tokens_per_step": rows[-1]["tokens"] // rows[-1]["step"],
            "tokens_per_s": round(tps[len(tps) // 2], 1), "mfu": round(mfus[len(mfus) // 2], 4) if mfus else None,
            "ms_per_step": round(1000 * rows[-1]["tokens"] / rows[-1]["step"] / tps[len(tps) // 2], 1),
            "wall_s": round(time.perf_counter() - t0, 1)}


def generate(device: str, smoke: bool) -> list[dict]:
    import torch

    from lmlab.infer.engine import Engine
    from lmlab.infer.sampling import SamplingParams
    from lmlab.model.config import ModelConfig
    from lmlab.model.transformer import Transformer

    class Tok:  # random ids in, ids out: the engine needs only decode and the special ids
        eos_id, bos_id, vocab_size = None, 0, VOCAB

        def decode(self, ids):
            return ""

        def token_to_id(self, t):
            return None

    size = dict(d_model=64, n_layers=2, n_heads=2) if smoke else dict(d_model=768, n_layers=12, n_heads=12)
    cfg = ModelConfig(vocab_size=VOCAB, max_seq_len=1024, mlp="gelu_tanh", bias=True, **size)
    torch.manual_seed(0)
    weights = "fp32" if device == "cpu" else "bf16"
    engine = Engine(Transformer(cfg), Tok(), device=device, weights=weights)
    out = []
    for batch in (1, 64):
        new = 16 if smoke else 256
        prompts = [list(range(1, 33))] * batch
        params = SamplingParams(temperature=1.0, max_new_tokens=new, ignore_eos=True, seed=0)
        engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True))  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.generate(prompts, params)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        out.append({"batch": batch, "new_tokens": new, "weights": weights,
                    "tokens_per_s": round(batch * new / wall, 1)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="a tiny model and a few steps: check the script runs")
    args = ap.parse_args()
    out = Path(args.out)
    data = write_shards(out / "data", 2_000_000 if args.smoke else 50_000_000)
    gpus = 0
    if args.device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
    figures = {"device": args.device, "gpus": gpus, "train": [train(data, out / "run1", 1, args.steps, args.device,
                                                                    args.smoke)]}
    if gpus > 1:
        figures["train"].append(train(data, out / f"run{gpus}", gpus, args.steps, args.device, args.smoke))
    if args.device.startswith("cuda"):
        import torch

        figures["gpu"] = torch.cuda.get_device_name(0)
    figures["generate"] = generate(args.device, args.smoke)
    figures["cpu"], figures["cpu_flags"] = cbuild.cpu_info()["model"], cbuild.cpu_info()["flags"]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
