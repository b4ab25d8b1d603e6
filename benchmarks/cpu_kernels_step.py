"""The path lmlab chooses against PyTorch's ops on the Shakespeare benchmark's training step.

One process, the same model and batches, alternating rounds (so a slow spell of the machine hits every
path): the training step (forward, loss, backward; with bf16-master also the gradients to the fp32
masters, clipping, AdamW, bf16 refresh) through PyTorch's ops alone (`LMLAB_NATIVE=0`), through the path
`lmlab.model.ops` chooses by measurement on this CPU (the default), and through every kernel that can run
(`force`). The chosen path's ratio to PyTorch's must be >= 1 on any CPU. Then the kernels alone, per
call, at the step's shapes. Precision: bf16-master where the CPU has bf16 units, else fp32 (what `auto`
picks); `--precision` overrides. Ends with one JSON line.

    python benchmarks/cpu_kernels_step.py [--rounds 8] [--steps 60] [--precision fp32]
    LMLAB_MARCH=x86-64-v3 python benchmarks/cpu_kernels_step.py   # the kernels as a plain AVX2 build
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmlab import cbuild  # noqa: E402
from lmlab.model import autotune, cpu_kernels  # noqa: E402
from lmlab.model.config import ModelConfig  # noqa: E402
from lmlab.model.transformer import Transformer  # noqa: E402
from lmlab.train.hardware import tune_cpu_allocator  # noqa: E402
from lmlab.train.objectives import causal_lm_loss  # noqa: E402
from lmlab.train.optim import make_adamw, param_groups  # noqa: E402
from lmlab.train.precision import Precision, resolve  # noqa: E402

B, T, V = 12, 64, 65  # nanoGPT's CPU recipe: batch 12, block 64, 65 characters


def per_call_us(fn, n: int = 200) -> float:
    for _ in range(10):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


PATHS = {"pytorch": "0", "chosen": "1", "forced": "force"}
"""Each path is a value of LMLAB_NATIVE, set between rounds (the choices are remembered per mode)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=60, help="training steps per round and path")
    ap.add_argument("--precision", default="auto", help="fp32, bf16-master or auto")
    args = ap.parse_args()
    if cpu_kernels.load() is None:
        sys.exit(f"no fused CPU kernels here: {cpu_kernels._lib_error}")
    tune_cpu_allocator()
    precision = resolve(args.precision, torch.device("cpu"))
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=128, n_layers=4, n_heads=4, max_seq_len=T, bias=False, dropout=0.0, vocab_size=V)
    model = Transformer(cfg)
    prec = Precision(model, precision, torch.device("cpu"))
    named = list(zip([n for n, _ in model.named_parameters()], prec.master))
    opt = make_adamw(param_groups(named, 0.1, True), 1e-3, (0.9, 0.99), 1e-8, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randint(V, (B, T), generator=gen), torch.randint(V, (B, T), generator=gen)) for _ in range(50)]
    choices: dict[str, dict] = {}

    def use(path: str) -> None:
        os.environ["LMLAB_NATIVE"] = PATHS[path]
        autotune._choices.clear()  # re-read per mode: measured choices come back from the cache, not re-measured
        autotune._choices.update(choices.get(path, {}))

    def step(i: int) -> None:
        x, y = data[i % len(data)]
        causal_lm_loss(model, x, y).backward()
        prec.grads_to_master()
        prec.step(opt, 1.0)

    times: dict[str, list[float]] = {k: [] for k in PATHS}
    for path in PATHS:  # warm up, and let the chosen path measure its ops once
        use(path)
        for i in range(10):
            step(i)
        choices[path] = dict(autotune._choices)
    autotune.reset()
    try:
        for _ in range(args.rounds):
            for path in PATHS:
                use(path)
                for i in range(5):
                    step(i)
                t = time.perf_counter()
                for i in range(args.steps):
                    step(i)
                times[path].append((time.perf_counter() - t) / args.steps * 1e3)
    finally:
        os.environ.pop("LMLAB_NATIVE", None)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"training step ({precision}), {k:8s}: median {med[k]:.2f} ms, best {min(v):.2f} ms  (rounds: "
              + " ".join(f"{x:.1f}" for x in v) + ")")
    print(f"ratio of the chosen path to PyTorch's (pytorch / chosen): median {med['pytorch'] / med['chosen']:.2f}x; "
          f"every kernel forced: {med['pytorch'] / med['forced']:.2f}x")
    chosen = autotune.measured()
    if not any(e["impl"] == "native" for e in chosen):
        print("no kernel measured faster here: the chosen path is PyTorch's own, so its ratio is 1 by construction "
              "(the figure above is the noise between identical paths)")
    for e in chosen:
        print(f"  {e['op']:15s} {e['signature']:52s} native {e['native_us']:9.1f} us  torch {e['torch_us']:9.1f} us"
              f"  -> {e['impl']}")

    # the kernels alone, at the step's shapes, forward + backward through autograd
    H, D = 4, 32
    qkv = torch.randn(B, T, 3 * H * D, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(B, T, H * D, dtype=torch.bfloat16)

    def torch_attention():
        q, k, v = qkv.float().split(H * D, -1)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y.transpose(1, 2).reshape(B, T, H * D).to(torch.bfloat16).backward(g)

    x = torch.randn(B * T, 128, dtype=torch.bfloat16, requires_grad=True)
    w = torch.ones(128, dtype=torch.bfloat16, requires_grad=True)
    gx = torch.randn(B * T, 128, dtype=torch.bfloat16)
    def rms_reference():  # lmlab's RMSNorm through PyTorch's ops
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * w

    xm = torch.randn(B, T, 128, dtype=torch.bfloat16, requires_grad=True)
    qkv_layer = torch.nn.Linear(128, 3 * H * D, bias=False).to(torch.bfloat16)
    up = torch.nn.Linear(128, 512, bias=False).to(torch.bfloat16)
    down = torch.nn.Linear(512, 128, bias=False).to(torch.bfloat16)
    g_qkv, g_mlp = torch.randn(B, T, 3 * H * D, dtype=torch.bfloat16), torch.randn(B, T, 128, dtype=torch.bfloat16)
    ops = {
        "attention (per layer)": (lambda: cpu_kernels.attention(qkv, H, H, D, D ** -0.5, True).backward(g),
                                  torch_attention),
        "rmsnorm": (lambda: cpu_kernels.rms_norm(x, w, 1e-5).backward(gx), lambda: rms_reference().backward(gx)),
        "qkv linear (tiles)": (lambda: cpu_kernels.linear(xm, qkv_layer.weight).backward(g_qkv),
                               lambda: qkv_layer(xm).backward(g_qkv)),
        "GELU MLP (tiles)": (lambda: cpu_kernels.gelu_mlp(xm, up, down).backward(g_mlp),
                             lambda: down(F.gelu(up(xm))).backward(g_mlp)),
    }
    if not cpu_kernels._amx:
        ops = {k: v for k, v in ops.items() if "tiles" not in k}
    per_op = {}
    for name, (ours, theirs) in ops.items():
        a, b = per_call_us(ours), per_call_us(theirs)
        per_op[name] = {"fused_us": round(a), "pytorch_us": round(b)}
        print(f"{name}, forward + backward, bf16: fused {a:.0f} us, PyTorch {b:.0f} us ({b / a:.2f}x)")
    print(json.dumps({"benchmark": "cpu_kernels_step", "cpu": cbuild.cpu_info()["model"],
                      "flags": cbuild.cpu_info()["flags"], "march": cbuild.march(), "precision": precision,
                      "threads": torch.get_num_threads(),
                      "step_ms_median": {k: round(v, 2) for k, v in med.items()},
                      "step_ms_best": {k: round(min(v), 2) for k, v in times.items()},
                      "ratio_chosen": round(med["pytorch"] / med["chosen"], 3),
                      "chosen_is_pytorch": not any(e["impl"] == "native" for e in chosen),
                      "ratio_forced": round(med["pytorch"] / med["forced"], 3),
                      "choices": [{k: e[k] for k in ("op", "signature", "native_us", "torch_us", "impl")}
                                  for e in chosen], "per_op": per_op}))


if __name__ == "__main__":
    main()
