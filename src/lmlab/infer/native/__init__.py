"""A native (C) decode step for dense models on the CPU, built on first use.

A tiny model's decode step is a few microseconds of arithmetic buried under ~60
PyTorch operator calls, and a large one's is bound by reading its weights;
`decode.c` does the whole step in one call over the model's own (fp32 or bf16)
parameters and the engine's KV cache (no copies), spread over the cores, which
makes token-by-token decoding several times faster. It is compiled
with the system C compiler the first time it is needed and cached under
`$LMLAB_CACHE` (default `~/.cache/lmlab`); without a compiler, or for a model it
does not cover, the engine keeps its PyTorch path, which is also the reference
the tests hold this one to.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path

import torch

from lmlab import cbuild
from lmlab.model.config import ModelConfig

_SOURCE = Path(__file__).with_name("decode.c")
_FLAGS = ["-O3", "-fno-math-errno", "-shared", "-fPIC", "-pthread"]
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None

MIN_MACS_PER_THREAD = 2_000_000
"""A step with fewer multiply-adds than this (rows x weights) runs on one thread."""
MAX_AUTO_ROWS = 64
MAX_AUTO_MACS = 800_000_000
"""With more rows than MAX_AUTO_ROWS, or more multiply-adds per step (rows x weights) than this, a step
is bound by arithmetic rather than by operator overhead or reading the weights, and PyTorch's matmul
kernels win: 'auto' keeps torch there. Measured: 256 rows of the quickstart's 0.9M-parameter model ran
at 0.8-1.0x torch's speed (32 rows at 1.5x), 16 rows of a 91M-parameter model at 0.8x, 16 rows of 29M
at 1.2x."""


def load() -> ctypes.CDLL | None:
    """The compiled library, building it if needed; None (with a one-time warning) if it cannot be built.
    `LMLAB_NATIVE=0` turns the native path off."""
    global _lib, _lib_error
    if _lib is not None or _lib_error is not None:
        return _lib
    lib, _lib_error = cbuild.try_build(_SOURCE, _FLAGS, "lmlab's native decode step is", "decoding uses PyTorch")
    if lib is None:
        return None
    f = lib.lmlab_decode_step
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                  ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                  ctypes.c_int]
    _lib = lib
    return lib


def load_error() -> str | None:
    """Why `load()` returned None, if it did."""
    return _lib_error


def unsupported(model: torch.nn.Module) -> str | None:
    """Why `model` cannot use the native step (None if it can)."""
    cfg: ModelConfig = model.cfg
    if any(type(m).__name__ == "Int8Linear" for m in model.modules()):
        return "int8 weights"
    dtypes = {p.dtype for p in model.parameters()} | {b.dtype for b in model.buffers()}
    if any(p.device.type != "cpu" for p in model.parameters()) or len(dtypes) != 1 or \
            dtypes.pop() not in (torch.float32, torch.bfloat16):
        return "needs fp32 or bf16 weights on the CPU"
    if not all(t.is_contiguous() for t in [*model.parameters(), *model.buffers()]):
        return "needs contiguous parameters"
    if not cfg.causal or cfg.norm_position != "pre" or cfg.moe:
        return "covers causal pre-norm dense models only"
    if cfg.embed_norm or cfg.type_vocab_size or cfg.head_transform or model.head.bias is not None:
        return "no embedding norm, token types or head transform"
    if model.training and cfg.dropout:
        return "model is in training mode with dropout"
    return None


class NativeDecoder:
    """Binds a model's parameters for `decode.c`. Rebuild it when the parameters are replaced (not when
    they are updated in place: the step reads them live)."""

    def __init__(self, model: torch.nn.Module, lib: ctypes.CDLL) -> None:
        cfg: ModelConfig = model.cfg
        self.lib, self.model, self.cfg = lib, model, cfg
        act = {"gelu": 0, "gelu_tanh": 1, "swiglu": 2}[cfg.mlp]
        self.icfg = torch.tensor([cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.ff_dim,
                                  cfg.vocab_size, cfg.max_seq_len, int(cfg.norm == "rmsnorm"), act,
                                  int(cfg.positions == "rope"),
                                  int(model.tok_emb.weight.dtype == torch.bfloat16)], dtype=torch.int64)
        self.fcfg = torch.tensor([cfg.norm_eps, cfg.attn_scale, 1.0 / cfg.width_mult], dtype=torch.float64)
        self.threads = torch.get_num_threads()
        self.macs = sum(p.numel() for p in model.parameters() if p.dim() == 2)  # multiply-adds per row, roughly

        def ptr(t: torch.Tensor | None) -> int:  # the model (kept in self.model) owns the memory
            return 0 if t is None else t.data_ptr()

        rope = cfg.positions == "rope"
        ptrs = [ptr(model.tok_emb.weight), ptr(model.pos_emb.weight if model.pos_emb is not None else None),
                ptr(model.rope_cos if rope else None), ptr(model.rope_sin if rope else None),
                ptr(model.norm_f.weight), ptr(getattr(model.norm_f, "bias", None)), ptr(model.head.weight)]
        for blk in model.blocks:
            a, m = blk.attn, blk.mlp
            for lin_or_norm in (blk.norm1, a.qkv, a.proj, blk.norm2, m.up, m.down):
                ptrs += [ptr(lin_or_norm.weight), ptr(getattr(lin_or_norm, "bias", None))]
        self.ptrs = (ctypes.c_void_p * len(ptrs))(*ptrs)

    def _threads(self, rows: int) -> int:
        """PyTorch's thread count, unless the step is too small to pay for starting threads (~20-40 us)."""
        return self.threads if rows * self.macs >= MIN_MACS_PER_THREAD else 1

    @contextlib.contextmanager
    def cores(self):
        """Lend PyTorch's cores to the native step while decoding: PyTorch's idle worker threads otherwise
        keep spinning on them (measured: a 16-row step took 1.5 ms on two threads against 0.85 ms with
        PyTorch at one thread). The few tensor ops between steps are too small to use threads anyway."""
        saved = torch.get_num_threads()
        if self.threads > 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(saved)

    def step(self, tokens: torch.Tensor, cache) -> torch.Tensor:
        """Logits (B, V) for one new token per row at position `cache.lengths[b]`; writes that token's keys
        and values into the cache (the caller then calls `cache.advance(1)`)."""
        tokens = tokens.to(torch.int64).contiguous()
        B = tokens.shape[0]
        if not (cache.k.is_contiguous() and cache.v.is_contiguous() and cache.k.dtype == torch.float32):
            raise ValueError("native decode needs a contiguous fp32 KV cache")
        lengths = cache.lengths.contiguous()
        logits = torch.empty(B, self.cfg.vocab_size, dtype=torch.float32)
        rc = self.lib.lmlab_decode_step(self.icfg.data_ptr(), self.fcfg.data_ptr(), self.ptrs, B,
                                        tokens.data_ptr(), lengths.data_ptr(), cache.k.data_ptr(),
                                        cache.v.data_ptr(), cache.k.shape[1], cache.k.shape[3],
                                        logits.data_ptr(), self._threads(B))
        if rc == -1:
            raise ValueError(f"KV cache holds {cache.max_len} positions; position {int(lengths.max())} needed")
        if rc != 0:
            raise MemoryError("native decode step could not allocate its scratch memory")
        return logits
