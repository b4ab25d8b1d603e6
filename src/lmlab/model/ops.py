"""The operations layer: every op the model, the loss and the optimizer step call, and which
implementation runs it.

The model calls `linear`, `attention`, `rms_norm`, `mlp` and `cross_entropy` here and reads as plain
PyTorch; this module decides, once per op and shape, between PyTorch's own op and a fused C kernel
(`cpu_kernels`). A kernel runs only where (1) it can run at all: a CPU tensor in fp32 or bf16, no
autocast, `torch.compile` tracing or dispatch mode, the library built, and the CPU features it needs
(AMX tiles for the linear layers); and (2) `autotune` measured it faster than PyTorch's op on this CPU
at these shapes. Everywhere else, including every GPU, the PyTorch code below runs, and it is the
reference the kernels are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.model import autotune, cpu_kernels
from lmlab.model.kv_cache import KVCache
from lmlab.model.rope import apply_rope


def _ready(op: str, *tensors: torch.Tensor | None) -> bool:
    """The kernels can stand in for PyTorch here (counting the call under PyTorch, with why, if not)."""
    why = cpu_kernels.unusable_reason(*tensors)
    if why is not None:
        autotune.count(op, "torch", why)
    return why is None


def _pick(op: str, sig: tuple, bench) -> bool:
    native = autotune.choose(op, sig, bench)
    autotune.count(op, "native" if native else "torch", _WHY[autotune.mode()])
    return native


_WHY = {"measure": "measured", "force": "LMLAB_NATIVE=force", "off": "LMLAB_NATIVE=0"}


def _dtype(name: str) -> torch.dtype:
    """The dtype a signature names ('torch.bfloat16'): signatures hold names so they can key a JSON cache."""
    return getattr(torch, name.removeprefix("torch."))


def _randn(shape, dtype, g: torch.Generator, grad: bool = False) -> torch.Tensor:
    return torch.randn(shape, generator=g).to(dtype).requires_grad_(grad)


def _fwd_bwd(fn, inputs: list[torch.Tensor], grad: bool):
    """A closure running fn() (and its backward with a fixed output gradient when `grad`)."""
    if not grad:
        def run():
            with torch.no_grad():
                fn()
        return run
    out_grad = None

    def run():
        nonlocal out_grad
        for t in inputs:
            t.grad = None
        y = fn()
        if out_grad is None:
            out_grad = torch.ones_like(y) / y.numel() if y.dim() == 0 else torch.randn_like(y)
        y.backward(out_grad)
    return run


# ------------------------------------------------------------------------------------------- linear

def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """layer(x)."""
    why = cpu_kernels.linear_reason(x, layer)
    if why is None:
        N, K = layer.weight.shape
        sig = (autotune.bucket(x.numel() // K), N, K, layer.bias is not None, torch.is_grad_enabled())
        if _pick("linear", sig, lambda g: _linear_bench(sig, g)):
            return cpu_kernels.linear(x, layer.weight, layer.bias)
    else:
        autotune.count("linear", "torch", why)
    return layer(x)


def _linear_bench(sig, g):
    M, N, K, bias, grad = sig
    x = _randn((M, K), torch.bfloat16, g, grad)
    w = _randn((N, K), torch.bfloat16, g, grad)
    b = _randn((N,), torch.bfloat16, g, grad) if bias else None
    ins = [t for t in (x, w, b) if t is not None] if grad else []
    return (_fwd_bwd(lambda: cpu_kernels.linear(x, w, b), ins, grad), _fwd_bwd(lambda: F.linear(x, w, b), ins, grad))


# ---------------------------------------------------------------------------------------- attention

def attention(qkv: torch.Tensor, heads: int, kv_heads: int, scale: float, causal: bool,
              rope: tuple[torch.Tensor, torch.Tensor] | None = None, mask: torch.Tensor | None = None,
              kv: tuple[KVCache, int] | None = None, dropout: float = 0.0) -> torch.Tensor:
    """softmax(scale q k^T [+ mask]) v from the fused projection qkv (B, T, (heads + 2 kv_heads) head_dim)
    to (B, T, heads head_dim), in qkv's dtype. `rope`: cos/sin tables applied to q and k; `mask`: a (B, T_keys)
    padding mask (True = real token) or a boolean mask broadcastable to (B, heads, T, T_keys), combined with
    the causal one; `kv`: (cache, layer) when decoding, where the new keys and values are written and
    everything cached is attended to."""
    B, T, width = qkv.shape
    head_dim = width // (heads + 2 * kv_heads)
    plain = rope is None and mask is None and kv is None and dropout == 0
    if plain and T <= cpu_kernels.MAX_ATTENTION_LEN and _ready("attention", qkv):
        grad = torch.is_grad_enabled() and qkv.requires_grad
        sig = (autotune.bucket(B), T, heads, kv_heads, head_dim, causal, str(qkv.dtype), grad)
        if _pick("attention", sig, lambda g: _attention_bench(sig, scale, g)):
            return cpu_kernels.attention(qkv, heads, kv_heads, head_dim, scale, causal)
    elif not plain or T > cpu_kernels.MAX_ATTENTION_LEN:
        autotune.count("attention", "torch", "rope, mask, cache, dropout or length")
    return sdpa_attention(qkv, heads, kv_heads, scale, causal, rope, mask, kv, dropout)


def sdpa_attention(qkv, heads, kv_heads, scale, causal, rope=None, mask=None, kv=None, dropout=0.0):
    """`attention` through PyTorch's scaled_dot_product_attention."""
    B, T, width = qkv.shape
    hd = width // (heads + 2 * kv_heads)
    dtype = qkv.dtype
    if qkv.device.type == "cpu" and dtype != torch.float32:
        # PyTorch's CPU flash-attention backward is several times slower in bf16 than in fp32
        # at small shapes, and attention is a small share of the FLOPs: run it in fp32.
        qkv = qkv.float()
    if rope is None:
        q, k, v = qkv.split([heads * hd, kv_heads * hd, kv_heads * hd], -1)
        q, k = q.view(B, T, heads, hd), k.view(B, T, kv_heads, hd)
    else:  # q and k rotated in one pass, in the (B, T, heads, head_dim) layout
        qk, v = qkv.split([(heads + kv_heads) * hd, kv_heads * hd], -1)
        cos, sin = (t.transpose(-2, -3) if t.dim() == 4 else t.unsqueeze(-2) for t in rope)
        q, k = apply_rope(qk.view(B, T, heads + kv_heads, hd), cos, sin).split([heads, kv_heads], dim=2)
    # split, not slicing: a slice's backward zero-fills a whole input-sized gradient, a split's is one cat
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(B, T, kv_heads, hd).transpose(1, 2)
    if kv is not None:  # decoding: attend over everything cached; the cache's mask is already causal
        cache, layer = kv
        k, v = cache.write(layer, k, v)
        if k.dtype != q.dtype:
            k, v = k.to(q.dtype), v.to(q.dtype)
    if kv_heads != heads:
        k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
    if mask is not None and mask.dim() == 2:  # (B, T_keys): True = a real token, False = padding
        mask = mask[:, None, None, :]
    # With a cache, a missing mask means "aligned rows": causal for a prefill, open for one new token.
    causal = causal and (kv is None or (mask is None and T > 1))
    if mask is not None and causal:
        # A boolean mask (True = may attend, e.g. padding) is combined with, never replaces, the causal mask.
        mask = mask & torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        causal = False
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scale)
    return y.transpose(1, 2).reshape(B, T, heads * hd).to(dtype)


def _attention_bench(sig, scale, g):
    B, T, H, KV, D, causal, dtype, grad = sig
    qkv = _randn((B, T, (H + 2 * KV) * D), _dtype(dtype), g, grad)
    ins = [qkv] if grad else []
    return (_fwd_bwd(lambda: cpu_kernels.attention(qkv, H, KV, D, scale, causal), ins, grad),
            _fwd_bwd(lambda: sdpa_attention(qkv, H, KV, scale, causal), ins, grad))


# ------------------------------------------------------------------------------------------ RMSNorm

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension (Llama's RMSNorm)."""
    if _ready("rms_norm", x, weight):
        grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        sig = (autotune.bucket(x.numel() // x.shape[-1]), x.shape[-1], str(x.dtype), grad)
        if _pick("rms_norm", sig, lambda g: _rms_bench(sig, eps, g)):
            return cpu_kernels.rms_norm(x, weight, eps)
    return torch_rms_norm(x, weight, eps)


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def _rms_bench(sig, eps, g):
    N, C, dtype, grad = sig
    x, w = _randn((N, C), _dtype(dtype), g, grad), _randn((C,), _dtype(dtype), g, grad)
    ins = [x, w] if grad else []
    return (_fwd_bwd(lambda: cpu_kernels.rms_norm(x, w, eps), ins, grad),
            _fwd_bwd(lambda: torch_rms_norm(x, w, eps), ins, grad))


# ---------------------------------------------------------------------------------------------- MLP

def mlp(x: torch.Tensor, up: torch.nn.Linear, down: torch.nn.Linear, kind: str) -> torch.Tensor:
    """down(act(up(x))): act is the exact GELU ('gelu'), its tanh approximation ('gelu_tanh'), or SwiGLU
    ('swiglu': up's output is [gate | value], act = silu(gate) * value)."""
    if kind == "gelu" and cpu_kernels.mlp_usable(x, up, down):
        F_, D = up.weight.shape
        grad = torch.is_grad_enabled()
        sig = (autotune.bucket(x.numel() // D), D, F_, up.bias is not None, grad)
        if _pick("mlp", sig, lambda g: _mlp_bench(sig, g)):
            return cpu_kernels.gelu_mlp(x, up, down)
    h = linear(x, up)
    if kind == "swiglu":
        gate, value = h.chunk(2, dim=-1)
        return linear(F.silu(gate) * value, down)
    return linear(F.gelu(h, approximate="tanh" if kind == "gelu_tanh" else "none"), down)


def _mlp_bench(sig, g):
    M, D, F_, bias, grad = sig
    up = torch.nn.Linear(D, F_, bias=bias).to(torch.bfloat16)
    down = torch.nn.Linear(F_, D, bias=bias).to(torch.bfloat16)
    for p in (*up.parameters(), *down.parameters()):
        p.data = _randn(p.shape, torch.bfloat16, g) * 0.05
        p.requires_grad_(grad)
    x = _randn((M, D), torch.bfloat16, g, grad)
    ins = [x, *up.parameters(), *down.parameters()] if grad else []
    return (_fwd_bwd(lambda: cpu_kernels.gelu_mlp(x, up, down), ins, grad),
            _fwd_bwd(lambda: down(F.gelu(up(x))), ins, grad))


# ------------------------------------------------------------------------------------------ the loss

def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of logits (..., V) against labels, skipping `ignore_index`, always in fp32
    (bf16 logits are upcast)."""
    if labels.dtype == torch.int64 and _ready("cross_entropy", logits):
        grad = torch.is_grad_enabled() and logits.requires_grad
        V = logits.shape[-1]
        sig = (autotune.bucket(logits.numel() // V), V, str(logits.dtype), grad)
        if _pick("cross_entropy", sig, lambda g: _xent_bench(sig, g)):
            return cpu_kernels.cross_entropy(logits, labels, ignore_index)
    return torch_cross_entropy(logits, labels, ignore_index)


def torch_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=ignore_index)


def _xent_bench(sig, g):
    N, V, dtype, grad = sig
    logits = _randn((N, V), _dtype(dtype), g, grad)
    labels = torch.randint(V, (N,), generator=g)
    ins = [logits] if grad else []
    return (_fwd_bwd(lambda: cpu_kernels.cross_entropy(logits, labels), ins, grad),
            _fwd_bwd(lambda: torch_cross_entropy(logits, labels), ins, grad))


# ------------------------------------------------------------------------------ the optimizer step

def fused_optimizer(flat: cpu_kernels.FlatParams, opt: torch.optim.Optimizer) -> bool:
    """True when `flat_adamw_step` should take this optimizer's step: the flat bf16 weights and fp32 masters
    on the CPU, a plain AdamW over exactly them, and the fused step measured faster at this size."""
    why = flat.unfused_reason(opt)
    if why is not None:
        autotune.count("optimizer_step", "torch", why)
        return False
    return _pick("optimizer_step", (flat.numel, len(flat.sizes)), lambda g: _adamw_bench(flat.numel, g))


def grads_to_master(flat: cpu_kernels.FlatParams, params: list[torch.Tensor], fused: bool) -> None:
    """Add the model's bf16 gradients into the flat fp32 gradient and clear them (one C pass where the fused
    optimizer step is chosen)."""
    if fused and flat.gather(params):
        return
    pairs = [(m, p.grad) for m, p in zip(flat.grad_views, params) if p.grad is not None]
    if pairs:
        torch._foreach_add_([m for m, _ in pairs], [g for _, g in pairs])
    for p in params:
        p.grad = None


def _adamw_bench(n: int, g: torch.Generator):
    """A flat AdamW step over n parameters: the fused C pass against PyTorch's norm, clip, fused AdamW and
    bf16 copy (over one flat tensor: PyTorch's best case)."""
    master = _randn((n,), torch.float32, g)
    master.grad = _randn((n,), torch.float32, g)
    flat = cpu_kernels.FlatParams([master], master, master.grad, master.to(torch.bfloat16))
    opt_native = torch.optim.AdamW([master], lr=1e-4)
    p = master.detach().clone().requires_grad_()
    p.grad = master.grad.clone()
    model = p.detach().to(torch.bfloat16)
    kw = {"fused": True} if "fused" in torch.optim.AdamW.__init__.__code__.co_varnames else {}
    opt_torch = torch.optim.AdamW([p], lr=1e-4, **kw)

    def plain():
        torch.nn.utils.clip_grad_norm_([p], 1.0, foreach=True)
        opt_torch.step()
        model.copy_(p.detach())
    return (lambda: flat.adamw_step(opt_native, 1.0)), plain
