"""`lmlab size`: parameters, memory and compute of a transformer, from its shape alone.

Pure arithmetic, no torch: a model's size follows from a dozen integers, so it
can be planned before anything is downloaded or allocated. A model is named by
a preset (lmlab's own, or a published Hugging Face config stored below), a
Hugging Face `config.json` (or a directory holding one) or an lmlab checkpoint
directory. Every figure says how it is computed, in the docstrings below and
in the table `run_size` prints. GB means 1e9 bytes throughout.

The parameter count of an lmlab `ModelConfig` reproduces
`Transformer(cfg).count_params()["total"]` exactly, and FLOPs follow the
convention set out in `lmlab.plan.flops` (which computes its figures here).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lmlab.errors import LmlabError
from lmlab.model.config import PRESETS, ModelConfig, preset

GB = 1e9
"""Bytes in a gigabyte: decimal, as memory is quoted on GPU spec sheets."""
BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4}
"""Bits per stored weight at each precision (scales of quantized formats come on top)."""
OPTIMIZERS = ("adamw", "sgd", "adam8bit")
INT4_GROUP = 128
"""int4 weights: one fp16 scale per group of this many weights along a row (GPTQ/AWQ's usual group size)."""
ADAM8BIT_BLOCK = 2048
"""8-bit Adam (Dettmers et al. 2022): block-wise quantized states, one fp32 absmax per block of 2048 values."""
OVERHEAD = 1.2
"""The rule of thumb's 20% on top of the weights for KV cache, activations and framework buffers."""
CHINCHILLA_TOKENS_PER_PARAM = 20
"""Compute-optimal training tokens per parameter (Hoffmann et al. 2022, "Chinchilla")."""
HF_FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "mixtral", "bert")
"""Hugging Face model_type values whose config.json can be sized."""


@dataclass
class SizeConfig:
    model: str = "gpt2-small"
    """A preset name (lmlab's, e.g. gpt2-small, or a published model, e.g. llama-3-8b, mixtral-8x7b), a Hugging Face
    config.json or a directory holding one, an lmlab checkpoint directory or an lmlab YAML recipe."""
    precision: str = "bf16"
    """Weight precision: fp32, bf16, fp16, fp8, int8 or int4 (int8/int4 add their scales)."""
    kv_precision: str | None = None
    """KV-cache precision (None = the weight precision, but bf16 for int8/int4 weights, as quantized models keep
    a 16-bit cache)."""
    context: int | None = None
    """Sequence length in tokens for the KV cache, activations and attention FLOPs (None = the model's maximum)."""
    batch: int = 1
    """Sequences processed at once."""
    optimizer: str = "adamw"
    """Training optimizer: adamw (m and v in fp32), sgd (with fp32 momentum) or adam8bit (block-wise 8-bit states)."""
    mixed_precision: bool = True
    """Training with 16-bit weights keeps an fp32 master copy (4 bytes/param) that the optimizer updates."""
    activation_checkpointing: bool = False
    """Keep only each layer's input and recompute the rest in the backward pass (less memory, ~1/3 more compute)."""
    train_tokens: float | None = None
    """Training tokens for the compute estimate (None = Chinchilla-optimal, 20 x parameters)."""
    peak_tflops: float = 989.0
    """Accelerator peak throughput in TFLOP/s (989 = NVIDIA H100 SXM, dense bf16, no sparsity)."""
    mfu: float = 0.4
    """Model FLOPs utilisation: the fraction of the peak that training sustains (0.3-0.5 is typical)."""
    POSITIONAL: ClassVar[tuple[str, ...]] = ("model",)

    def __post_init__(self) -> None:
        if not str(self.model).strip():
            raise LmlabError("model must name a preset, a config.json or a model directory, got ''")
        _choice("precision", self.precision, tuple(BITS))
        if self.kv_precision is not None:
            _choice("kv_precision", self.kv_precision, tuple(BITS))
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.context is not None and self.context < 1:
            raise LmlabError(f"context must be a positive number of tokens (or None for the model's maximum), "
                             f"got {self.context}")
        if self.batch < 1:
            raise LmlabError(f"batch must be >= 1, got {self.batch}")
        if self.train_tokens is not None and not (self.train_tokens > 0 and math.isfinite(self.train_tokens)):
            raise LmlabError(f"train_tokens must be a positive number (or None for Chinchilla-optimal), "
                             f"got {self.train_tokens}")
        if not (self.peak_tflops > 0 and math.isfinite(self.peak_tflops)):
            raise LmlabError(f"peak_tflops must be a positive number of TFLOP/s, got {self.peak_tflops}")
        if not 0 < self.mfu <= 1:
            raise LmlabError(f"mfu must be in (0, 1], got {self.mfu}")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LmlabError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


# ---- the architecture --------------------------------------------------------------------------------

@dataclass
class Arch:
    """Every shape that decides a transformer's parameter count: lmlab's `ModelConfig` plus what published
    models have that it lacks (an explicit head_dim, mixture-of-experts MLPs, separate bias switches)."""

    name: str
    """Where the shape came from (preset name or path), for the report."""
    vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    kv_heads: int
    head_dim: int
    """Usually d_model / n_heads, but Hugging Face configs may set it independently."""
    d_ff: int
    """Hidden width of one MLP (one expert's, for a mixture of experts)."""
    max_context: int
    family: str = "lmlab"
    """lmlab, or the Hugging Face model_type."""
    mlp: str = "gelu"
    """'gelu' (up and down: 2 matrices) or 'swiglu' (gate, up and down: 3 matrices)."""
    qkv_bias: bool = False
    out_bias: bool = False
    """Bias on the attention output projection."""
    mlp_bias: bool = False
    norm: str = "layernorm"
    """'layernorm' (weight, plus a bias when norm_bias) or 'rmsnorm' (weight only)."""
    norm_bias: bool = False
    final_norm: bool = True
    """A norm after the last block (pre-norm models); post-norm models (BERT) have none."""
    embed_norm: bool = False
    """A norm on the summed embeddings (BERT)."""
    tied: bool = True
    """The output head shares the token embedding matrix (counted once)."""
    pos_table: int = 0
    """Rows of a learned position table (0 for RoPE)."""
    type_vocab: int = 0
    """Rows of a token-type (segment) table (BERT: 2)."""
    head_transform: bool = False
    """BERT's MLM head: dense d x d with bias and a norm before the output matrix."""
    head_bias: bool = False
    """A bias on the output logits (BERT)."""
    causal: bool = True
    """Autoregressive decoder (has a KV cache when generating); False for encoders such as BERT."""
    n_experts: int = 1
    """MLP experts per layer (1 = a dense MLP)."""
    experts_per_token: int = 1
    """Experts each token is routed to (top-k)."""
    router_bias: bool = False

    def __post_init__(self) -> None:
        for key in ("vocab", "d_model", "n_layers", "n_heads", "kv_heads", "head_dim", "d_ff", "max_context",
                    "n_experts", "experts_per_token"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LmlabError(f"{self.name}: {key} must be a positive integer, got {value!r}")
        if self.n_heads % self.kv_heads:
            raise LmlabError(f"{self.name}: kv_heads={self.kv_heads} must divide n_heads={self.n_heads} "
                             "(grouped-query attention shares each key/value head among whole groups)")
        if self.experts_per_token > self.n_experts:
            raise LmlabError(f"{self.name}: experts_per_token={self.experts_per_token} exceeds "
                             f"n_experts={self.n_experts}")
        _choice(f"{self.name}: mlp", self.mlp, ("gelu", "swiglu"))
        _choice(f"{self.name}: norm", self.norm, ("layernorm", "rmsnorm"))
        for key in ("pos_table", "type_vocab"):
            if getattr(self, key) < 0:
                raise LmlabError(f"{self.name}: {key} must be >= 0, got {getattr(self, key)}")

    @property
    def moe(self) -> bool:
        return self.n_experts > 1

    @property
    def up_width(self) -> int:
        """Output width of an MLP's first matmul (gate and up together for SwiGLU)."""
        return (2 if self.mlp == "swiglu" else 1) * self.d_ff


def arch_from_model_config(cfg: ModelConfig, name: str = "lmlab") -> Arch:
    """The shape of lmlab's `Transformer(cfg)`: mirrors its modules one by one (see model/transformer.py)."""
    return Arch(
        name=name, vocab=cfg.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
        kv_heads=cfg.kv_heads, head_dim=cfg.head_dim, d_ff=cfg.ff_dim, max_context=cfg.max_seq_len, family="lmlab",
        mlp="swiglu" if cfg.mlp == "swiglu" else "gelu",  # gelu and gelu_tanh differ in the activation only
        qkv_bias=cfg.bias if cfg.qkv_bias is None else cfg.qkv_bias, out_bias=cfg.bias, mlp_bias=cfg.bias,
        norm=cfg.norm, norm_bias=cfg.bias,  # nn.LayerNorm(bias=cfg.bias); RMSNorm has no bias anyway
        final_norm=cfg.norm_position == "pre", embed_norm=cfg.embed_norm, tied=cfg.tie_embeddings,
        pos_table=cfg.max_seq_len if cfg.positions == "learned" else 0, type_vocab=cfg.type_vocab_size,
        head_transform=cfg.head_transform, head_bias=cfg.head_transform,  # nn.Linear(bias=cfg.head_transform)
        causal=cfg.causal, n_experts=cfg.n_experts,  # the router is nn.Linear(d_model, n_experts, bias=False)
        experts_per_token=cfg.experts_per_token if cfg.moe else 1)


# ---- Hugging Face config.json ------------------------------------------------------------------------

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


def _head_dim(d: int, heads: int, explicit: int | None, where: str, keys: tuple[str, str]) -> int:
    """head_dim as given, else d_model / heads, which must then divide exactly."""
    if explicit is not None:
        return explicit
    if d % heads:
        raise LmlabError(f"{where}: {keys[0]}={heads} does not divide {keys[1]}={d} "
                         "(each head gets an equal slice of the width)")
    return d // heads


def arch_from_hf(hf: dict[str, Any], where: str = "config.json", name: str | None = None) -> Arch:
    """The shape of a Hugging Face model from its config.json (model_type gpt2, llama, mistral, qwen2, mixtral
    or bert; the *ForCausalLM / BertForMaskedLM variant, i.e. with its LM head and without BERT's pooler)."""
    if not isinstance(hf, dict):
        raise LmlabError(f"{where}: config.json must be a JSON object, got {type(hf).__name__}")
    mtype = hf.get("model_type")
    if mtype is None:
        raise LmlabError(f"{where}: config.json lacks required key 'model_type' (expected one of "
                         f"{', '.join(HF_FAMILIES)})")
    if mtype not in HF_FAMILIES:
        raise LmlabError(f"{where}: model_type {mtype!r} is not supported; expected one of {', '.join(HF_FAMILIES)}")
    name = name or where
    if mtype == "gpt2":
        return _gpt2(hf, where, name)
    if mtype == "bert":
        return _bert(hf, where, name)
    return _llama_family(hf, mtype, where, name)


def _gpt2(hf: dict[str, Any], where: str, name: str) -> Arch:
    """GPT-2: biases everywhere, LayerNorm, learned positions, GELU MLP of n_inner (default 4d), tied head."""
    d, heads, ctx = _need(hf, "n_embd", where), _need(hf, "n_head", where), _need(hf, "n_positions", where)
    return Arch(name=name, family="gpt2", vocab=_need(hf, "vocab_size", where), d_model=d,
                n_layers=_need(hf, "n_layer", where), n_heads=heads, kv_heads=heads,
                head_dim=_head_dim(d, heads, None, where, ("n_head", "n_embd")),
                d_ff=_opt(hf, "n_inner", 4 * d, where), max_context=ctx, mlp="gelu",
                qkv_bias=True, out_bias=True, mlp_bias=True, norm="layernorm", norm_bias=True,
                tied=bool(hf.get("tie_word_embeddings", True)), pos_table=ctx)


def _bert(hf: dict[str, Any], where: str, name: str) -> Arch:
    """BERT as BertForMaskedLM: post-norm encoder, embedding LayerNorm, token types, MLM head, no pooler."""
    d, heads = _need(hf, "hidden_size", where), _need(hf, "num_attention_heads", where)
    ctx = _need(hf, "max_position_embeddings", where)
    type_vocab = hf.get("type_vocab_size", 2)
    if isinstance(type_vocab, bool) or not isinstance(type_vocab, int) or type_vocab < 0:
        raise LmlabError(f"{where}: type_vocab_size must be a non-negative integer, got {type_vocab!r}")
    return Arch(name=name, family="bert", vocab=_need(hf, "vocab_size", where), d_model=d,
                n_layers=_need(hf, "num_hidden_layers", where), n_heads=heads, kv_heads=heads,
                head_dim=_head_dim(d, heads, None, where, ("num_attention_heads", "hidden_size")),
                d_ff=_need(hf, "intermediate_size", where), max_context=ctx, mlp="gelu",
                qkv_bias=True, out_bias=True, mlp_bias=True, norm="layernorm", norm_bias=True, final_norm=False,
                embed_norm=True, tied=bool(hf.get("tie_word_embeddings", True)), pos_table=ctx,
                type_vocab=type_vocab, head_transform=True, head_bias=True, causal=False)


def _llama_family(hf: dict[str, Any], mtype: str, where: str, name: str) -> Arch:
    """Llama, Mistral, Qwen2, Mixtral: RMSNorm, RoPE, SwiGLU, untied head unless tie_word_embeddings.

    Qwen2 has q/k/v biases (not on o_proj); Llama's attention_bias puts biases on q/k/v/o and mlp_bias on the
    MLP; Mixtral replaces the MLP by num_local_experts experts, num_experts_per_tok of them active, chosen by a
    bias-free router (d_model x n_experts).
    """
    d, heads = _need(hf, "hidden_size", where), _need(hf, "num_attention_heads", where)
    kv = _opt(hf, "num_key_value_heads", heads, where)
    if heads % kv:
        raise LmlabError(f"{where}: num_key_value_heads={kv} must divide num_attention_heads={heads}")
    head_dim = hf.get("head_dim")
    head_dim = _head_dim(d, heads, None if head_dim is None else _positive(head_dim, "head_dim", where), where,
                         ("num_attention_heads", "hidden_size"))
    n_experts, top_k = 1, 1
    if mtype == "mixtral":
        n_experts = _need(hf, "num_local_experts", where)
        top_k = _need(hf, "num_experts_per_tok", where)
        if top_k > n_experts:
            raise LmlabError(f"{where}: num_experts_per_tok={top_k} exceeds num_local_experts={n_experts}")
    attention_bias = bool(hf.get("attention_bias", False)) and mtype == "llama"
    return Arch(name=name, family=mtype, vocab=_need(hf, "vocab_size", where), d_model=d,
                n_layers=_need(hf, "num_hidden_layers", where), n_heads=heads, kv_heads=kv, head_dim=head_dim,
                d_ff=_need(hf, "intermediate_size", where), max_context=_need(hf, "max_position_embeddings", where),
                mlp="swiglu", qkv_bias=attention_bias or mtype == "qwen2", out_bias=attention_bias,
                mlp_bias=bool(hf.get("mlp_bias", False)) and mtype == "llama", norm="rmsnorm",
                tied=bool(hf.get("tie_word_embeddings", False)), n_experts=n_experts, experts_per_token=top_k)


# ---- presets -----------------------------------------------------------------------------------------
# Published configs, the size-relevant keys copied from each model's config.json on the Hugging Face Hub
# (repository named in the comment). They go through `arch_from_hf` like any downloaded config.

def _gpt2_cfg(d: int, layers: int, heads: int) -> dict[str, Any]:
    return {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": d, "n_layer": layers,
            "n_head": heads, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}


def _llama_cfg(d: int, layers: int, heads: int, kv: int, ff: int, vocab: int, ctx: int, theta: float,
               mtype: str = "llama", tied: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model_type": mtype, "hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "intermediate_size": ff, "vocab_size": vocab,
            "max_position_embeddings": ctx, "rope_theta": theta, "hidden_act": "silu",
            "tie_word_embeddings": tied, **extra}


_LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}

HF_PRESETS: dict[str, dict[str, Any]] = {
    # openai-community/gpt2, gpt2-medium, gpt2-large, gpt2-xl
    "gpt2": _gpt2_cfg(768, 12, 12),
    "gpt2-medium": _gpt2_cfg(1024, 24, 16),
    "gpt2-large": _gpt2_cfg(1280, 36, 20),
    "gpt2-xl": _gpt2_cfg(1600, 48, 25),
    # meta-llama/Llama-2-7b-hf, Llama-2-13b-hf, Llama-2-70b-hf
    "llama-2-7b": _llama_cfg(4096, 32, 32, 32, 11008, 32000, 4096, 10000.0, rms_norm_eps=1e-5),
    "llama-2-13b": _llama_cfg(5120, 40, 40, 40, 13824, 32000, 4096, 10000.0, rms_norm_eps=1e-5),
    "llama-2-70b": _llama_cfg(8192, 80, 64, 8, 28672, 32000, 4096, 10000.0, rms_norm_eps=1e-5),
    # meta-llama/Meta-Llama-3-8B, Meta-Llama-3-70B
    "llama-3-8b": _llama_cfg(4096, 32, 32, 8, 14336, 128256, 8192, 500000.0, rms_norm_eps=1e-5),
    "llama-3-70b": _llama_cfg(8192, 80, 64, 8, 28672, 128256, 8192, 500000.0, rms_norm_eps=1e-5),
    # meta-llama/Llama-3.1-8B, Llama-3.1-70B (same shapes as Llama 3; longer context through RoPE scaling)
    "llama-3.1-8b": _llama_cfg(4096, 32, 32, 8, 14336, 128256, 131072, 500000.0, rms_norm_eps=1e-5,
                               rope_scaling=_LLAMA31_ROPE),
    "llama-3.1-70b": _llama_cfg(8192, 80, 64, 8, 28672, 128256, 131072, 500000.0, rms_norm_eps=1e-5,
                                rope_scaling=_LLAMA31_ROPE),
    # mistralai/Mistral-7B-v0.1 (sliding window 4096 does not change the parameters)
    "mistral-7b": _llama_cfg(4096, 32, 32, 8, 14336, 32000, 32768, 10000.0, mtype="mistral", rms_norm_eps=1e-5,
                             sliding_window=4096),
    # mistralai/Mixtral-8x7B-v0.1
    "mixtral-8x7b": _llama_cfg(4096, 32, 32, 8, 14336, 32000, 32768, 1e6, mtype="mixtral", rms_norm_eps=1e-5,
                               num_local_experts=8, num_experts_per_tok=2),
    # Qwen/Qwen2.5-0.5B (tied head), Qwen/Qwen2.5-7B
    "qwen2.5-0.5b": _llama_cfg(896, 24, 14, 2, 4864, 151936, 32768, 1e6, mtype="qwen2", tied=True,
                               rms_norm_eps=1e-6),
    "qwen2.5-7b": _llama_cfg(3584, 28, 28, 4, 18944, 152064, 131072, 1e6, mtype="qwen2", rms_norm_eps=1e-6),
    # google-bert/bert-base-uncased, google-bert/bert-large-uncased (sized as BertForMaskedLM)
    "bert-base-uncased": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512,
                          "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12},
    "bert-large-uncased": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 1024, "num_hidden_layers": 24,
                           "num_attention_heads": 16, "intermediate_size": 4096, "max_position_embeddings": 512,
                           "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12},
}


def preset_names() -> list[str]:
    """lmlab's own presets first (they win a name clash), then the published ones."""
    return list(PRESETS) + [n for n in HF_PRESETS if n not in PRESETS]


def load_arch(model: str) -> tuple[Arch, str]:
    """(shape, where it came from) for a preset name, a config.json, or a directory holding one."""
    if model in PRESETS:
        return arch_from_model_config(preset(model), model), "lmlab preset"
    if model in HF_PRESETS:
        return arch_from_hf(HF_PRESETS[model], f"preset {model}", model), "published config (Hugging Face)"
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise LmlabError(f"{model}: no config.json in this directory (expected a Hugging Face model directory "
                             "or an lmlab checkpoint)")
    if not path.is_file():
        close = difflib.get_close_matches(model, preset_names(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"presets: {', '.join(preset_names())}"
        raise LmlabError(f"unknown model {model!r}: neither a preset nor an existing file or directory; {hint}")
    return arch_from_file(path)


def arch_from_recipe(path: Path) -> tuple[Arch, str]:
    """An lmlab YAML recipe: its `model:` section (top level, as for `lmlab pretrain`, or under `pretrain:`,
    as in the quickstart recipe). Training takes vocab_size from the tokenizer, so a recipe that does not
    set it is sized at ModelConfig's default, and the source says so."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise LmlabError(f"{path}: not a readable YAML recipe ({e})") from None
    section = data.get("model") if isinstance(data, dict) else None
    if section is None and isinstance(data, dict) and isinstance(data.get("pretrain"), dict):
        section = data["pretrain"].get("model")
    if not isinstance(section, dict):
        raise LmlabError(f"{path}: an lmlab recipe needs a 'model:' section (or 'pretrain: model:') to size")
    note = ""
    tok = data.get("tokenizer") if isinstance(data.get("tokenizer"), dict) else {}
    if "vocab_size" not in section and isinstance(tok.get("vocab_size"), int):
        section, note = {**section, "vocab_size": tok["vocab_size"]}, "; vocab_size from its tokenizer section"
    elif "vocab_size" not in section:
        note = f"; vocab_size {ModelConfig.vocab_size} by default, training takes the tokenizer's"
    try:
        cfg = ModelConfig.from_dict(section)
    except (TypeError, ValueError, LmlabError) as e:
        raise LmlabError(f"{path}: invalid model section ({e})") from None
    return arch_from_model_config(cfg, str(path)), f"lmlab recipe{note}"


def arch_from_file(path: Path) -> tuple[Arch, str]:
    """A config.json: Hugging Face's (it has "model_type") or an lmlab checkpoint's ModelConfig dict; or an
    lmlab YAML recipe."""
    if path.suffix in (".yaml", ".yml"):
        return arch_from_recipe(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmlabError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise LmlabError(f"{path}: config.json must be a JSON object, got {type(data).__name__}")
    if "model_type" in data:
        return arch_from_hf(data, str(path), str(path.parent if path.name == "config.json" else path)), \
            "Hugging Face config.json"
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise LmlabError(f"{path}: neither a Hugging Face config.json (no 'model_type' key) nor an lmlab "
                         f"ModelConfig (unknown keys: {', '.join(unknown[:5])})")
    try:
        cfg = ModelConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise LmlabError(f"{path}: invalid lmlab model config ({e})") from None
    except LmlabError as e:
        raise LmlabError(f"{path}: {e}") from None
    return arch_from_model_config(cfg, str(path.parent)), "lmlab checkpoint"


# ---- parameters --------------------------------------------------------------------------------------

def norm_params(a: Arch) -> int:
    """One norm: LayerNorm has a weight and (when biased) a bias of d_model each, RMSNorm a weight only."""
    return a.d_model * (2 if a.norm == "layernorm" and a.norm_bias else 1)


def attention_params(a: Arch) -> int:
    """One layer's attention: fused q/k/v (GQA: fewer k/v heads) and the output projection, with biases."""
    q, kv = a.n_heads * a.head_dim, a.kv_heads * a.head_dim
    return a.d_model * (q + 2 * kv) + q * a.d_model + (q + 2 * kv) * a.qkv_bias + a.d_model * a.out_bias


def expert_params(a: Arch) -> int:
    """One MLP (one expert of a mixture): up (+gate for SwiGLU) and down, with biases."""
    return a.d_model * a.up_width + a.d_ff * a.d_model + (a.up_width + a.d_model) * a.mlp_bias


def router_params(a: Arch) -> int:
    """One layer's router: a d_model x n_experts matrix scoring the experts (dense models have none)."""
    return (a.d_model * a.n_experts + a.n_experts * a.router_bias) if a.moe else 0


def param_counts(a: Arch) -> dict[str, int]:
    """Parameters by part; the parts sum to `total`. A tied head is the embedding matrix, counted once."""
    d, L = a.d_model, a.n_layers
    n_norms = 2 * L + a.final_norm + a.embed_norm + a.head_transform
    out = {
        "embedding": (a.vocab + a.pos_table + a.type_vocab) * d,
        "attention": L * attention_params(a),
        "mlp": L * a.n_experts * expert_params(a),
        "router": L * router_params(a),
        "norms": n_norms * norm_params(a),
        "head": (0 if a.tied else a.vocab * d) + a.vocab * a.head_bias + (d * d + d) * a.head_transform,
    }
    out = {"total": sum(out.values()), **out}
    inactive = L * (a.n_experts - a.experts_per_token) * expert_params(a)
    out["active_per_token"] = out["total"] - inactive
    out["non_embedding"] = out["total"] - out["embedding"] - (0 if a.tied else a.vocab * d)
    if a.moe:
        out["per_expert_per_layer"] = expert_params(a)
        out["per_expert"] = L * expert_params(a)
    return out


def matrices(a: Arch) -> list[tuple[str, int, int, int]]:
    """Every 2-D weight as (name, rows, columns, how many): what quantization scales are counted over.
    Rows are output features (nn.Linear's layout), so a per-row scale is a per-output-channel scale."""
    d, L, q, kv = a.d_model, a.n_layers, a.n_heads * a.head_dim, a.kv_heads * a.head_dim
    out = [("token embedding", a.vocab, d, 1), ("position embedding", a.pos_table, d, 1),
           ("token-type embedding", a.type_vocab, d, 1), ("qkv", q + 2 * kv, d, L), ("attention out", d, q, L),
           ("mlp up", a.up_width, d, L * a.n_experts), ("mlp down", d, a.d_ff, L * a.n_experts),
           ("router", a.n_experts if a.moe else 0, d, L), ("head transform", d if a.head_transform else 0, d, 1),
           ("head", 0 if a.tied else a.vocab, d, 1)]
    return [m for m in out if m[1] and m[3]]


def matmul_params(a: Arch, active: bool = True) -> int:
    """Weights that take part in a matmul per token (lmlab.plan.flops' convention: attention, MLP, router, head
    (tied or not) and the head transform; embedding lookups, norms and biases excluded). With `active`, only
    the experts a token is routed to."""
    experts = a.experts_per_token if active else a.n_experts
    per_layer = attention_params(a) - _attention_biases(a) + experts * (a.d_model * a.up_width + a.d_ff * a.d_model)
    per_layer += a.d_model * a.n_experts if a.moe else 0
    return a.n_layers * per_layer + a.vocab * a.d_model + a.d_model * a.d_model * a.head_transform


def _attention_biases(a: Arch) -> int:
    return (a.n_heads + 2 * a.kv_heads) * a.head_dim * a.qkv_bias + a.d_model * a.out_bias


def rule_of_thumb_gb(params: float, bits: float) -> float:
    """Inference memory in GB (1e9 bytes): params in billions x bytes per weight x 1.2 (20% for KV cache,
    activations and buffers at a modest context). 8e9 params at 16 bits: 8 x 2 x 1.2 = 19.2 GB."""
    return params / 1e9 * bits / 8 * OVERHEAD


# ---- memory ------------------------------------------------------------------------------------------

def weight_bytes(a: Arch, precision: str) -> dict[str, float]:
    """Bytes to store the weights. fp32/bf16/fp16: every parameter at that width. fp8/int8/int4: the 2-D
    weights at that width and the 1-D ones (norms, biases) kept in 16 bits; int8 adds one 16-bit scale per
    output row, int4 one fp16 scale per group of INT4_GROUP (128) weights along each row; fp8's per-tensor
    scales are negligible and left out."""
    total = param_counts(a)["total"]
    if BITS[precision] >= 16:
        return {"weights": total * BITS[precision] / 8, "scales": 0.0}
    mats = matrices(a)
    in_matrices = sum(r * c * n for _, r, c, n in mats)
    if precision == "int8":
        scales = sum(r * n for _, r, _, n in mats) * 2
    elif precision == "int4":
        scales = sum(r * math.ceil(c / INT4_GROUP) * n for _, r, c, n in mats) * 2
    else:
        scales = 0
    return {"weights": in_matrices * BITS[precision] / 8 + (total - in_matrices) * 2 + scales,
            "scales": float(scales)}


def kv_precision(cfg: SizeConfig) -> str:
    """The KV cache's precision: as asked, else the weights', except that quantized weights keep a bf16 cache."""
    if cfg.kv_precision is not None:
        return cfg.kv_precision
    return "bf16" if cfg.precision in ("int8", "int4") else cfg.precision


def kv_bytes_per_token(a: Arch, precision: str) -> float:
    """Keys and values of one token in every layer: layers x kv_heads x head_dim x 2 x bytes (0 for encoders,
    which attend within one forward pass and keep no cache). Llama-3.1-8B in bf16: 32 x 8 x 128 x 2 x 2 =
    131,072 bytes."""
    return a.n_layers * a.kv_heads * a.head_dim * 2 * BITS[precision] / 8 if a.causal else 0.0


def compute_bytes(precision: str) -> int:
    """Bytes of an activation: fp32 models compute in fp32; everything else (16-bit, and quantized weights,
    which are dequantized into the matmuls) in 16 bits."""
    return 4 if precision == "fp32" else 2


def inference_activation_bytes(a: Arch, batch: int, context: int, precision: str) -> float:
    """Working memory of one forward pass over batch x context tokens (a prefill), without gradients: only
    one layer's tensors are alive at a time. Estimate, per token, in activation bytes: the residual stream
    and the norm's output (2 x d_model) plus the larger of the attention's tensors (fused q/k/v, q and k
    after RoPE, k and v repeated for grouped-query attention, the output and its re-laid-out copy; fused
    attention, so no context x context score matrix) and the MLP's (up projection, activation, and for
    SwiGLU the gated product; a mixture of experts runs one expert at a time on its share k/n_experts of
    the tokens, into an output accumulator). Plus fp32 logits, batch x vocab x 4, for the last position
    (for an encoder, every position)."""
    A, kv = a.n_heads * a.head_dim, a.kv_heads * a.head_dim
    rope, gqa = a.pos_table == 0, a.kv_heads != a.n_heads
    attention = (a.n_heads + 2 * a.kv_heads) * a.head_dim + (A + kv) * rope + 2 * A * gqa + 2 * A
    one_mlp = a.up_width + a.d_ff * (2 if a.mlp == "swiglu" else 1)
    mlp = a.d_model + (2 * a.d_model + one_mlp) * a.experts_per_token / a.n_experts if a.moe else one_mlp
    hidden = batch * context * (2 * a.d_model + max(attention, mlp)) * compute_bytes(precision)
    logits = batch * (1 if a.causal else context) * a.vocab * 4
    return float(hidden + logits)


def inference_memory(a: Arch, cfg: SizeConfig, context: int) -> dict[str, Any]:
    """Weights + KV cache + activations for serving `batch` sequences of `context` tokens."""
    params = param_counts(a)["total"]
    w = weight_bytes(a, cfg.precision)
    kvp = kv_precision(cfg)
    kv_tok = kv_bytes_per_token(a, kvp)
    kv = cfg.batch * context * kv_tok
    act = inference_activation_bytes(a, cfg.batch, context, cfg.precision)
    return {
        "rule_of_thumb_gb": rule_of_thumb_gb(params, BITS[cfg.precision]),
        "rule_of_thumb": f"GB = params in billions x {BITS[cfg.precision]}/8 bytes x {OVERHEAD}",
        "weights_bytes": w["weights"], "quant_scales_bytes": w["scales"],
        "kv_precision": kvp, "kv_cache_bytes_per_token": kv_tok, "kv_cache_bytes": kv,
        "activations_bytes": act,
        "total_bytes": w["weights"] + kv + act,
    }


def korthikanti_layer_bytes(a: Arch, batch: int, context: int) -> float:
    """Activations one layer stores for the backward pass, at 16 bits (Korthikanti et al. 2022, "Reducing
    Activation Recomputation in Large Transformer Models", no tensor/sequence parallelism):
    s*b*h*(34 + 5*a*s/h) bytes, s = context, b = batch, h = d_model, a = heads. 34sbh covers the layer's
    inputs, q/k/v, MLP intermediates and dropout masks of a GPT-style block; 5as^2b is the attention scores,
    softmax and its dropout mask, which fused (flash) attention does not store."""
    s, b, h = context, batch, a.d_model
    return s * b * h * (34 + 5 * a.n_heads * s / h)


def saved_elements_per_token(a: Arch) -> dict[str, int]:
    """Numbers one layer keeps per token for the backward pass when run as lmlab's `Transformer` in eager
    PyTorch with fused (flash) attention and no dropout, counted tensor by tensor; published models built
    the same way keep about the same. Multiply by batch x context x bytes per activation.

    norms: each keeps its input and its output (read by the next matmul); RMSNorm also its normalised
    input before the scale. attention: the q, k, v that fused attention reads (new tensors after RoPE or
    a grouped-query repeat; otherwise views that keep the whole fused q/k/v output alive), its output and
    the re-laid-out copy the output projection reads. mlp: GELU keeps the up projection and the GELU output;
    SwiGLU the fused gate/up output, silu(gate) and the product; a mixture of experts does that for each of
    the k experts a token visits, plus the gathered input and the expert's output that the gate scales.
    """
    A = a.n_heads * a.head_dim
    gqa, rope = a.kv_heads != a.n_heads, a.pos_table == 0
    norms = 2 * (2 + (a.norm == "rmsnorm")) * a.d_model
    views = not rope or not gqa  # some of q, k, v is a view of the fused projection
    attention = ((a.n_heads + 2 * a.kv_heads) * a.head_dim if views else 0) + A * rope + A * (rope or gqa) \
        + A * gqa + 2 * A
    one_mlp = a.up_width + (2 * a.d_ff if a.mlp == "swiglu" else a.d_ff)
    mlp = a.experts_per_token * (one_mlp + 2 * a.d_model) if a.moe else one_mlp
    return {"norms": norms, "attention": attention, "mlp": mlp, "total": norms + attention + mlp}


def eager_training_peak(a: Arch, cfg: SizeConfig, context: int, static: float) -> dict[str, float]:
    """Peak memory of one training step as PyTorch runs it: the persistent tensors (`static`: weights, master
    weights, optimizer states) plus the larger of the two moments the step peaks at.

    Start of the backward pass: every layer's saved activations (`saved_elements_per_token`; with activation
    checkpointing, each layer's input plus one layer recomputed), the final norm's, and the loss's fp32
    tensors over batch x context x vocab: logits, log-probabilities and their gradient (three copies, plus
    the 16-bit logits under 16-bit compute). End of the backward pass: every gradient, activations freed;
    with a tied head, the embedding's gradient arrives as a fresh vocab x d_model tensor (with one more as
    PyTorch's CPU kernel workspace) before it is added to the head's. Gradients are freed after the
    optimizer step (zero_grad(set_to_none=True)); a fused AdamW adds nothing. In a mixture of experts, an
    expert that no token chose in a step gets no gradient, so the estimate (every expert busy) is then high.
    """
    prec = training_precision(cfg.precision)
    tokens, ab = cfg.batch * context, compute_bytes(prec)
    per_layer = saved_elements_per_token(a)["total"] * tokens * ab
    layers = a.n_layers * tokens * a.d_model * ab + per_layer if cfg.activation_checkpointing else \
        a.n_layers * per_layer
    final = (2 + (a.norm == "rmsnorm")) * tokens * a.d_model * ab * a.final_norm
    logits = tokens * a.vocab * (3 * 4 + (ab if ab != 4 else 0))
    grads = (param_counts(a)["total"] + 2 * a.vocab * a.d_model * a.tied) * BITS[prec] / 8
    start = layers + final + logits
    return {"activations_eager_bytes": float(layers + final), "loss_tensors_bytes": float(logits),
            "peak_bytes": static + max(start, grads), "peak_at": "backward start" if start >= grads else
            "backward end (all gradients)"}


def training_precision(precision: str) -> str:
    """Training keeps fp32, bf16 or fp16 weights; fp8/int8/int4 are serving formats, so training is sized in
    bf16 mixed precision for them."""
    return precision if precision in ("fp32", "bf16", "fp16") else "bf16"


def optimizer_bytes_per_param(optimizer: str) -> float:
    """AdamW: m and v in fp32 (8); SGD: an fp32 momentum (4); 8-bit Adam: m and v in one byte each plus an
    fp32 absmax per block of 2048 values of each."""
    return {"adamw": 8.0, "sgd": 4.0, "adam8bit": 2 * (1 + 4 / ADAM8BIT_BLOCK)}[optimizer]


def training_memory(a: Arch, cfg: SizeConfig, context: int, inference_total: float) -> dict[str, Any]:
    """Weights + gradients + fp32 master weights + optimizer states + activations for one training step of
    batch x context tokens (one accelerator, no sharding)."""
    prec = training_precision(cfg.precision)
    wb = BITS[prec] / 8
    params = param_counts(a)["total"]
    master = 4.0 if cfg.mixed_precision and wb == 2 else 0.0
    per_layer = korthikanti_layer_bytes(a, cfg.batch, context) * compute_bytes(prec) / 2
    kept = 2 * context * cfg.batch * a.d_model * compute_bytes(prec) / 2  # a layer's input: 2sbh bytes at 16 bits
    activations = a.n_layers * kept + per_layer if cfg.activation_checkpointing else a.n_layers * per_layer
    scores = 5 * a.n_heads * context ** 2 * cfg.batch * compute_bytes(prec) / 2  # the 5as/h term, unless fused
    logits = cfg.batch * context * a.vocab * 4.0
    parts = {"weights_bytes": params * wb, "gradients_bytes": params * wb, "master_weights_bytes": params * master,
             "optimizer_states_bytes": params * optimizer_bytes_per_param(cfg.optimizer),
             "activations_bytes": float(activations), "logits_bytes": logits}
    total = sum(parts.values())
    static = parts["weights_bytes"] + parts["master_weights_bytes"] + parts["optimizer_states_bytes"]
    return {
        "precision": prec, **parts, **eager_training_peak(a, cfg, context, static),
        "activations_per_layer_bytes": per_layer,
        "attention_scores_per_layer_bytes": scores,
        "activations_flash_bytes": float(activations - (1 if cfg.activation_checkpointing else a.n_layers) * scores),
        "static_bytes_per_param": 2 * wb + master + optimizer_bytes_per_param(cfg.optimizer),
        "total_bytes": total,
        "ratio_to_inference": total / inference_total,
        "rule": "training needs 3-4x inference memory",
        "rule_note": ("a rule for short contexts and small batches with lean optimizer states; mixed-precision "
                      "AdamW alone is 16 bytes/param (8x bf16 weights), and at long context or large batch the "
                      "activations dominate, so the ratio can be far higher (activation checkpointing, 8-bit "
                      "optimizers, sharding and flash attention bring it down)"),
    }


# ---- compute -----------------------------------------------------------------------------------------

def forward_flops_per_token(a: Arch, context: int) -> float:
    """2 x active matmul weights + 4 x layers x context x attention width (scores and weighted sum over the
    full context, no discount for the causal mask): `lmlab.plan.flops`' convention, where attention width is
    d_model; here n_heads x head_dim, which is the same unless head_dim is set independently."""
    return 2 * matmul_params(a, active=True) + 4 * a.n_layers * context * a.n_heads * a.head_dim


def compute(a: Arch, cfg: SizeConfig, context: int) -> dict[str, Any]:
    """FLOPs per token, for a training run, and its time on one accelerator at peak_tflops x mfu."""
    counts = param_counts(a)
    fwd = forward_flops_per_token(a, context)
    train_tok = 3 * fwd  # backward costs twice the forward; recomputation (checkpointing) is not model FLOPs
    chinchilla = CHINCHILLA_TOKENS_PER_PARAM * counts["total"]
    tokens = float(cfg.train_tokens) if cfg.train_tokens is not None else float(chinchilla)
    total = train_tok * tokens
    return {
        "forward_flops_per_token": fwd,
        "training_flops_per_token": train_tok,
        "matmul_params_active": matmul_params(a, active=True),
        "chinchilla_tokens": chinchilla,
        "train_tokens": tokens,
        "train_tokens_source": "given" if cfg.train_tokens is not None else "Chinchilla-optimal (20 x params)",
        "training_flops": total,
        "six_n_d_flops": 6 * counts["active_per_token"] * tokens,
        "time_s": total / (cfg.peak_tflops * 1e12 * cfg.mfu),
        "time_note": "on one accelerator; divide by the number of accelerators",
    }


# ---- the verb ----------------------------------------------------------------------------------------

def size(cfg: SizeConfig) -> dict[str, Any]:
    """Everything `lmlab size` reports, as a JSON-able dict (bytes as numbers; GB = 1e9 bytes)."""
    a, source = load_arch(cfg.model)
    context = cfg.context if cfg.context is not None else a.max_context
    if context > a.max_context:
        raise LmlabError(f"context={context} exceeds the model's maximum context of {a.max_context} tokens")
    counts = param_counts(a)
    inference = inference_memory(a, cfg, context)
    moe = None
    if a.moe:
        moe = {"n_experts": a.n_experts, "experts_per_token": a.experts_per_token,
               "per_expert": counts["per_expert"], "total_params": counts["total"],
               "active_params": counts["active_per_token"],
               "note": "memory holds every expert (total params); compute runs only the routed ones (active)"}
    return {
        "model": {"name": a.name, "source": source, "family": a.family, "vocab": a.vocab, "d_model": a.d_model,
                  "n_layers": a.n_layers, "n_heads": a.n_heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim,
                  "d_ff": a.d_ff, "mlp": a.mlp, "norm": a.norm, "tied_embeddings": a.tied,
                  "max_context": a.max_context, "causal": a.causal},
        "settings": {**{k: v for k, v in dataclasses.asdict(cfg).items() if k != "model"}, "context": context},
        "params": counts,
        "inference": inference,
        "training": training_memory(a, cfg, context, inference["total_bytes"]),
        "compute": compute(a, cfg, context),
        "moe": moe,
    }


def _count(n: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def _bytes(n: float) -> str:
    for div, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def _duration(s: float) -> str:
    for div, unit in ((365 * 86400, "years"), (86400, "days"), (3600, "hours"), (60, "minutes")):
        if s >= div:
            return f"{s / div:.1f} {unit}"
    return f"{s:.1f} s"


def _rows(title: str, rows: list[tuple[str, str, str]]) -> list[str]:
    width = max(len(r[0]) for r in rows)
    return [title] + [f"  {k.ljust(width)}  {v.rjust(12)}  {note}".rstrip() for k, v, note in rows] + [""]


def format_table(result: dict[str, Any]) -> str:
    """The report as plain text: one section per question (how big, how much memory to serve / to train,
    how much compute), each figure with how it was obtained."""
    m, s, p = result["model"], result["settings"], result["params"]
    inf, tr, c = result["inference"], result["training"], result["compute"]
    heads = f"{m['n_heads']} heads" + (f" ({m['kv_heads']} kv)" if m["kv_heads"] != m["n_heads"] else "")
    lines = [f"{m['name']} ({m['source']}, {m['family']}): {m['n_layers']} layers, d_model {m['d_model']}, {heads},"
             f" head_dim {m['head_dim']}, d_ff {m['d_ff']} {m['mlp']}, vocab {m['vocab']}, max context "
             f"{m['max_context']}", "(GB = 1e9 bytes; a FLOP is a multiply or an add)", ""]
    rows = [("total", _count(p["total"]), f"{p['total']:,}")]
    if result["moe"]:
        rows.append(("active per token", _count(p["active_per_token"]), f"{p['active_per_token']:,}"))
    rows += [(k, _count(p[k]), f"{p[k] / p['total']:.1%}") for k in ("embedding", "attention", "mlp", "router",
                                                                      "norms", "head") if p[k]]
    if not p["head"] and m["tied_embeddings"]:
        rows.append(("head", "tied", "shares the token embedding"))
    lines += _rows("parameters", rows)
    if result["moe"]:
        moe = result["moe"]
        lines += _rows("mixture of experts", [
            ("experts", f"{moe['experts_per_token']} of {moe['n_experts']}", "routed per token"),
            ("per expert", _count(moe["per_expert"]), "all layers"),
            ("memory from", _count(moe["total_params"]), "total params: every expert is resident"),
            ("compute from", _count(moe["active_params"]), "active params: only routed experts run")])
    kv_note = (f"{inf['kv_cache_bytes_per_token']:,.0f} bytes/token ({inf['kv_precision']})" if m["causal"]
               else "encoder: no KV cache")
    lines += _rows(f"inference  ({s['precision']} weights, batch {s['batch']}, context {s['context']})", [
        ("rule of thumb", _bytes(inf["rule_of_thumb_gb"] * GB), inf["rule_of_thumb"]),
        ("weights", _bytes(inf["weights_bytes"]),
         f"incl. {_bytes(inf['quant_scales_bytes'])} of scales" if inf["quant_scales_bytes"] else ""),
        ("kv cache", _bytes(inf["kv_cache_bytes"]), kv_note),
        ("activations", _bytes(inf["activations_bytes"]), "one forward pass, incl. logits"),
        ("total", _bytes(inf["total_bytes"]), "")])
    mp = " mixed precision" if tr["master_weights_bytes"] else "" if tr["precision"] == "fp32" else ", no fp32 master"
    lines += _rows(f"training  ({tr['precision']}{mp}, {s['optimizer']}, batch {s['batch']}, context "
                   f"{s['context']}{', activation checkpointing' if s['activation_checkpointing'] else ''})", [
        ("weights", _bytes(tr["weights_bytes"]), ""),
        ("gradients", _bytes(tr["gradients_bytes"]), ""),
        ("master weights", _bytes(tr["master_weights_bytes"]), "fp32 copy" if tr["master_weights_bytes"] else ""),
        ("optimizer states", _bytes(tr["optimizer_states_bytes"]), s["optimizer"]),
        ("activations", _bytes(tr["activations_bytes"]),
         f"Korthikanti et al. 2022, sbh(34 + 5as/h) per layer; {_bytes(tr['activations_flash_bytes'])} with "
         "flash attention"),
        ("logits", _bytes(tr["logits_bytes"]), "fp32, every position"),
        ("total", _bytes(tr["total_bytes"]), f"{tr['static_bytes_per_param']:.4g} bytes/param before activations"),
        ("peak (eager)", _bytes(tr["peak_bytes"]), f"as PyTorch runs a step: grads and activations never all "
         f"coexist; peaks at {tr['peak_at']}"),
        ("training/inference", f"{tr['ratio_to_inference']:.1f}x", f"rule of thumb: {tr['rule']}")])
    lines += textwrap.wrap(f"({tr['rule_note']})", 116, initial_indent="  ", subsequent_indent="   ") + [""]
    lines += _rows("compute", [
        ("forward / token", f"{c['forward_flops_per_token']:.3g}", "FLOPs: 2 x active matmul params + attention"),
        ("training / token", f"{c['training_flops_per_token']:.3g}", "FLOPs: 3 x forward"),
        ("training tokens", _count(c["train_tokens"]), c["train_tokens_source"]),
        ("training FLOPs", f"{c['training_flops']:.3g}", f"6ND = {c['six_n_d_flops']:.3g}"),
        ("time", _duration(c["time_s"]),
         f"at {s['peak_tflops']:g} TFLOP/s x {s['mfu']:g} MFU, {c['time_note']}")])
    return "\n".join(lines).rstrip() + "\n"


def run_size(cfg: SizeConfig) -> dict[str, Any]:
    """`lmlab size`: print the table, return the numbers (the CLI prints them with --json)."""
    result = size(cfg)
    print(format_table(result), end="")
    return {**result, "_printed": True}
