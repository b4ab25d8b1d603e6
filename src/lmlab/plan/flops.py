"""FLOPs per token, from the architecture alone (no torch).

Counting convention (Kaplan et al. 2020; PaLM appendix B): a matmul with an
n x m weight costs 2nm FLOPs per token forward and twice that backward, so
training costs 6 x (matmul parameters) per token, plus attention's own
matmuls: 2 x 2 x T x d per layer per token forward (scores and weighted sum
over a context of T), hence 12 x L x T x d for training. Embedding lookups,
norms and activations are not counted.
"""

from __future__ import annotations

from typing import Any


def matmul_params(cfg: Any) -> int:
    """Parameters that take part in matmuls: attention, MLP and the output head."""
    d, hd = cfg.d_model, cfg.d_model // cfg.n_heads
    kv = cfg.n_kv_heads or cfg.n_heads
    attn = d * (cfg.n_heads + 2 * kv) * hd + cfg.n_heads * hd * d
    ff = cfg.d_ff or (-(-int(8 * d / 3) // 32) * 32 if cfg.mlp == "swiglu" else 4 * d)
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * ff
    head = d * cfg.vocab_size + (d * d if getattr(cfg, "head_transform", False) else 0)
    return cfg.n_layers * (attn + mlp) + head


def forward_flops_per_token(cfg: Any, context: int) -> float:
    """Forward FLOPs for one token attending over `context` positions."""
    return 2 * matmul_params(cfg) + 4 * cfg.n_layers * context * cfg.d_model


def train_flops_per_token(cfg: Any, context: int) -> float:
    """Forward + backward: three times the forward cost."""
    return 3 * forward_flops_per_token(cfg, context)
