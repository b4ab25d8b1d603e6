"""Claims about mixtures of experts, measured on real models built side by side.

An MoE layer with E experts of width f, of which each token runs k, is set
beside two dense models: one whose MLP has the MoE's total width (E x f) and
one with its active width (k x f). Weights are counted from their storages and
FLOPs by PyTorch's FLOP counter over a forward pass, so nothing is predicted:
both are measured.
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.figures import pyplot, save_png
from lmlab.ledger.claims import Claim, Row, plot_path
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.train.measure import forward_flops, storage_bytes

EXPERTS, ACTIVE = 8, 2


def _models(ctx: Any) -> dict[str, Transformer]:
    d, layers, context = (256, 4, 256) if ctx.size == "full" else (32, 2, 16)
    base = dict(vocab_size=512, d_model=d, n_layers=layers, n_heads=4, max_seq_len=context)
    f = 4 * d
    torch.manual_seed(ctx.seed)
    return {"moe": Transformer(ModelConfig(**base, d_ff=f, n_experts=EXPERTS, experts_per_token=ACTIVE)),
            "dense, total width": Transformer(ModelConfig(**base, d_ff=EXPERTS * f)),
            "dense, active width": Transformer(ModelConfig(**base, d_ff=ACTIVE * f))}


def _measure(ctx: Any) -> dict[str, dict[str, float]]:
    if "moe" not in ctx.memo:
        ctx.memo["moe"] = {name: {"weight_bytes": storage_bytes(m.parameters()),
                                  "forward_flops": forward_flops(m, m.cfg.max_seq_len),
                                  "params": m.count_params()["total"]} for name, m in _models(ctx).items()}
    return ctx.memo["moe"]


def _plot(ctx: Any, claim_id: str, key: str, label: str) -> str:
    m = _measure(ctx)
    path, link = plot_path(ctx, claim_id)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3), dpi=110)
    names = list(m)
    ax.barh(names, [m[n][key] for n in names], color=["tab:orange", "tab:grey", "tab:blue"])
    ax.set_xlabel(label)
    save_png(fig, path)
    return link


def _exact(value: float, unit: str, holds: bool, measured: str, link: str, details: dict) -> Row:
    return Row(value=value, low=value, high=value, unit=unit, verdict="holds" if holds else "does not hold",
               measured=measured, interval="none needed: exact counts of one forward pass and of the weights' bytes",
               plot=link, details=details)


def moe_memory_follows_total(ctx: Any) -> Row:
    m = _measure(ctx)
    ratio = m["moe"]["weight_bytes"] / m["dense, total width"]["weight_bytes"]
    vs_active = m["moe"]["weight_bytes"] / m["dense, active width"]["weight_bytes"]
    link = _plot(ctx, "moe-memory-follows-total", "weight_bytes", "bytes of weights")
    return _exact(ratio, "MoE weights / weights of the dense model of its total width", abs(ratio - 1) < 0.02,
                  f"fp32 weight bytes of a {EXPERTS}-expert top-{ACTIVE} MoE and two dense models ({ctx.size} size)",
                  link, {"moe_over_dense_active_width": round(vs_active, 3),
                         **{k: v["weight_bytes"] for k, v in m.items()}})


def moe_compute_follows_active(ctx: Any) -> Row:
    m = _measure(ctx)
    ratio = m["moe"]["forward_flops"] / m["dense, active width"]["forward_flops"]
    vs_total = m["moe"]["forward_flops"] / m["dense, total width"]["forward_flops"]
    link = _plot(ctx, "moe-compute-follows-active", "forward_flops", "FLOPs of one forward pass")
    return _exact(ratio, "MoE forward FLOPs / FLOPs of the dense model of its active width", abs(ratio - 1) < 0.05,
                  f"FLOPs of a forward pass counted by torch.utils.flop_counter, the same {EXPERTS}-expert "
                  f"top-{ACTIVE} MoE and dense models", link,
                  {"moe_over_dense_total_width": round(vs_total, 3), **{k: v["forward_flops"] for k, v in m.items()}})


CLAIMS = [
    Claim("moe-memory-follows-total", "A mixture of experts needs the memory of all its parameters.",
          "Shazeer et al. 2017; Fedus et al. 2022 (Switch Transformer); Mixtral's model card (47B total, 13B active)",
          "Weight bytes of an MoE against dense models of its total and its active MLP width.",
          moe_memory_follows_total),
    Claim("moe-compute-follows-active", "A mixture of experts costs the compute of its active parameters only.",
          "Shazeer et al. 2017; Fedus et al. 2022 (Switch Transformer); Mixtral's model card (47B total, 13B active)",
          "FLOPs of one forward pass of the MoE against dense models of its active and its total MLP width.",
          moe_compute_follows_active),
]
