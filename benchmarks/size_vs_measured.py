"""`lmlab size` against reality: parameters, memory and FLOPs predicted vs measured on real models.

For each configuration below (dense and mixture-of-experts, 1M to 150M parameters) it builds lmlab's
`Transformer` and compares, with the predictions of `lmlab.plan.size` at the same batch and context:

  params      Transformer.count_params() (total and active) vs the formula          target: exact
  flops       one forward pass counted by torch.utils.flop_counter vs predicted     target: within 2%
  inference   weights + KV cache resident after a prefill vs predicted               target: within 10%
              (and the peak during the prefill vs weights + KV cache + activations, reported)
  training    peak of one training step (fp32, AdamW, gradients set to None) vs the
              eager-PyTorch peak estimate (Korthikanti et al.'s sum printed beside)  target: within 10%

Memory on CPU comes from the profiler's allocation records, on CUDA from max_memory_allocated (see
`lmlab.train.measure`). Then, for mixture of experts, the time per token of training steps and of
prefills for a MoE model against a dense model with the same active parameters and one with the same
total. Ends with one JSON line of figures.

    python benchmarks/size_vs_measured.py [--device cuda] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.plan.flops import forward_flops_per_token
from lmlab.plan.memory import inference_memory, training_memory
from lmlab.plan.params import param_counts
from lmlab.plan.settings import SizeConfig
from lmlab.train import measure

GPT = dict(norm="layernorm", positions="learned", mlp="gelu", bias=True, tie_embeddings=True)
LLAMA = dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, tie_embeddings=False)

# name: (model config, batch, context)
CONFIGS: dict[str, tuple[ModelConfig, int, int]] = {
    "gpt-1m": (ModelConfig(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, max_seq_len=128, **GPT), 8, 128),
    "llama-9m": (ModelConfig(vocab_size=8192, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, max_seq_len=256,
                             **LLAMA), 4, 256),
    "moe-18m": (ModelConfig(vocab_size=8192, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, max_seq_len=256,
                            d_ff=352, n_experts=8, experts_per_token=2, **LLAMA), 4, 256),
    "bert-like-30m": (ModelConfig(vocab_size=8192, d_model=512, n_layers=8, n_heads=8, max_seq_len=256,
                                  causal=False, **GPT), 4, 256),
    "moe-110m": (ModelConfig(vocab_size=16384, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, max_seq_len=256,
                             d_ff=512, n_experts=16, experts_per_token=2, **LLAMA), 2, 256),
    "gpt2-124m": (ModelConfig(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, max_seq_len=1024, **GPT),
                  1, 512),
}


def predict(cfg: ModelConfig, batch: int, context: int) -> dict:
    sc = SizeConfig(model="-", precision="fp32", batch=batch, context=context, mixed_precision=False)
    inf = inference_memory(cfg, sc, context)
    return {"params": param_counts(cfg), "inference": inf, "training": training_memory(cfg, sc, context,
                                                                                       inf["total_bytes"]),
            "forward_flops": forward_flops_per_token(cfg, context) * context}


def check(name: str, cfg: ModelConfig, batch: int, context: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    p = predict(cfg, batch, context)
    counts = model.count_params()
    flops = measure.forward_flops(model, context)
    inf = measure.prefill_memory(model, batch, context)
    tr = measure.training_step_peak(model, batch, context)
    idle = sum(int((b.mlp.load == 0).sum()) for b in model.blocks) if cfg.moe else 0
    pi, pt = p["inference"], p["training"]
    row = {
        "name": name, "batch": batch, "context": context, "moe": cfg.moe,
        "params": counts["total"], "params_active": counts["active"],
        "params_exact": counts["total"] == p["params"]["total"] and
        counts["active"] == p["params"]["active_per_token"],
        "flops_ratio": flops / p["forward_flops"],
        "inference_resident_ratio": inf["resident_bytes"] / (pi["weights_bytes"] + pi["kv_cache_bytes"]),
        "inference_peak_ratio": inf["peak_bytes"] / pi["total_bytes"],
        "training_peak_mb": tr["peak_bytes"] / 1e6, "training_predicted_mb": pt["peak_bytes"] / 1e6,
        "training_ratio": tr["peak_bytes"] / pt["peak_bytes"],
        "training_sum_ratio": tr["peak_bytes"] / pt["total_bytes"],
        "idle_experts": idle, "experts": cfg.n_experts * cfg.n_layers if cfg.moe else 0,
    }
    del model
    return row


def seconds_per_token(model: Transformer, batch: int, context: int, train: bool, repeats: int) -> float:
    """Best of `repeats` timed runs after a warm-up: one training step (forward, backward, AdamW) or one
    prefill, divided by batch x context tokens."""
    device = next(model.parameters()).device
    x = torch.randint(0, model.cfg.vocab_size, (batch, context), generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> None:
        if train:
            loss = torch.nn.functional.cross_entropy(model(x).view(-1, model.cfg.vocab_size), x.view(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.train(train)
    run()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best / (batch * context)


def moe_timing(device: torch.device, repeats: int) -> dict:
    """MoE (8 experts of width f, top 2) vs dense with d_ff = 2f (same active) and d_ff = 8f (same total)."""
    base = dict(vocab_size=8192, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, max_seq_len=256, **LLAMA)
    f = 352
    models = {"moe": ModelConfig(**base, d_ff=f, n_experts=8, experts_per_token=2),
              "dense_same_active": ModelConfig(**base, d_ff=2 * f),
              "dense_same_total": ModelConfig(**base, d_ff=8 * f)}
    out = {}
    for key, cfg in models.items():
        torch.manual_seed(0)
        model = Transformer(cfg).to(device)
        c = model.count_params()
        out[key] = {"params": c["total"], "active": c["active"],
                    "train_us_per_token": 1e6 * seconds_per_token(model, 4, 256, True, repeats),
                    "prefill_us_per_token": 1e6 * seconds_per_token(model, 4, 256, False, repeats)}
    for mode in ("train", "prefill"):
        k = f"{mode}_us_per_token"
        out[f"{mode}_moe_vs_same_active"] = out["moe"][k] / out["dense_same_active"][k]
        out[f"{mode}_moe_vs_same_total"] = out["moe"][k] / out["dense_same_total"][k]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--only", nargs="*", help=f"configurations to run (default all: {', '.join(CONFIGS)})")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per MoE timing (best is kept)")
    args = ap.parse_args()
    device = torch.device(args.device)
    names = args.only or list(CONFIGS)
    rows = []
    head = (f"{'config':<14} {'params':>12} {'active':>12} exact {'flops':>6} {'infer':>6} {'peak':>6} "
            f"{'train MB':>9} {'pred MB':>9} {'train':>6} {'sum':>6}")
    print(f"lmlab size vs measured on {device} ({platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}); ratios are measured / predicted")
    print(head)
    for name in names:
        cfg, batch, context = CONFIGS[name]
        r = check(name, cfg, batch, context, device)
        rows.append(r)
        print(f"{name:<14} {r['params']:>12,} {r['params_active']:>12,} {'yes' if r['params_exact'] else 'NO':>5} "
              f"{r['flops_ratio']:>6.3f} {r['inference_resident_ratio']:>6.3f} {r['inference_peak_ratio']:>6.3f} "
              f"{r['training_peak_mb']:>9.1f} {r['training_predicted_mb']:>9.1f} {r['training_ratio']:>6.3f} "
              f"{r['training_sum_ratio']:>6.3f}" + (f"  ({r['idle_experts']} of {r['experts']} experts idle)"
                                                    if r["idle_experts"] else ""), flush=True)
    print("(flops: forward, flop_counter / formula; infer: weights + KV cache resident / predicted; peak: "
          "prefill peak / predicted incl. activations;\n train: training-step peak / eager estimate; sum: the "
          "same / the classic sum of weights, grads, optimizer, Korthikanti activations and logits;\n an "
          "expert no token chose in the measured step has no gradient or optimizer state: random routers "
          "send deep layers' tokens to few experts)")
    timing = moe_timing(device, args.repeats)
    print("\nMoE (8 experts, top 2) vs dense, microseconds per token:")
    for key in ("moe", "dense_same_active", "dense_same_total"):
        t = timing[key]
        print(f"  {key:<18} params {t['params']:>11,}  active {t['active']:>11,}  train "
              f"{t['train_us_per_token']:8.2f}  prefill {t['prefill_us_per_token']:8.2f}")
    print(f"  MoE / same-active dense: train {timing['train_moe_vs_same_active']:.2f}x, prefill "
          f"{timing['prefill_moe_vs_same_active']:.2f}x;  MoE / same-total dense: train "
          f"{timing['train_moe_vs_same_total']:.2f}x, prefill {timing['prefill_moe_vs_same_total']:.2f}x")
    ok = {"params_exact": all(r["params_exact"] for r in rows),
          "flops_within_2pct": all(abs(r["flops_ratio"] - 1) <= 0.02 for r in rows),
          "inference_within_10pct": all(abs(r["inference_resident_ratio"] - 1) <= 0.10 for r in rows),
          "training_within_10pct": all(abs(r["training_ratio"] - 1) <= 0.10 for r in rows)}
    print(json.dumps({"benchmark": "size_vs_measured", "device": str(device), "torch": torch.__version__,
                      "targets_met": ok, "configs": rows, "moe_timing": timing}))


if __name__ == "__main__":
    main()
