"""Hugging Face checkpoints in and out: GPT-2, the Llama family (Llama, Mistral, Qwen2) and BERT.

Only `config.json` and `safetensors` files are read or written, so transformers
is never needed at run time and no pickle is ever loaded. Config keys are read
in `lmlab.model.hf_config` (torch-free, shared with `lmlab size`); here each
family is a table of weight names (HF pattern -> lmlab pattern, with the few
tensors that need reshaping: GPT-2's transposed Conv1D weights, and Llama's and
BERT's separate q/k/v (and gate/up) matrices, which lmlab keeps fused in one
matrix each) and its config keys for export.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmlab.errors import LmlabError
from lmlab.io import confined
from lmlab.model.config import ModelConfig
from lmlab.model.hf_config import SUPPORTED, config_from_hf

PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt", "tf_model.h5")


# ---- reading a directory ---------------------------------------------------------------------------

def read_config(path: Path) -> dict[str, Any]:
    f = path / "config.json"
    if not f.is_file():
        raise LmlabError(f"{path}: no config.json (expected a Hugging Face model directory)")
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmlabError(f"{f} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise LmlabError(f"{f} is not a JSON object")
    return cfg


def shard_files(path: Path, index: Path) -> list[Path]:
    """The safetensors files a sharded checkpoint's index names, each confined to the model directory."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, TypeError, KeyError) as e:  # bad JSON or UTF-8; not an object; no weight_map
        raise LmlabError(f"{index} is not a safetensors index (a JSON object with a 'weight_map'): "
                         f"{type(e).__name__} {e}") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise LmlabError(f"{index}: 'weight_map' must map tensor names to shard files")
    names = sorted({str(v) if not isinstance(v, str) else v for v in weight_map.values()})
    return [confined(path, name, str(index)) for name in names]


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of the shards its index lists; pickle files are refused."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = shard_files(path, index)
    elif (path / "model.safetensors").is_file():
        shards = [confined(path, "model.safetensors", str(path))]
    else:
        pickles = [n for n in PICKLE_FILES if (path / n).is_file()]
        if pickles:
            raise LmlabError(
                f"{path}: only {pickles[0]} is present, a pickle file, and unpickling can run arbitrary code, "
                f"so lmlab refuses it. Convert it to safetensors where you trust it (transformers: "
                f"model.save_pretrained(dir, safe_serialization=True)) or download the repository's "
                f"model.safetensors.")
        raise LmlabError(f"{path}: no model.safetensors (or model.safetensors.index.json) found")
    weights: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            weights.update(load_file(str(shard)))
        except (SafetensorError, OSError) as e:
            raise LmlabError(f"{shard}: unreadable safetensors file ({e})") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def _strip(weights: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Drop a wrapper's prefix ('transformer.', 'model.', 'bert.') so base and head models read alike."""
    out = {}
    for k, v in weights.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


# ---- config export -----------------------------------------------------------------------------------

def family(cfg: ModelConfig) -> str:
    """Which Hugging Face family an lmlab config exports as; an error if none fits."""
    if cfg.moe:
        raise LmlabError("mixture-of-experts models cannot be exported to Hugging Face yet (no Mixtral mapping)")
    if cfg.parametrization == "mup" and cfg.width_mult != 1.0:
        raise LmlabError(f"a muP model at width_mult={cfg.width_mult:g} scales its attention and logits in ways "
                         "Hugging Face configs cannot express; export is only possible at the base width")
    if (cfg.norm_position == "post" and cfg.embed_norm and cfg.positions == "learned" and cfg.norm == "layernorm"
            and cfg.mlp == "gelu" and cfg.head_transform and cfg.tie_embeddings and cfg.qkv_bias is None):
        return "bert"
    pre = cfg.norm_position == "pre" and not cfg.embed_norm and not cfg.type_vocab_size and not cfg.head_transform
    if pre and cfg.positions == "learned" and cfg.norm == "layernorm" and cfg.mlp in ("gelu", "gelu_tanh") \
            and cfg.kv_heads == cfg.n_heads and cfg.qkv_bias is None:
        return "gpt2"
    if pre and cfg.positions == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and not cfg.bias:
        return "qwen2" if cfg.qkv_bias else "llama"
    raise LmlabError("this model has no Hugging Face equivalent lmlab can export: supported are GPT-2 "
                     "(layernorm, learned positions, gelu), Llama/Qwen2 (rmsnorm, rope, swiglu) and BERT "
                     "(post-norm, embedding norm, MLM head)")


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    fam = family(cfg)
    base = {"architectures": [SUPPORTED[fam]], "model_type": fam, "vocab_size": cfg.vocab_size,
            "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": "float32"}
    if fam == "gpt2":
        return {**base, "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
                "n_inner": cfg.ff_dim, "n_positions": cfg.max_seq_len, "layer_norm_epsilon": cfg.norm_eps,
                "activation_function": "gelu" if cfg.mlp == "gelu" else "gelu_new", "resid_pdrop": 0.0,
                "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": None, "eos_token_id": None}
    if fam == "bert":
        return {**base, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
                "num_attention_heads": cfg.n_heads, "intermediate_size": cfg.ff_dim,
                "max_position_embeddings": cfg.max_seq_len, "layer_norm_eps": cfg.norm_eps,
                "type_vocab_size": max(cfg.type_vocab_size, 1), "hidden_act": "gelu",
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "pad_token_id": 0}
    return {**base, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads,
            "intermediate_size": cfg.ff_dim, "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False,
            "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


# ---- weight translation ------------------------------------------------------------------------------
# Per-layer names: HF suffix -> lmlab suffix, for tensors that map one to one.

_GPT2_LAYER = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
               "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}
_BERT_LAYER = {"attention.output.dense": "attn.proj", "attention.output.LayerNorm": "norm1",
               "intermediate.dense": "mlp.up", "output.dense": "mlp.down", "output.LayerNorm": "norm2"}
_LLAMA_LAYER = {"self_attn.o_proj": "attn.proj", "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
                "mlp.down_proj": "mlp.down"}
_BERT_TOP = {"embeddings.word_embeddings": "tok_emb", "embeddings.position_embeddings": "pos_emb",
             "embeddings.token_type_embeddings": "type_emb", "embeddings.LayerNorm": "emb_norm",
             "cls.predictions.transform.dense": "head_dense", "cls.predictions.transform.LayerNorm": "head_norm"}
_IGNORED = re.compile(r"(^|\.)(pooler\.|position_ids$|attn\.bias$|attn\.masked_bias$|rotary_emb\.)")


def weights_from_hf(mtype: str, cfg: ModelConfig, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF tensors -> lmlab state dict (strict: an unused or missing tensor is an error)."""
    hf = {k.replace(".gamma", ".weight").replace(".beta", ".bias"): v for k, v in hf.items()}  # old BERT names
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise LmlabError(f"the checkpoint lacks tensor {name!r} that a {mtype} model with this config has")
        used.add(name)
        return hf[name]

    if mtype == "gpt2":
        hf = _strip(hf, ("transformer.",))
        out["tok_emb.weight"], out["pos_emb.weight"] = take("wte.weight"), take("wpe.weight")
        out["norm_f.weight"], out["norm_f.bias"] = take("ln_f.weight"), take("ln_f.bias")
        for i in range(cfg.n_layers):
            for theirs, mine in _GPT2_LAYER.items():
                w = take(f"h.{i}.{theirs}.weight")
                out[f"blocks.{i}.{mine}.weight"] = w.t().contiguous() if w.dim() == 2 else w  # Conv1D is (in, out)
                out[f"blocks.{i}.{mine}.bias"] = take(f"h.{i}.{theirs}.bias")
        if not cfg.tie_embeddings:
            out["head.weight"] = take("lm_head.weight")
        elif "lm_head.weight" in hf:
            used.add("lm_head.weight")
    elif mtype == "bert":
        hf = _strip(hf, ("bert.",))
        for theirs, mine in _BERT_TOP.items():
            if mine.startswith("head_") and not cfg.head_transform:
                continue
            out[f"{mine}.weight"] = take(f"{theirs}.weight")
            if not mine.endswith("_emb"):
                out[f"{mine}.bias"] = take(f"{theirs}.bias")
        for i in range(cfg.n_layers):
            p = f"encoder.layer.{i}."
            for part in ("weight", "bias"):
                out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(
                    [take(f"{p}attention.self.{n}.{part}") for n in ("query", "key", "value")])
                for theirs, mine in _BERT_LAYER.items():
                    out[f"blocks.{i}.{mine}.{part}"] = take(f"{p}{theirs}.{part}")
        if cfg.head_transform:
            used.update(k for k in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias") if k in hf)
            bias = "cls.predictions.bias" if "cls.predictions.bias" in hf else "cls.predictions.decoder.bias"
            out["head.bias"] = take(bias)  # the decoder's weight is tied to the word embeddings
    else:
        hf = _strip(hf, ("model.",))
        out["tok_emb.weight"], out["norm_f.weight"] = take("embed_tokens.weight"), take("norm.weight")
        for i in range(cfg.n_layers):
            p = f"layers.{i}."
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([take(f"{p}self_attn.{n}_proj.weight") for n in "qkv"])
            if cfg.qkv_bias:
                out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([take(f"{p}self_attn.{n}_proj.bias") for n in "qkv"])
            out[f"blocks.{i}.mlp.up.weight"] = torch.cat([take(f"{p}mlp.gate_proj.weight"),
                                                         take(f"{p}mlp.up_proj.weight")])
            for theirs, mine in _LLAMA_LAYER.items():
                out[f"blocks.{i}.{mine}.weight"] = take(f"{p}{theirs}.weight")
        if not cfg.tie_embeddings:
            out["head.weight"] = take("lm_head.weight")
        elif "lm_head.weight" in hf:
            used.add("lm_head.weight")
    unused = sorted(k for k in hf if k not in used and not _IGNORED.search(k))
    if unused:
        raise LmlabError(f"the checkpoint has tensors this {mtype} config does not use: {', '.join(unused[:5])}"
                         + (" ..." if len(unused) > 5 else ""))
    return out


def weights_to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lmlab state dict -> HF tensor names of the family `family(cfg)` (absent biases written as zeros)."""
    fam = family(cfg)
    out: dict[str, torch.Tensor] = {}
    if fam == "gpt2":
        pre = "transformer."
        out[pre + "wte.weight"], out[pre + "wpe.weight"] = state["tok_emb.weight"], state["pos_emb.weight"]
        out[pre + "ln_f.weight"], out[pre + "ln_f.bias"] = state["norm_f.weight"], state.get("norm_f.bias",
                                                                                       torch.zeros(cfg.d_model))
        for i in range(cfg.n_layers):
            for theirs, mine in _GPT2_LAYER.items():
                w = state[f"blocks.{i}.{mine}.weight"]
                out[f"{pre}h.{i}.{theirs}.weight"] = w.t().contiguous() if w.dim() == 2 else w
                out[f"{pre}h.{i}.{theirs}.bias"] = state.get(f"blocks.{i}.{mine}.bias",
                                                             torch.zeros(w.shape[0] if w.dim() == 2 else w.numel()))
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = state["head.weight"]
    elif fam == "bert":
        for theirs, mine in _BERT_TOP.items():
            pre = "" if theirs.startswith("cls.") else "bert."
            for part in ("weight", "bias"):
                if f"{mine}.{part}" in state:
                    out[f"{pre}{theirs}.{part}"] = state[f"{mine}.{part}"]
        if "type_emb.weight" not in state:
            out["bert.embeddings.token_type_embeddings.weight"] = torch.zeros(1, cfg.d_model)
        for i in range(cfg.n_layers):
            p = f"bert.encoder.layer.{i}."
            for part in ("weight", "bias"):
                for n, t in zip(("query", "key", "value"), state[f"blocks.{i}.attn.qkv.{part}"].chunk(3)):
                    out[f"{p}attention.self.{n}.{part}"] = t.contiguous()
                for theirs, mine in _BERT_LAYER.items():
                    out[f"{p}{theirs}.{part}"] = state[f"blocks.{i}.{mine}.{part}"]
        out["cls.predictions.bias"] = state["head.bias"]
    else:
        hd, nq, nkv = cfg.head_dim, cfg.n_heads, cfg.kv_heads
        out["model.embed_tokens.weight"], out["model.norm.weight"] = state["tok_emb.weight"], state["norm_f.weight"]
        for i in range(cfg.n_layers):
            p, b = f"model.layers.{i}.", f"blocks.{i}."
            for part in ("weight", "bias"):
                if f"{b}attn.qkv.{part}" in state:
                    q, k, v = state[f"{b}attn.qkv.{part}"].split([nq * hd, nkv * hd, nkv * hd])
                    for n, t in zip("qkv", (q, k, v)):
                        out[f"{p}self_attn.{n}_proj.{part}"] = t.contiguous()
            gate, up = state[f"{b}mlp.up.weight"].chunk(2)
            out[f"{p}mlp.gate_proj.weight"], out[f"{p}mlp.up_proj.weight"] = gate.contiguous(), up.contiguous()
            for theirs, mine in _LLAMA_LAYER.items():
                out[f"{p}{theirs}.weight"] = state[f"{b}{mine}.weight"]
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = state["head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def load_hf(path: str | Path, max_seq_len: int | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor], str]:
    """(config, lmlab state dict, model_type) of a Hugging Face model directory."""
    path = Path(path)
    if not path.is_dir():
        raise LmlabError(f"Hugging Face model directory not found: {path}")
    hf_cfg = read_config(path)
    cfg = config_from_hf(hf_cfg, str(path / "config.json"), max_seq_len)
    weights = read_weights(path)
    mtype = hf_cfg["model_type"]
    if mtype == "bert" and not any("cls.predictions.transform" in k for k in weights):
        cfg.head_transform = False  # an encoder without its MLM head (e.g. a sentence-embedding model)
    state = weights_from_hf(mtype, cfg, weights)
    if max_seq_len is not None and "pos_emb.weight" in state:
        state["pos_emb.weight"] = state["pos_emb.weight"][:max_seq_len]
    return cfg, state, mtype
