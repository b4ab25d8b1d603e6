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


def _follows(ctx: Any, claim_id: str, key: str, reference: str, other: str, tolerance: float, what: str,
             label: str) -> Row:
    """The MoE's `key` over the `reference` dense model's: the claim holds within `tolerance` of 1."""
    m = _measure(ctx)
    ratio = m["moe"][key] / m[reference][key]
    link = _plot(ctx, claim_id, key, label)
    beside = "moe_over_" + other.replace(", ", "_").replace(" ", "_")
    return Row(value=ratio, low=ratio, high=ratio, unit=f"MoE {what} / those of the dense model of its "
               f"{reference.split(', ')[1]}", verdict="holds" if abs(ratio - 1) < tolerance else "does not hold",
               measured=f"{what} of a {EXPERTS}-expert top-{ACTIVE} MoE and two dense models ({ctx.size} size)",
               interval="none needed: exact counts of one forward pass and of the weights' bytes", plot=link,
               details={beside: round(m["moe"][key] / m[other][key], 3), **{k: v[key] for k, v in m.items()}})


def moe_memory_follows_total(ctx: Any) -> Row:
    return _follows(ctx, "moe-memory-follows-total", "weight_bytes", "dense, total width", "dense, active width",
                    0.02, "fp32 weight bytes", "bytes of weights")


def moe_compute_follows_active(ctx: Any) -> Row:
    return _follows(ctx, "moe-compute-follows-active", "forward_flops", "dense, active width", "dense, total width",
                    0.05, "forward FLOPs (torch.utils.flop_counter)", "FLOPs of one forward pass")


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
