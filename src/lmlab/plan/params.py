"""Parameters of a transformer by part, from its `ModelConfig` alone (no torch).

Each count mirrors a module of lmlab's `Transformer` (model/transformer.py), so
for a ModelConfig the total equals `Transformer(cfg).count_params()["total"]`
exactly. A `PublishedConfig` adds the few shapes of published models that the
Transformer lacks (an explicit head width, biases set apart), read here too.
"""

from __future__ import annotations

from lmlab.model.config import ModelConfig
from lmlab.model.hf_config import PublishedConfig


def pos_table(m: ModelConfig) -> int:
    """Rows of a learned position table (RoPE models have none)."""
    return m.max_seq_len if m.positions == "learned" else 0


def active_experts(m: ModelConfig) -> int:
    """MLPs a token runs through: the routed top-k of a mixture, else the one dense MLP."""
    return m.experts_per_token if m.moe else 1


def up_width(m: ModelConfig) -> int:
    """Output width of an MLP's first matmul (gate and up together for SwiGLU)."""
    return (2 if m.mlp == "swiglu" else 1) * m.ff_dim


def linear_biases(m: ModelConfig) -> tuple[bool, bool, bool]:
    """Biases on (q/k/v, attention output, MLP): `bias` for all, unless qkv_bias, or a published config's
    out_bias and mlp_bias, set one apart."""
    qkv = m.bias if m.qkv_bias is None else m.qkv_bias
    out, mlp = (m.out_bias, m.mlp_bias) if isinstance(m, PublishedConfig) else (None, None)
    return qkv, m.bias if out is None else out, m.bias if mlp is None else mlp


def norm_params(m: ModelConfig) -> int:
    """One norm: LayerNorm has a weight and (when biased) a bias of d_model each, RMSNorm a weight only."""
    return m.d_model * (2 if m.norm == "layernorm" and m.bias else 1)


def attention_params(m: ModelConfig) -> int:
    """One layer's attention: fused q/k/v (GQA: fewer k/v heads) and the output projection, with biases."""
    q, kv = m.n_heads * m.head_dim, m.kv_heads * m.head_dim
    return m.d_model * (q + 2 * kv) + q * m.d_model + attention_biases(m)


def attention_biases(m: ModelConfig) -> int:
    """One layer's attention biases: on q/k/v and on the output projection."""
    qkv, out, _ = linear_biases(m)
    return (m.n_heads + 2 * m.kv_heads) * m.head_dim * qkv + m.d_model * out


def expert_params(m: ModelConfig) -> int:
    """One MLP (one expert of a mixture): up (+gate for SwiGLU) and down, with biases."""
    return m.d_model * up_width(m) + m.ff_dim * m.d_model + (up_width(m) + m.d_model) * linear_biases(m)[2]


def router_params(m: ModelConfig) -> int:
    """One layer's router: a bias-free d_model x n_experts matrix scoring the experts (dense models have none)."""
    return m.d_model * m.n_experts if m.moe else 0


def param_counts(m: ModelConfig) -> dict[str, int]:
    """Parameters by part; the parts sum to `total`. A tied head is the embedding matrix, counted once."""
    d, L = m.d_model, m.n_layers
    n_norms = 2 * L + (m.norm_position == "pre") + m.embed_norm + m.head_transform
    untied_head = 0 if m.tie_embeddings else m.vocab_size * d
    out = {
        "embedding": (m.vocab_size + pos_table(m) + m.type_vocab_size) * d,
        "attention": L * attention_params(m),
        "mlp": L * m.n_experts * expert_params(m),
        "router": L * router_params(m),
        "norms": n_norms * norm_params(m),
        "head": untied_head + (m.vocab_size + d * d + d) * m.head_transform,
    }
    out = {"total": sum(out.values()), **out}
    inactive = L * (m.n_experts - active_experts(m)) * expert_params(m)
    out["active_per_token"] = out["total"] - inactive
    out["non_embedding"] = out["total"] - out["embedding"] - untied_head
    if m.moe:
        out["per_expert_per_layer"] = expert_params(m)
        out["per_expert"] = L * expert_params(m)
    return out


def matrices(m: ModelConfig) -> list[tuple[str, int, int, int]]:
    """Every 2-D weight as (name, rows, columns, how many): what quantization scales are counted over.
    Rows are output features (nn.Linear's layout), so a per-row scale is a per-output-channel scale."""
    d, L, q, kv = m.d_model, m.n_layers, m.n_heads * m.head_dim, m.kv_heads * m.head_dim
    out = [("token embedding", m.vocab_size, d, 1), ("position embedding", pos_table(m), d, 1),
           ("token-type embedding", m.type_vocab_size, d, 1), ("qkv", q + 2 * kv, d, L), ("attention out", d, q, L),
           ("mlp up", up_width(m), d, L * m.n_experts), ("mlp down", d, m.ff_dim, L * m.n_experts),
           ("router", m.n_experts if m.moe else 0, d, L), ("head transform", d if m.head_transform else 0, d, 1),
           ("head", 0 if m.tie_embeddings else m.vocab_size, d, 1)]
    return [x for x in out if x[1] and x[3]]
