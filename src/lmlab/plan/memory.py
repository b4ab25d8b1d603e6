"""Memory of a transformer, to serve it and to train it, from its `ModelConfig` (no torch).

Two views side by side: the rule of thumb (parameters x bytes x 1.2) and a
breakdown (weights with their quantisation scales, KV cache, activations;
for training also gradients, fp32 master weights, optimizer states, and the
peak of a step as eager PyTorch reaches it). GB means 1e9 bytes throughout.
"""

from __future__ import annotations

import math
from typing import Any

from lmlab.model.config import ModelConfig
from lmlab.plan.params import active_experts, matrices, param_counts, up_width
from lmlab.plan.settings import BITS, SizeConfig

GB = 1e9
"""Bytes in a gigabyte: decimal, as memory is quoted on GPU spec sheets."""
INT4_GROUP = 128
"""int4 weights: one fp16 scale per group of this many weights along a row (GPTQ/AWQ's usual group size)."""
ADAM8BIT_BLOCK = 2048
"""8-bit Adam (Dettmers et al. 2022): block-wise quantized states, one fp32 absmax per block of 2048 values."""
OVERHEAD = 1.2
"""The rule of thumb's 20% on top of the weights for KV cache, activations and framework buffers."""


def rule_of_thumb_gb(params: float, bits: float) -> float:
    """Inference memory in GB (1e9 bytes): params in billions x bytes per weight x 1.2 (20% for KV cache,
    activations and buffers at a modest context). 8e9 params at 16 bits: 8 x 2 x 1.2 = 19.2 GB."""
    return params / 1e9 * bits / 8 * OVERHEAD


def weight_bytes(m: ModelConfig, precision: str) -> dict[str, float]:
    """Bytes to store the weights. fp32/bf16/fp16: every parameter at that width. fp8/int8/int4: the 2-D
    weights at that width and the 1-D ones (norms, biases) kept in 16 bits; int8 adds one 16-bit scale per
    output row, int4 one fp16 scale per group of INT4_GROUP (128) weights along each row; fp8's per-tensor
    scales are negligible and left out."""
    total = param_counts(m)["total"]
    if BITS[precision] >= 16:
        return {"weights": total * BITS[precision] / 8, "scales": 0.0}
    mats = matrices(m)
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


def kv_bytes_per_token(m: ModelConfig, precision: str) -> float:
    """Keys and values of one token in every layer: layers x kv_heads x head_dim x 2 x bytes (0 for encoders,
    which attend within one forward pass and keep no cache). Llama-3.1-8B in bf16: 32 x 8 x 128 x 2 x 2 =
    131,072 bytes."""
    return m.n_layers * m.kv_heads * m.head_dim * 2 * BITS[precision] / 8 if m.causal else 0.0


def compute_bytes(precision: str) -> int:
    """Bytes of an activation: fp32 models compute in fp32; everything else (16-bit, and quantized weights,
    which are dequantized into the matmuls) in 16 bits."""
    return 4 if precision == "fp32" else 2


def inference_activation_bytes(m: ModelConfig, batch: int, context: int, precision: str) -> float:
    """Working memory of one forward pass over batch x context tokens (a prefill), without gradients: only
    one layer's tensors are alive at a time. Estimate, per token, in activation bytes: the residual stream
    and the norm's output (2 x d_model) plus the larger of the attention's tensors (fused q/k/v, q and k
    after RoPE, k and v repeated for grouped-query attention, the output and its re-laid-out copy; fused
    attention, so no context x context score matrix) and the MLP's (up projection, activation, and for
    SwiGLU the gated product; a mixture of experts runs one expert at a time on its share k/n_experts of
    the tokens, into an output accumulator). Plus fp32 logits, batch x vocab x 4, for the last position
    (for an encoder, every position)."""
    A, kv = m.n_heads * m.head_dim, m.kv_heads * m.head_dim
    rope, gqa = m.positions == "rope", m.kv_heads != m.n_heads
    attention = (m.n_heads + 2 * m.kv_heads) * m.head_dim + (A + kv) * rope + 2 * A * gqa + 2 * A
    one_mlp = up_width(m) + m.ff_dim * (2 if m.mlp == "swiglu" else 1)
    mlp = m.d_model + (2 * m.d_model + one_mlp) * active_experts(m) / m.n_experts if m.moe else one_mlp
    hidden = batch * context * (2 * m.d_model + max(attention, mlp)) * compute_bytes(precision)
    logits = batch * (1 if m.causal else context) * m.vocab_size * 4
    return float(hidden + logits)


def inference_memory(m: ModelConfig, cfg: SizeConfig, context: int) -> dict[str, Any]:
    """Weights + KV cache + activations for serving `batch` sequences of `context` tokens."""
    params = param_counts(m)["total"]
    w = weight_bytes(m, cfg.precision)
    kvp = kv_precision(cfg)
    kv_tok = kv_bytes_per_token(m, kvp)
    kv = cfg.batch * context * kv_tok
    act = inference_activation_bytes(m, cfg.batch, context, cfg.precision)
    return {
        "rule_of_thumb_gb": rule_of_thumb_gb(params, BITS[cfg.precision]),
        "rule_of_thumb": f"GB = params in billions x {BITS[cfg.precision]}/8 bytes x {OVERHEAD}",
        "weights_bytes": w["weights"], "quant_scales_bytes": w["scales"],
        "kv_precision": kvp, "kv_cache_bytes_per_token": kv_tok, "kv_cache_bytes": kv,
        "activations_bytes": act,
        "total_bytes": w["weights"] + kv + act,
    }


def korthikanti_layer_bytes(m: ModelConfig, batch: int, context: int) -> float:
    """Activations one layer stores for the backward pass, at 16 bits (Korthikanti et al. 2022, "Reducing
    Activation Recomputation in Large Transformer Models", no tensor/sequence parallelism):
    s*b*h*(34 + 5*a*s/h) bytes, s = context, b = batch, h = d_model, a = heads. 34sbh covers the layer's
    inputs, q/k/v, MLP intermediates and dropout masks of a GPT-style block; 5as^2b is the attention scores,
    softmax and its dropout mask, which fused (flash) attention does not store."""
    s, b, h = context, batch, m.d_model
    return s * b * h * (34 + 5 * m.n_heads * s / h)


def saved_elements_per_token(m: ModelConfig) -> dict[str, int]:
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
    A = m.n_heads * m.head_dim
    gqa, rope = m.kv_heads != m.n_heads, m.positions == "rope"
    norms = 2 * (2 + (m.norm == "rmsnorm")) * m.d_model
    views = not rope or not gqa  # some of q, k, v is a view of the fused projection
    attention = ((m.n_heads + 2 * m.kv_heads) * m.head_dim if views else 0) + A * rope + A * (rope or gqa) \
        + A * gqa + 2 * A
    one_mlp = up_width(m) + (2 * m.ff_dim if m.mlp == "swiglu" else m.ff_dim)
    mlp = active_experts(m) * (one_mlp + 2 * m.d_model) if m.moe else one_mlp
    return {"norms": norms, "attention": attention, "mlp": mlp, "total": norms + attention + mlp}


def eager_training_peak(m: ModelConfig, cfg: SizeConfig, context: int, static: float) -> dict[str, float]:
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
    per_layer = saved_elements_per_token(m)["total"] * tokens * ab
    layers = m.n_layers * tokens * m.d_model * ab + per_layer if cfg.activation_checkpointing else \
        m.n_layers * per_layer
    final = (2 + (m.norm == "rmsnorm")) * tokens * m.d_model * ab * (m.norm_position == "pre")
    logits = tokens * m.vocab_size * (3 * 4 + (ab if ab != 4 else 0))
    grads = (param_counts(m)["total"] + 2 * m.vocab_size * m.d_model * m.tie_embeddings) * BITS[prec] / 8
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


def training_memory(m: ModelConfig, cfg: SizeConfig, context: int, inference_total: float) -> dict[str, Any]:
    """Weights + gradients + fp32 master weights + optimizer states + activations for one training step of
    batch x context tokens (one accelerator, no sharding)."""
    prec = training_precision(cfg.precision)
    wb = BITS[prec] / 8
    params = param_counts(m)["total"]
    master = 4.0 if cfg.mixed_precision and wb == 2 else 0.0
    per_layer = korthikanti_layer_bytes(m, cfg.batch, context) * compute_bytes(prec) / 2
    kept = 2 * context * cfg.batch * m.d_model * compute_bytes(prec) / 2  # a layer's input: 2sbh bytes at 16 bits
    activations = m.n_layers * kept + per_layer if cfg.activation_checkpointing else m.n_layers * per_layer
    scores = 5 * m.n_heads * context ** 2 * cfg.batch * compute_bytes(prec) / 2  # the 5as/h term, unless fused
    logits = cfg.batch * context * m.vocab_size * 4.0
    parts = {"weights_bytes": params * wb, "gradients_bytes": params * wb, "master_weights_bytes": params * master,
             "optimizer_states_bytes": params * optimizer_bytes_per_param(cfg.optimizer),
             "activations_bytes": float(activations), "logits_bytes": logits}
    total = sum(parts.values())
    static = parts["weights_bytes"] + parts["master_weights_bytes"] + parts["optimizer_states_bytes"]
    return {
        "precision": prec, **parts, **eager_training_peak(m, cfg, context, static),
        "activations_per_layer_bytes": per_layer,
        "attention_scores_per_layer_bytes": scores,
        "activations_flash_bytes": float(activations - (1 if cfg.activation_checkpointing else m.n_layers) * scores),
        "static_bytes_per_param": 2 * wb + master + optimizer_bytes_per_param(cfg.optimizer),
        "total_bytes": total,
        "ratio_to_inference": total / inference_total,
        "rule": "training needs 3-4x inference memory",
        "rule_note": ("a rule for short contexts and small batches with lean optimizer states; mixed-precision "
                      "AdamW alone is 16 bytes/param (8x bf16 weights), and at long context or large batch the "
                      "activations dominate, so the ratio can be far higher (activation checkpointing, 8-bit "
                      "optimizers, sharding and flash attention bring it down)"),
    }
