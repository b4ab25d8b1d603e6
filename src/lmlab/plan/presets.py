"""Published models that `lmlab size` knows by name: their Hugging Face config.json, as stored on the Hub.

Each entry keeps the size-relevant keys of a model's config.json (repository
named in the comment) and goes through `published_from_hf` like any
downloaded config, so a preset and its file are sized alike.
"""

from __future__ import annotations

from typing import Any

from lmlab.model.config import PRESETS


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
    # meta-llama/Llama-3.2-1B (tied embeddings; RoPE scaled by 32 for its long context)
    "llama-3.2-1b": _llama_cfg(2048, 16, 32, 8, 8192, 128256, 131072, 500000.0, tied=True, rms_norm_eps=1e-5,
                               rope_scaling={**_LLAMA31_ROPE, "factor": 32.0}),
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
