"""A Hugging Face `config.json` read into lmlab's `ModelConfig`, without torch.

One reader serves both the importer (model/hf.py, which needs a config the
Transformer computes exactly) and `lmlab size` (which needs only the shape, of
more families). `published_from_hf` reads every key that sets a `ModelConfig`
field; `config_from_hf` then refuses whatever the Transformer would compute
differently. What published models have and the Transformer lacks is kept in
`PublishedConfig`, a `ModelConfig` with three more fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lmlab.errors import LmlabError
from lmlab.model.config import ModelConfig

FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "mixtral", "bert")
"""model_type values whose config.json `published_from_hf` reads."""
SUPPORTED = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
             "qwen2": "Qwen2ForCausalLM", "bert": "BertForMaskedLM"}
"""model_type -> the transformers class an export names in `architectures` (the families lmlab can import)."""


@dataclass
class PublishedConfig(ModelConfig):
    """A ModelConfig plus the switches of published models that lmlab's Transformer lacks.

    Sizing reads every field by ModelConfig's name, so a new ModelConfig switch reaches it unchanged.
    The Transformer does not honour the extras, so a PublishedConfig is for sizing; `config_from_hf`
    refuses a config.json that needs them.
    """

    d_head: int | None = None
    """Width of one attention head (None = d_model // n_heads); Hugging Face's head_dim, which may differ."""
    out_bias: bool | None = None
    """Bias on the attention output projection alone (None = follow `bias`); Llama's attention_bias."""
    mlp_bias: bool | None = None
    """Biases on the MLP's matrices alone (None = follow `bias`); Llama's mlp_bias."""

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    def _validate_head_width(self) -> None:
        """An explicit head width frees d_model from splitting evenly: q is n_heads x d_head wide."""
        if self.d_head is None:
            super()._validate_head_width()
        elif self.d_head < 1:
            raise LmlabError(f"model.d_head must be a positive integer, got {self.d_head}")


# ---- reading keys ------------------------------------------------------------------------------------

def _need(hf: dict[str, Any], key: str, where: str) -> int:
    """A required positive integer of a config.json, or an error naming the key."""
    if key not in hf:
        raise LmlabError(f"{where}: config.json lacks required key {key!r}")
    return _positive(hf[key], key, where)


def _opt(hf: dict[str, Any], key: str, default: int, where: str) -> int:
    """An optional positive integer (absent or null = `default`)."""
    value = hf.get(key)
    return default if value is None else _positive(value, key, where)


def _positive(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LmlabError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _number(hf: dict[str, Any], key: str, default: float, where: str) -> float:
    """An optional real number (absent = `default`), such as an epsilon or a RoPE base."""
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LmlabError(f"{where}: {key} must be a number, got {value!r}")
    return value


def _split(d: int, heads: int, where: str, keys: tuple[str, str]) -> None:
    """Without an explicit head_dim, each head takes an equal slice of the width."""
    if d % heads:
        raise LmlabError(f"{where}: {keys[0]}={heads} does not divide {keys[1]}={d} "
                         "(each head gets an equal slice of the width)")


# ---- the families --------------------------------------------------------------------------------------

def published_from_hf(hf: dict[str, Any], where: str = "config.json") -> PublishedConfig:
    """The model a config.json describes (model_type gpt2, llama, mistral, qwen2, mixtral or bert; the
    *ForCausalLM / BertForMaskedLM variant, i.e. with its LM head and without BERT's pooler)."""
    if not isinstance(hf, dict):
        raise LmlabError(f"{where}: config.json must be a JSON object, got {type(hf).__name__}")
    mtype = hf.get("model_type")
    if mtype is None:
        raise LmlabError(f"{where}: config.json lacks required key 'model_type' (expected one of "
                         f"{', '.join(FAMILIES)})")
    if mtype not in FAMILIES:
        raise LmlabError(f"{where}: model_type {mtype!r} is not supported; expected one of {', '.join(FAMILIES)}")
    if mtype == "gpt2":
        return _gpt2(hf, where)
    if mtype == "bert":
        return _bert(hf, where)
    return _llama_family(hf, mtype, where)


def _gpt2(hf: dict[str, Any], where: str) -> PublishedConfig:
    """GPT-2: biases everywhere, LayerNorm, learned positions, GELU MLP of n_inner (default 4d), tied head."""
    d, heads = _need(hf, "n_embd", where), _need(hf, "n_head", where)
    _split(d, heads, where, ("n_head", "n_embd"))
    exact = hf.get("activation_function", "gelu_new") == "gelu"
    return PublishedConfig(vocab_size=_need(hf, "vocab_size", where), d_model=d, n_layers=_need(hf, "n_layer", where),
                           n_heads=heads, d_ff=_opt(hf, "n_inner", 4 * d, where),
                           max_seq_len=_need(hf, "n_positions", where), norm="layernorm",
                           norm_eps=_number(hf, "layer_norm_epsilon", 1e-5, where), positions="learned",
                           mlp="gelu" if exact else "gelu_tanh", bias=True,
                           tie_embeddings=bool(hf.get("tie_word_embeddings", True)))


def _bert(hf: dict[str, Any], where: str) -> PublishedConfig:
    """BERT as BertForMaskedLM: post-norm encoder, embedding LayerNorm, token types, MLM head, no pooler."""
    d, heads = _need(hf, "hidden_size", where), _need(hf, "num_attention_heads", where)
    _split(d, heads, where, ("num_attention_heads", "hidden_size"))
    type_vocab = hf.get("type_vocab_size", 2)
    if isinstance(type_vocab, bool) or not isinstance(type_vocab, int) or type_vocab < 0:
        raise LmlabError(f"{where}: type_vocab_size must be a non-negative integer, got {type_vocab!r}")
    return PublishedConfig(vocab_size=_need(hf, "vocab_size", where), d_model=d,
                           n_layers=_need(hf, "num_hidden_layers", where), n_heads=heads,
                           d_ff=_need(hf, "intermediate_size", where),
                           max_seq_len=_need(hf, "max_position_embeddings", where), norm="layernorm",
                           norm_eps=_number(hf, "layer_norm_eps", 1e-12, where), norm_position="post",
                           embed_norm=True, type_vocab_size=type_vocab, positions="learned", mlp="gelu", bias=True,
                           tie_embeddings=bool(hf.get("tie_word_embeddings", True)), head_transform=True,
                           causal=False)


def _llama_family(hf: dict[str, Any], mtype: str, where: str) -> PublishedConfig:
    """Llama, Mistral, Qwen2, Mixtral: RMSNorm, RoPE, SwiGLU, untied head unless tie_word_embeddings.

    Qwen2 has q/k/v biases (not on o_proj); Llama's attention_bias puts biases on q/k/v/o and mlp_bias on the
    MLP; Mixtral replaces the MLP by num_local_experts experts, num_experts_per_tok of them active, chosen by a
    bias-free router (d_model x n_experts).
    """
    d, heads = _need(hf, "hidden_size", where), _need(hf, "num_attention_heads", where)
    kv = _opt(hf, "num_key_value_heads", heads, where)
    if heads % kv:
        raise LmlabError(f"{where}: num_key_value_heads={kv} must divide num_attention_heads={heads}")
    if hf.get("head_dim") is None:
        _split(d, heads, where, ("num_attention_heads", "hidden_size"))
    d_head = _opt(hf, "head_dim", d // heads, where)
    experts = _experts(hf, where) if mtype == "mixtral" else {}
    attention_bias = bool(hf.get("attention_bias", False)) and mtype == "llama"
    mlp_bias = bool(hf.get("mlp_bias", False)) and mtype == "llama"
    return PublishedConfig(vocab_size=_need(hf, "vocab_size", where), d_model=d,
                           n_layers=_need(hf, "num_hidden_layers", where), n_heads=heads, n_kv_heads=kv,
                           d_ff=_need(hf, "intermediate_size", where),
                           max_seq_len=_need(hf, "max_position_embeddings", where), norm="rmsnorm",
                           norm_eps=_number(hf, "rms_norm_eps", 1e-6, where), positions="rope",
                           rope_theta=_rope_theta(hf, where), mlp="swiglu", bias=False,
                           qkv_bias=True if attention_bias or mtype == "qwen2" else None,
                           tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **experts,
                           d_head=None if d_head * heads == d else d_head,
                           out_bias=True if attention_bias else None, mlp_bias=True if mlp_bias else None)


def _experts(hf: dict[str, Any], where: str) -> dict[str, int]:
    """Mixtral's mixture: how many experts, and how many each token visits."""
    n_experts = _need(hf, "num_local_experts", where)
    top_k = _need(hf, "num_experts_per_tok", where)
    if top_k > n_experts:
        raise LmlabError(f"{where}: num_experts_per_tok={top_k} exceeds num_local_experts={n_experts}")
    return {"n_experts": n_experts, "experts_per_token": top_k}


def _rope(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings: transformers 5's rope_parameters, or the older rope_scaling."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    return rope if isinstance(rope, dict) else {}


def _rope_theta(hf: dict[str, Any], where: str) -> float:
    return float(_number(_rope(hf), "rope_theta", _number(hf, "rope_theta", 10000.0, where), where))


# ---- the importer's stricter reading -------------------------------------------------------------------

def config_from_hf(hf: dict[str, Any], where: str = "config.json", max_seq_len: int | None = None) -> ModelConfig:
    """A ModelConfig equal in function to a Hugging Face config (errors name what is missing or unsupported)."""
    mtype = hf.get("model_type")
    if mtype not in SUPPORTED:
        raise LmlabError(f"{where}: unsupported architecture model_type={mtype!r}; supported: "
                         f"{', '.join(sorted(SUPPORTED))}")
    _refuse_unsupported(hf, mtype, where)
    published = published_from_hf(hf, where)
    if published.d_head is not None:
        raise LmlabError(f"{where}: head_dim={hf['head_dim']} differs from hidden_size/heads="
                         f"{published.d_model / published.n_heads:g}; not supported")
    fields = {f.name: getattr(published, f.name) for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{**fields, "max_seq_len": max_seq_len or published.max_seq_len})


def _refuse_unsupported(hf: dict[str, Any], mtype: str, where: str) -> None:
    """Settings the Transformer would compute differently: other activations, position schemes, scaled
    RoPE, biases other than Qwen2's on q/k/v."""
    if mtype == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
            raise LmlabError(f"{where}: GPT-2 activation {act!r} is not supported (gelu, gelu_new)")
        if hf.get("scale_attn_by_inverse_layer_idx"):
            raise LmlabError(f"{where}: scale_attn_by_inverse_layer_idx is not supported")
        return
    if mtype == "bert":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise LmlabError(f"{where}: BERT position_embedding_type {hf['position_embedding_type']!r} "
                             "is not supported (absolute)")
        if hf.get("hidden_act", "gelu") != "gelu":
            raise LmlabError(f"{where}: BERT hidden_act {hf['hidden_act']!r} is not supported (gelu)")
        return
    if hf.get("hidden_act", "silu") != "silu":
        raise LmlabError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (silu)")
    rope = _rope(hf)
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise LmlabError(f"{where}: RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is not supported "
                         "(only unscaled RoPE)")
    if hf.get("mlp_bias") or hf.get("attention_bias"):
        raise LmlabError(f"{where}: attention_bias/mlp_bias=true is not supported (q/k/v biases as in Qwen2 are)")
