"""FLOPs per token of an lmlab `ModelConfig`, from the architecture alone (no torch).

Counting convention (Kaplan et al. 2020; PaLM appendix B): a matmul with an
n x m weight costs 2nm FLOPs per token forward and twice that backward, so
training costs 6 x (matmul parameters) per token, plus attention's own
matmuls: 2 x 2 x T x d per layer per token forward (scores and weighted sum
over a context of T), hence 12 x L x T x d for training. Embedding lookups,
norms, biases and activations are not counted. In a mixture of experts only
the routed experts count (and the router's own matmul). The arithmetic lives
in `lmlab.plan.size`, which applies it to any architecture.
"""

from __future__ import annotations

from lmlab.model.config import ModelConfig
from lmlab.plan import size


def matmul_params(cfg: ModelConfig, active: bool = True) -> int:
    """Parameters that take part in a token's matmuls: attention, MLP (routed experts only when `active`),
    router and output head."""
    return size.matmul_params(size.arch_from_model_config(cfg), active=active)


def forward_flops_per_token(cfg: ModelConfig, context: int) -> float:
    """Forward FLOPs for one token attending over `context` positions."""
    return size.forward_flops_per_token(size.arch_from_model_config(cfg), context)


def train_flops_per_token(cfg: ModelConfig, context: int) -> float:
    """Forward + backward: three times the forward cost."""
    return 3 * forward_flops_per_token(cfg, context)
