"""FLOPs per token of a `ModelConfig`, from the architecture alone (no torch).

Counting convention (Kaplan et al. 2020; PaLM appendix B): a matmul with an
n x m weight costs 2nm FLOPs per token forward and twice that backward, so
training costs 6 x (matmul parameters) per token, plus attention's own
matmuls: 2 x 2 x T x d per layer per token forward (scores and weighted sum
over a context of T), hence 12 x L x T x d for training. Embedding lookups,
norms, biases and activations are not counted. In a mixture of experts only
the routed experts count (and the router's own matmul). `lmlab size` applies
the same functions to published configs.
"""

from __future__ import annotations

from lmlab.model.config import ModelConfig
from lmlab.plan.params import active_experts, attention_biases, attention_params, up_width


def matmul_params(m: ModelConfig, active: bool = True) -> int:
    """Parameters that take part in a token's matmuls: attention, MLP (routed experts only when `active`),
    router, output head (tied or not) and BERT's head transform; embedding lookups, norms and biases are not."""
    experts = active_experts(m) if active else m.n_experts
    mlp = experts * (m.d_model * up_width(m) + m.ff_dim * m.d_model)
    router = m.d_model * m.n_experts if m.moe else 0
    per_layer = attention_params(m) - attention_biases(m) + mlp + router
    return m.n_layers * per_layer + m.vocab_size * m.d_model + m.d_model * m.d_model * m.head_transform


def forward_flops_per_token(m: ModelConfig, context: int) -> float:
    """Forward FLOPs for one token attending over `context` positions: 2 x active matmul weights + 4 x layers
    x context x attention width, with no discount for the causal mask. The attention width is n_heads x
    head_dim, which is d_model unless a published config sets head_dim apart."""
    return 2 * matmul_params(m, active=True) + 4 * m.n_layers * context * m.n_heads * m.head_dim


def train_flops_per_token(m: ModelConfig, context: int) -> float:
    """Forward + backward: three times the forward cost."""
    return 3 * forward_flops_per_token(m, context)
