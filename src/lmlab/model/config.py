"""`ModelConfig`: every architectural choice of the one `Transformer`, plus presets.

GPT-2 and Llama differ in a handful of switches (positions, norm, MLP, bias,
grouped-query attention, tied head); an autoregressive and a masked LM differ
in one (`causal`). Keeping them as fields of one dataclass makes those
differences visible and lets `lmlab size` reason about any model.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any

from lmlab.errors import LmlabError

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("gelu", "gelu_tanh", "swiglu")
NORM_POSITIONS = ("pre", "post")
PARAMETRIZATIONS = ("sp", "mup")


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    """Number of token ids (set from the tokenizer when training)."""
    d_model: int = 128
    """Width of the residual stream."""
    n_layers: int = 4
    """Number of transformer blocks."""
    n_heads: int = 4
    """Attention heads (query heads); must divide d_model."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention (None = n_heads, i.e. multi-head attention)."""
    d_ff: int | None = None
    """Hidden width of the MLP (None = 4*d_model for gelu, 8/3*d_model rounded up to 32 for swiglu)."""
    max_seq_len: int = 128
    """Longest sequence the model accepts (the size of learned position tables / RoPE caches)."""
    norm: str = "layernorm"
    """'layernorm' (GPT-2) or 'rmsnorm' (Llama)."""
    norm_eps: float = 1e-5
    """Epsilon inside the normalisation."""
    norm_position: str = "pre"
    """'pre': x + f(norm(x)) with a final norm (GPT-2, Llama); 'post': norm(x + f(x)), no final norm (BERT)."""
    embed_norm: bool = False
    """Normalise the summed embeddings before the first block (BERT)."""
    type_vocab_size: int = 0
    """Token-type (segment) embeddings added to the input, 0 = none (BERT has 2)."""
    positions: str = "learned"
    """'learned' absolute position embeddings (GPT-2) or 'rope' rotary embeddings (Llama)."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    mlp: str = "gelu"
    """'gelu' (two matrices, exact GELU), 'gelu_tanh' (GPT-2's tanh approximation) or 'swiglu' (three
    matrices, gated)."""
    bias: bool = False
    """Biases in linear layers and LayerNorm (GPT-2 has them, Llama does not)."""
    qkv_bias: bool | None = None
    """Biases on the query/key/value projections alone (None = follow `bias`; Qwen2 has them, bias=False)."""
    head_transform: bool = False
    """BERT's masked-LM head: dense + GELU + LayerNorm before the output matrix, and an output bias."""
    n_experts: int = 1
    """MLPs per block: 1 = one dense MLP; more = a sparse mixture of experts, each token routed to
    `experts_per_token` of them (memory grows with n_experts, compute with experts_per_token)."""
    experts_per_token: int = 2
    """Top-k of a mixture of experts: how many experts each token runs through (unused when n_experts=1)."""
    moe_renormalize: bool = True
    """Rescale each token's top-k gate probabilities to sum to 1 (Mixtral); False keeps the raw softmax
    probabilities (Switch Transformer), through which a top-1 router still learns from the loss."""
    tie_embeddings: bool = True
    """Share the input embedding matrix with the output head."""
    causal: bool = True
    """Causal (autoregressive) attention mask; False gives bidirectional attention for masked LMs."""
    dropout: float = 0.0
    """Dropout on attention probabilities, residual branches and embeddings."""
    init_std: float = 0.02
    """Standard deviation of the GPT-2-style normal initialisation."""
    parametrization: str = "sp"
    """'sp' (standard: every width initialised and trained alike) or 'mup' (maximal update parametrization,
    Yang et al. 2022: hidden matrices initialised with std / sqrt(width_mult) and trained with Adam's lr /
    width_mult, attention logits scaled by 1/head_dim, logits by 1/width_mult), so that the learning rate
    and initialisation tuned at `mup_base_width` stay right at any width."""
    mup_base_width: int = 128
    """Under muP, the d_model at which muP and SP coincide (width_mult = d_model / mup_base_width)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def moe(self) -> bool:
        """A sparse mixture-of-experts MLP in every block."""
        return self.n_experts > 1

    @property
    def width_mult(self) -> float:
        """How many times wider than the muP base width (1 under standard parametrization)."""
        return self.d_model / self.mup_base_width if self.parametrization == "mup" else 1.0

    @property
    def attn_scale(self) -> float:
        """Attention logits' scale: 1/sqrt(head_dim) (SP), or sqrt(base head_dim)/head_dim (muP: 1/head_dim, equal
        to SP at the base width)."""
        if self.parametrization == "mup":
            return math.sqrt(self.mup_base_width / self.n_heads) / self.head_dim
        return 1 / math.sqrt(self.head_dim)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            return -(-int(8 * self.d_model / 3) // 32) * 32
        return 4 * self.d_model

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, name) < 1:
                raise LmlabError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        self._validate_head_width()
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise LmlabError(f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}")
        if self.positions == "rope" and self.head_dim % 2:
            raise LmlabError(f"RoPE needs an even head dimension, got d_model/n_heads={self.head_dim}")
        for name, choices in (("norm", NORMS), ("positions", POSITIONS), ("mlp", MLPS),
                              ("norm_position", NORM_POSITIONS), ("parametrization", PARAMETRIZATIONS)):
            if getattr(self, name) not in choices:
                raise LmlabError(f"model.{name} must be one of {choices}, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.type_vocab_size < 0:
            raise LmlabError(f"model.type_vocab_size must be >= 0, got {self.type_vocab_size}")
        if self.mup_base_width < 1 or (self.parametrization == "mup" and self.mup_base_width % self.n_heads):
            raise LmlabError(f"model.mup_base_width={self.mup_base_width} must be a positive multiple of "
                             f"model.n_heads={self.n_heads} (it sets the base head dimension)")
        if self.n_experts < 1:
            raise LmlabError(f"model.n_experts must be >= 1 (1 = a dense MLP), got {self.n_experts}")
        if self.moe and not 1 <= self.experts_per_token <= self.n_experts:
            raise LmlabError(f"model.experts_per_token={self.experts_per_token} must be between 1 and "
                             f"model.n_experts={self.n_experts}")
        if self.d_ff is not None and self.d_ff < 1:
            raise LmlabError(f"model.d_ff must be positive, got {self.d_ff}")

    def _validate_head_width(self) -> None:
        """Each head takes an equal slice of d_model; a subclass that sets the head width apart relaxes this."""
        if self.d_model % self.n_heads:
            raise LmlabError(f"model.n_heads={self.n_heads} does not divide model.d_model={self.d_model}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        """A config from JSON data (a file, a header): keys and value types are checked before `validate`."""
        if not isinstance(data, dict):
            raise LmlabError(f"a model config must be a JSON object, got {type(data).__name__}")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise LmlabError(f"unknown model config key(s): {', '.join(unknown)}")
        for name, value in data.items():
            if not _is_a(value, str(fields[name])):
                raise LmlabError(f"model config key {name!r} must be {fields[name]}, got {value!r}")
        return cls(**data)


_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}


def _is_a(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a simple annotation such as 'int', 'float' or 'int | None'."""
    kinds = [_JSON_TYPES.get(t.strip()) for t in annotation.split("|")]
    if any(k is None for k in kinds):
        return True  # a structured type: left to the constructor
    if isinstance(value, bool) and "bool" not in annotation:
        return False  # JSON true is not a number here
    return any(isinstance(value, k) for k in kinds)


_GPT2 = dict(norm="layernorm", positions="learned", mlp="gelu", bias=True, tie_embeddings=True)
_LLAMA = dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, tie_embeddings=False)
_BERT = dict(norm="layernorm", norm_eps=1e-12, norm_position="post", embed_norm=True, type_vocab_size=2,
             positions="learned", mlp="gelu", bias=True, tie_embeddings=True, head_transform=True, causal=False)

PRESETS: dict[str, dict[str, Any]] = {
    # Published shapes (GPT-2 paper / HF configs); vocab 50257, context 1024.
    "gpt2-small": dict(_GPT2, vocab_size=50257, d_model=768, n_layers=12, n_heads=12, max_seq_len=1024),
    "gpt2-medium": dict(_GPT2, vocab_size=50257, d_model=1024, n_layers=24, n_heads=16, max_seq_len=1024),
    # Small lab models: sized for a laptop CPU.
    "gpt-tiny": dict(_GPT2, bias=False, d_model=128, n_layers=4, n_heads=4, max_seq_len=128),
    "gpt-mini": dict(_GPT2, bias=False, d_model=256, n_layers=6, n_heads=8, max_seq_len=256),
    "llama-tiny": dict(_LLAMA, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=128),
    "llama-mini": dict(_LLAMA, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, max_seq_len=256),
    # llama-tiny with 8 SwiGLU experts of width 96, 2 per token (Mixtral's routing): about twice the
    # dense MLP's parameters resident, about half of them active per token.
    "moe-tiny": dict(_LLAMA, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=128, d_ff=96,
                     n_experts=8, experts_per_token=2),
    # BERT (Devlin et al. 2019): vocab 30522, context 512.
    "bert-base": dict(_BERT, vocab_size=30522, d_model=768, n_layers=12, n_heads=12, max_seq_len=512),
    "bert-mini": dict(_BERT, bias=True, d_model=128, n_layers=4, n_heads=4, max_seq_len=128),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named architecture, with any field overridden."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(PRESETS)}"
        raise LmlabError(f"unknown model preset {name!r}{hint}")
    return ModelConfig(**{**PRESETS[name], **overrides})
