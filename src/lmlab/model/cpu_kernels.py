"""Fused CPU kernels (C, built on first use): attention, RMSNorm, bf16 linear layers and the GELU MLP on
AMX tiles, the cross-entropy loss, and the optimizer step of bf16-master training; and their ctypes bindings.

At lab sizes PyTorch's CPU kernels cost several times their arithmetic: attention is ~10 operator
calls per layer (dtype copies, a split, transposes, flash attention, a concatenation in the backward),
RMSNorm six elementwise ops, a bf16 matmul ~30 us of oneDNN set-up per call, and the optimizer step five
passes over the parameters. `cpu_kernels.c` does each in one call (fp32 arithmetic on fp32 or bf16
tensors; the linear layers on AMX tiles where the CPU has them) over PyTorch's own OpenMP threads.
Whether that is faster depends on the CPU: nothing here is used directly by the model. `lmlab.model.ops`
calls these functions only where `unusable_reason` finds nothing in the way and `autotune` measured the
kernel faster than PyTorch's op on this CPU (`benchmarks/cpu_kernels_step.py` compares the two paths).
The tests hold the kernels to PyTorch's ops and to exact products, forward and backward, built for this
CPU and for plain x86-64-v3 (AVX2).
Measured and left out: a standalone exact GELU that keeps its derivative (memory-bound at these shapes;
inside the MLP's tile GEMM, where the activations are already in registers, it pays) and LayerNorm (no
faster than PyTorch's own fused LayerNorm inside the step).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from lmlab import cbuild
from lmlab.model import autotune

_SOURCE = Path(__file__).with_name("cpu_kernels.c")
_FLAGS = ["-O3", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC"]
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_amx = False  # the library was built with AMX tiles and this process may use them
MAX_ATTENTION_LEN = 2048
"""Longest sequence the attention kernel takes: each thread holds one head's T x T scores and their
gradient (32 MiB at 2048); beyond that PyTorch's flash attention, which tiles them, is the better tool."""

_P, _I, _F, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_long
_SIGNATURES = {
    "lmlab_rmsnorm_fwd": (_I, [_P, _P, _P, _P, _I, _I, _F, _I, _I]),
    "lmlab_rmsnorm_bwd": (_I, [_P, _P, _P, _P, _P, _P, _I, _I, _I, _I]),
    "lmlab_attn_fwd": (_I, [_P, _P, _P, _I, _I, _I, _I, _I, _F, _I, _I, _I]),
    "lmlab_attn_bwd": (_I, [_P, _P, _P, _P, _I, _I, _I, _I, _I, _F, _I, _I, _I]),
    "lmlab_grads_to_master": (None, [_I, _P, _P, _P, _P, _I]),
    "lmlab_adamw_step": (ctypes.c_double, [_I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _F, _F, _F, _F, _I]),
    "lmlab_amx_ready": (_I, []),
    "lmlab_linear_fwd": (_I, [_P, _P, _P, _P, _P, _I, _I, _I, _I]),
    "lmlab_linear_bwd": (_I, [_P, _P, _P, _P, _P, _I, _I, _I, _I]),
    "lmlab_mlp_fwd": (_I, [_P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I]),
    "lmlab_mlp_bwd": (_I, [_P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I]),
    "lmlab_xent_fwd": (ctypes.c_double, [_P, _P, _P, _I, _I, ctypes.c_int64, _I, _P, _I]),
    "lmlab_xent_bwd": (_I, [_P, _P, _P, _P, _F, _I, _I, ctypes.c_int64, _I, _I]),
}


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name, (restype, argtypes) in _SIGNATURES.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = restype, argtypes
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them if needed; None (with a one-time warning) if they cannot be
    built. `LMLAB_NATIVE=0` turns them off."""
    global _lib, _lib_error, _amx
    if _lib is not None or _lib_error is not None:
        return _lib
    lib, _lib_error = cbuild.try_build(_SOURCE, _FLAGS, "lmlab's fused CPU kernels are",
                                        "the model uses PyTorch's ops")
    if lib is None:
        return None
    _lib = _bind(lib)
    _amx = bool(lib.lmlab_amx_ready())
    autotune.set_build(cbuild.library_path(_SOURCE, _FLAGS).stem)
    return lib


def build_info() -> dict:
    """What `lmlab doctor` shows: whether the kernels are built, where, for which target, and AMX."""
    lib = load()
    info = {"built": lib is not None, "error": _lib_error, "march": cbuild.march(), "amx_tiles": _amx}
    if lib is not None:
        info["library"] = str(cbuild.library_path(_SOURCE, _FLAGS))
    return info


@contextlib.contextmanager
def use_build(march: str) -> Iterator[ctypes.CDLL]:
    """Within the block, the kernels built for `march` (e.g. x86-64-v3) are the ones every function here
    calls: how the tests check a plain AVX2 build on any x86-64 CPU. Raises RuntimeError if it cannot be built."""
    global _lib, _lib_error, _amx
    saved, old_env = (_lib, _lib_error, _amx), os.environ.get("LMLAB_MARCH")
    os.environ["LMLAB_MARCH"] = march
    try:
        lib = _bind(cbuild.build(_SOURCE, _FLAGS))
        _lib, _lib_error, _amx = lib, None, bool(lib.lmlab_amx_ready())
        yield lib
    finally:
        _lib, _lib_error, _amx = saved
        if old_env is None:
            os.environ.pop("LMLAB_MARCH", None)
        else:
            os.environ["LMLAB_MARCH"] = old_env


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # PyTorch < 2.4
        return torch.is_autocast_cpu_enabled()


def _mode_active() -> bool:
    """A dispatch or function mode (FLOP counting, fake tensors, tracing) sees only PyTorch's ops."""
    return _current_dispatch_mode() is not None or torch._C._is_torch_function_mode_enabled()


_DTYPES = (torch.float32, torch.bfloat16)


def _missing_reason() -> str | None:
    """Why the library is not loaded (switched off, or it could not be built), or None when it is. Asked on
    every op: after the first load it reads no environment."""
    if _lib is not None or load() is not None:
        return None
    return "LMLAB_NATIVE=0" if _lib_error == cbuild.OFF else "kernels not built"


def unusable_reason(*tensors: torch.Tensor | None) -> str | None:
    """Why the kernels cannot stand in for PyTorch's ops on these tensors, or None when they can: all on the
    CPU in one dtype (fp32 or bf16), no autocast, no torch.compile tracing or dispatch mode (such as FLOP
    counting), and the library built. (Called for every op: kept cheap, and the reasons are a fixed set.)"""
    if torch.compiler.is_compiling():  # first: the compiler must not trace the library's loading
        return "torch.compile"
    dtype = tensors[0].dtype
    for t in tensors:
        if t is not None and t.device.type != "cpu":
            return "not on the CPU"
        if t is not None and t.dtype != dtype:
            return "mixed dtypes"
    if dtype not in _DTYPES:
        return "dtype not fp32 or bf16"
    missing = _missing_reason()
    if missing is not None:
        return missing
    if _autocast_on():
        return "autocast"
    if _mode_active():
        return "dispatch mode"
    return None


def usable(*tensors: torch.Tensor | None) -> bool:
    """True when nothing stops the kernels from standing in for PyTorch's ops on these tensors."""
    return unusable_reason(*tensors) is None


def _require() -> None:
    if load() is None:
        raise RuntimeError(f"lmlab's fused CPU kernels are unavailable: {_lib_error}")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _bf(t: torch.Tensor) -> int:
    return int(t.dtype == torch.bfloat16)


def _threads() -> int:
    return torch.get_num_threads()


def _check(rc: int) -> None:
    if rc != 0:
        raise MemoryError("a fused CPU kernel could not allocate its scratch memory")


# -------------------------------------------------------------------------------------------- RMSNorm

class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, eps: float):
        x, w = x.contiguous(), w.contiguous()
        C = x.shape[-1]
        N = x.numel() // C
        y = torch.empty_like(x)
        rstd = torch.empty(N, dtype=torch.float32)
        _check(_lib.lmlab_rmsnorm_fwd(x.data_ptr(), w.data_ptr(), y.data_ptr(), rstd.data_ptr(), N, C, eps, _bf(x),
                                      _threads()))
        ctx.save_for_backward(x, w, rstd)
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, w, rstd = ctx.saved_tensors
        gy = gy.contiguous()
        C = x.shape[-1]
        gx, gw = torch.empty_like(x), torch.empty_like(w)
        _check(_lib.lmlab_rmsnorm_bwd(gy.data_ptr(), x.data_ptr(), rstd.data_ptr(), w.data_ptr(), gx.data_ptr(),
                                      gw.data_ptr(), x.numel() // C, C, _bf(x), _threads()))
        return gx, gw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension, x / sqrt(mean(x^2) + eps) * weight (rounded once, at the end).
    The weight has x's dtype (as `unusable_reason` checks)."""
    _require()
    return _RMSNorm.apply(x, weight, eps)


# ------------------------------------------------------------------------------------------ attention

class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int, scale: float, causal: bool):
        qkv = qkv.contiguous()
        B, T, _ = qkv.shape
        y = torch.empty(B, T, heads * head_dim, dtype=qkv.dtype)
        lse = torch.empty(B, heads, T, dtype=torch.float32) if ctx.needs_input_grad[0] else None
        _check(_lib.lmlab_attn_fwd(_ptr(qkv), _ptr(y), _ptr(lse), B, T, heads, kv_heads, head_dim, scale,
                                   int(causal), _bf(qkv), _threads()))
        ctx.save_for_backward(qkv, lse)
        ctx.shape = (heads, kv_heads, head_dim, scale, causal)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        qkv, lse = ctx.saved_tensors
        heads, kv_heads, head_dim, scale, causal = ctx.shape
        B, T, _ = qkv.shape
        dy = dy.contiguous()
        dqkv = torch.empty_like(qkv)
        _check(_lib.lmlab_attn_bwd(_ptr(qkv), _ptr(lse), _ptr(dy), _ptr(dqkv), B, T, heads, kv_heads, head_dim,
                                   scale, int(causal), _bf(qkv), _threads()))
        return dqkv, None, None, None, None, None


def attention(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int, scale: float,
              causal: bool) -> torch.Tensor:
    """softmax(scale q k^T) v straight from the fused qkv projection (B, T, (heads + 2 kv_heads) * head_dim)
    to (B, T, heads * head_dim), ready for the output projection; causal or bidirectional, grouped-query
    when kv_heads < heads. The forward keeps each row's log-sum-exp, and the backward recomputes the
    probabilities from it (memory O(B heads T), not O(B heads T^2))."""
    _require()
    return _Attention.apply(qkv, heads, kv_heads, head_dim, scale, causal)


# -------------------------------------------------------------------------------------- linear layers

class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, residual: torch.Tensor | None):
        N, K = w.shape
        x2 = x.reshape(-1, K)
        y = torch.empty(x2.shape[0], N, dtype=x.dtype)
        _check(_lib.lmlab_linear_fwd(_ptr(x2), _ptr(w), _ptr(b), _ptr(residual), _ptr(y), x2.shape[0], N, K,
                                     _threads()))
        ctx.save_for_backward(x2, w)
        ctx.has_bias = b is not None
        return y.view(*x.shape[:-1], N)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, w = ctx.saved_tensors
        (M, K), N = x2.shape, w.shape[0]
        dy2 = dy.reshape(M, N).contiguous()
        dx = torch.empty(M, K, dtype=x2.dtype) if ctx.needs_input_grad[0] else None
        dw = torch.empty_like(w) if ctx.needs_input_grad[1] else None
        if dx is not None or dw is not None:
            _check(_lib.lmlab_linear_bwd(_ptr(dy2), _ptr(x2), _ptr(w), _ptr(dx), _ptr(dw), M, N, K, _threads()))
        db = dy2.sum(0, dtype=torch.float32).to(dy2.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return None if dx is None else dx.view(dy.shape[:-1] + (K,)), dw, db, dy if ctx.needs_input_grad[3] else None


TILE_MAX_WEIGHT = 1 << 17
"""Largest weight (elements) the tile kernels take. They pack it whole and stream it once per 32-row block,
which pays at lab sizes, where oneDNN's fixed set-up per call dominates; at thousands of rows oneDNN's
blocked GEMM wins (docs/benchmarks.md has the measurements)."""
TILE_MAX_ROWS = 2048
"""Most rows (tokens) a training step may give the tile kernels: their weight gradient streams all rows once
per 32x32 block of it (at 3072 rows x 128 x 512, oneDNN was faster)."""


def _tile_layer(layer: torch.nn.Module) -> bool:
    """A plain nn.Linear (no hooks) with a contiguous weight small enough for the tile kernels."""
    if type(layer) is not torch.nn.Linear or layer._forward_hooks or layer._forward_pre_hooks:
        return False
    return layer.weight.numel() <= TILE_MAX_WEIGHT and layer.weight.is_contiguous()


def linear_reason(x: torch.Tensor, layer: torch.nn.Module) -> str | None:
    """Why `linear` cannot stand in for `layer(x)`, or None: it wants a plain nn.Linear without hooks and with
    at most TILE_MAX_WEIGHT weights, bf16 on a CPU with AMX tiles, x contiguous, and at most TILE_MAX_ROWS
    rows when gradients are on."""
    if x.dtype != torch.bfloat16:
        return "not bf16"
    if not _tile_layer(layer):
        return "not a plain lab-sized nn.Linear"
    why = unusable_reason(x, layer.weight, layer.bias)
    if why is not None:
        return why
    if not _amx:
        return "no AMX tiles"
    K = layer.weight.shape[1]
    rows = x.numel() // max(K, 1)
    if x.shape[-1] != K or rows == 0 or not x.is_contiguous():
        return "shape or layout"
    return "too many rows" if rows > TILE_MAX_ROWS and torch.is_grad_enabled() else None


def linear_usable(x: torch.Tensor, layer: torch.nn.Module) -> bool:
    return linear_reason(x, layer) is None


def mlp_usable(x: torch.Tensor, up: torch.nn.Module, down: torch.nn.Module) -> bool:
    """True when `gelu_mlp` can stand in for down(gelu(up(x))): both layers as `linear_reason` wants them, and
    rows, width and hidden width all multiples of 32 (its activations are read in place as tiles)."""
    if not linear_usable(x, up) or not _tile_layer(down):
        return False
    (F_, D), rows = up.weight.shape, x.numel() // up.weight.shape[1]
    return down.weight.shape == (D, F_) and D % 32 == 0 and F_ % 32 == 0 and rows % 32 == 0


def _residual_fits(residual: torch.Tensor | None, x: torch.Tensor, n: int) -> bool:
    return residual is None or (residual.dtype == x.dtype and residual.is_contiguous()
                                and residual.shape == x.shape[:-1] + (n,))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T (+ b) for bf16 x (..., K) and W (N, K) on AMX tiles (fp32 accumulation, rounded once), forward
    and backward, any shape (padded to the tile grid as it is packed); what `linear_usable` checks. Saves
    PyTorch's per-call oneDNN set-up (~30 us) at lab sizes. A `residual` (x's rows, N wide) is added before
    the one rounding: a residual connection in the same pass."""
    _require()
    if not _residual_fits(residual, x, weight.shape[0]):
        return residual + _Linear.apply(x, weight, bias, None)
    return _Linear.apply(x, weight, bias, residual)


class _GeluMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_up, b_up, w_down, b_down, residual):
        F_, D = w_up.shape
        x2 = x.reshape(-1, D)
        M = x2.shape[0]
        g = torch.empty(M, F_, dtype=x.dtype)
        d = torch.empty(M, F_, dtype=x.dtype) if any(ctx.needs_input_grad) else None
        y = torch.empty(M, D, dtype=x.dtype)
        _check(_lib.lmlab_mlp_fwd(_ptr(x2), _ptr(w_up), _ptr(b_up), _ptr(w_down), _ptr(b_down), _ptr(residual),
                                  _ptr(g), _ptr(d), _ptr(y), M, D, F_, _threads()))
        ctx.save_for_backward(x2, d, g, w_up, w_down)
        ctx.biases = (b_up is not None, b_down is not None)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, d, g, w_up, w_down = ctx.saved_tensors
        (M, D), F_ = x2.shape, w_up.shape[0]
        dy2 = dy.reshape(M, D).contiguous()
        need = ctx.needs_input_grad
        dh = torch.empty(M, F_, dtype=x2.dtype)
        dx = torch.empty(M, D, dtype=x2.dtype) if need[0] else None
        dw_up = torch.empty_like(w_up) if need[1] else None
        dw_down = torch.empty_like(w_down) if need[3] else None
        _check(_lib.lmlab_mlp_bwd(_ptr(dy2), _ptr(x2), _ptr(d), _ptr(g), _ptr(w_up), _ptr(w_down), _ptr(dh), _ptr(dx),
                                  _ptr(dw_up), _ptr(dw_down), M, D, F_, _threads()))
        db_up = dh.sum(0, dtype=torch.float32).to(dh.dtype) if ctx.biases[0] and need[2] else None
        db_down = dy2.sum(0, dtype=torch.float32).to(dy2.dtype) if ctx.biases[1] and need[4] else None
        return None if dx is None else dx.view(dy.shape), dw_up, db_up, dw_down, db_down, dy if need[5] else None


def gelu_mlp(x: torch.Tensor, up: torch.nn.Linear, down: torch.nn.Linear,
             residual: torch.Tensor | None = None) -> torch.Tensor:
    """down(gelu(up(x))) with the exact GELU, in two tile GEMMs: the GELU and its derivative are computed as
    the up projection's results leave the tiles (the derivative, kept in bf16 instead of the pre-activation,
    is applied as the down projection's input gradient leaves them), so neither costs a pass over the
    (rows, 4 x width) activations of its own; the shapes `mlp_usable` checks. A `residual` (x's shape) is added
    before the output's rounding."""
    _require()
    if not _residual_fits(residual, x, x.shape[-1]):
        return residual + _GeluMLP.apply(x, up.weight, up.bias, down.weight, down.bias, None)
    return _GeluMLP.apply(x, up.weight, up.bias, down.weight, down.bias, residual)


# -------------------------------------------------------------------------------------------- the loss

class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
        V = logits.shape[-1]
        logits2, target = logits.reshape(-1, V).contiguous(), target.reshape(-1).contiguous()
        N = logits2.shape[0]
        lse = torch.empty(N, dtype=torch.float32)
        count = ctypes.c_long(0)
        total = _lib.lmlab_xent_fwd(_ptr(logits2), _ptr(target), _ptr(lse), N, V, ignore_index, _bf(logits2),
                                    ctypes.byref(count), _threads())
        if total == -2.0:
            bad = target[(target != ignore_index) & ((target < 0) | (target >= V))][0]
            raise IndexError(f"Target {int(bad)} is out of bounds (the vocabulary has {V} tokens)")
        _check(int(total == -1.0))
        ctx.save_for_backward(logits2, target, lse)
        ctx.meta = (logits.shape, ignore_index, count.value)
        return torch.tensor(total / count.value if count.value else float("nan"), dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits2, target, lse = ctx.saved_tensors
        shape, ignore_index, count = ctx.meta
        dlogits = torch.empty_like(logits2)
        scale = float(grad) / count if count else 0.0
        _check(_lib.lmlab_xent_bwd(_ptr(logits2), _ptr(target), _ptr(lse), _ptr(dlogits), scale, *logits2.shape,
                                   ignore_index, _bf(logits2), _threads()))
        return dlogits.view(shape), None, None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of logits (..., V) (fp32 or bf16, computed in fp32) against int64 targets, skipping
    `ignore_index`: F.cross_entropy(logits.float(), target) in one pass each way, the gradient in the
    logits' dtype."""
    _require()
    return _CrossEntropy.apply(logits, target, ignore_index)


# ------------------------------------------------------------------------------- the optimizer step

class FlatParams:
    """One model's bf16 weights, fp32 master weights and fp32 gradient, each one flat CPU buffer (the
    masters are views into theirs), and the C passes over them: gathering the bf16 gradients, and the
    whole AdamW step (global norm, clipping, update, bf16 refresh, zeroing) on PyTorch's own optimizer
    state, so checkpoints are the same whichever path ran."""

    def __init__(self, masters: list[torch.Tensor], flat_master: torch.Tensor, flat_grad: torch.Tensor,
                 flat_model: torch.Tensor) -> None:
        self.masters, self.flat_master, self.flat_grad, self.flat_model = masters, flat_master, flat_grad, flat_model
        base = flat_master.data_ptr()
        self.offsets = [(m.data_ptr() - base) // 4 for m in masters]
        self.sizes = [m.numel() for m in masters]
        self.numel = flat_master.numel()
        self.grad_views = [m.grad for m in masters]
        self._c_offsets = (ctypes.c_long * len(masters))(*self.offsets)
        self._c_sizes = (ctypes.c_long * len(masters))(*self.sizes)

    def unfused_reason(self, opt: torch.optim.Optimizer) -> str | None:
        """Why the fused step cannot take `opt`'s step, or None when it can: a torch AdamW over exactly these
        masters, with options the fused step implements, on the CPU, with the kernels built."""
        if self.flat_grad.device.type != "cpu":
            return "not on the CPU"
        missing = _missing_reason()
        if missing is not None:
            return missing
        if type(opt) is not torch.optim.AdamW:
            return "not torch's AdamW"
        ids = [id(p) for g in opt.param_groups for p in g["params"]]
        if sorted(ids) != sorted(id(m) for m in self.masters):
            return "AdamW not over exactly the masters"
        g0 = opt.param_groups[0]
        if any(g.get(k) for g in opt.param_groups for k in ("amsgrad", "maximize", "capturable", "differentiable")):
            return "AdamW option"
        if not all(g["betas"] == g0["betas"] and g["eps"] == g0["eps"] and not torch.is_tensor(g["lr"])
                   for g in opt.param_groups):
            return "AdamW option"
        return None

    def gather(self, params: list[torch.Tensor]) -> bool:
        """Add params' bf16 gradients into the flat fp32 gradient and clear them, in one C pass; False (nothing
        done) when a gradient is not a contiguous bf16 tensor."""
        if _lib is None or not all(p.grad is None or (p.grad.dtype == torch.bfloat16 and p.grad.is_contiguous())
                                   for p in params):
            return False
        grads = [None if p.grad is None else p.grad.data_ptr() for p in params]
        n = len(grads)
        _lib.lmlab_grads_to_master(n, (ctypes.c_void_p * n)(*grads), self._c_offsets, self._c_sizes,
                                   self.flat_grad.data_ptr(), _threads())
        for p in params:
            p.grad = None
        return True

    def adamw_step(self, opt: torch.optim.AdamW, max_norm: float) -> float:
        """Clip to `max_norm` (if > 0), AdamW, refresh the bf16 weights and zero the gradient, in one pass;
        returns the gradient norm before clipping (fp64 partial sums in thread order: deterministic)."""
        _require()
        m_ptrs, v_ptrs, step_ptrs, lrs, wds = [], [], [], [], []
        where = {id(m): i for i, m in enumerate(self.masters)}
        for i, group in sorted((where[id(p)], grp) for grp in opt.param_groups for p in grp["params"]):
            st = opt.state[self.masters[i]]
            if not st:  # the state PyTorch's AdamW would create
                st["step"] = torch.tensor(0.0, dtype=torch.float32)
                st["exp_avg"] = torch.zeros_like(self.masters[i], memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(self.masters[i], memory_format=torch.preserve_format)
            m_ptrs.append(st["exp_avg"].data_ptr())
            v_ptrs.append(st["exp_avg_sq"].data_ptr())
            step_ptrs.append(st["step"].data_ptr())
            lrs.append(group["lr"])
            wds.append(group["weight_decay"])
        n = len(m_ptrs)
        b1, b2 = opt.param_groups[0]["betas"]
        P = ctypes.c_void_p * n
        norm = _lib.lmlab_adamw_step(n, self._c_offsets, self._c_sizes, self.flat_master.data_ptr(),
                                     self.flat_grad.data_ptr(), self.flat_model.data_ptr(), P(*m_ptrs), P(*v_ptrs),
                                     P(*step_ptrs), (ctypes.c_float * n)(*lrs), (ctypes.c_float * n)(*wds), b1, b2,
                                     opt.param_groups[0]["eps"], max_norm, _threads())
        if norm < 0:
            raise MemoryError("the fused optimizer step could not allocate its scratch memory")
        return norm
