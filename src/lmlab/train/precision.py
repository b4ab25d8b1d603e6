"""Numeric precision of training: fp32, bf16 autocast, or bf16 weights + fp32 master.

Why three modes: on CUDA, per-op autocast is the standard and fast way to use
bf16. On a CPU with bf16 matrix units (AMX), autocast's per-op casts cost more
than they save at small shapes, while bf16 matmuls themselves are 2-4x faster
than fp32. `bf16-master` therefore keeps the model's weights in bf16 (so no
per-op casts) and the optimizer's weights in fp32 (so small updates are not
rounded away); after each step the fp32 masters are copied into the bf16
weights. Losses are always computed in fp32.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

import torch

MODES = ("auto", "fp32", "bf16-autocast", "bf16-master")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve(mode: str, device: torch.device) -> str:
    """Turn 'auto' into the fastest safe mode for `device`."""
    if mode != "auto":
        if mode not in MODES:
            raise ValueError(f"precision must be one of {MODES}, got {mode!r}")
        return mode
    if device.type == "cuda":
        return "bf16-autocast" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16-master"
    return "fp32"


class Precision:
    """Owns the mapping between the model's weights and the optimizer's weights."""

    def __init__(self, model: torch.nn.Module, mode: str, device: torch.device) -> None:
        self.mode = resolve(mode, device)
        self.device = device
        self.model = model
        self.model_params = [p for p in model.parameters() if p.requires_grad]
        self.flat_grad: torch.Tensor | None = None
        if self.mode == "bf16-master":
            self._flatten_bf16_master()
        else:
            self.master = self.model_params

    def _flatten_bf16_master(self) -> None:
        """fp32 masters, their gradients and the bf16 weights each live in one flat buffer.

        Every parameter is a view into its buffer, so the per-step bookkeeping
        (zeroing, the global gradient norm, clipping, refreshing the bf16 copy) is
        one kernel each instead of one per tensor: at small shapes those
        per-tensor launches cost as much as the arithmetic.
        """
        n = sum(p.numel() for p in self.model_params)
        dev = self.model_params[0].device
        self.flat_master = torch.empty(n, dtype=torch.float32, device=dev)
        self.flat_grad = torch.zeros(n, dtype=torch.float32, device=dev)
        self.flat_model = torch.empty(n, dtype=torch.bfloat16, device=dev)
        self.master = []
        self.offsets, self.sizes = [], []
        offset = 0
        for p in self.model_params:
            k = p.numel()
            self.offsets.append(offset)
            self.sizes.append(k)
            m = self.flat_master[offset:offset + k].view_as(p)
            m.copy_(p.detach())
            m.grad = self.flat_grad[offset:offset + k].view_as(p)
            self.master.append(m)
            bf = self.flat_model[offset:offset + k].view_as(p)
            bf.copy_(p.detach())
            p.data = bf  # the parameter now lives in the flat bf16 buffer
            offset += k

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.float32 if self.mode == "fp32" else torch.bfloat16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.mode == "bf16-autocast":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def grads_to_master(self) -> None:
        """After each backward: add the model's (bf16) gradients into the fp32 masters.

        Accumulating in fp32 keeps gradient accumulation over micro-batches exact.
        """
        if self.mode != "bf16-master":
            return
        if self._native() is not None and all(p.grad is None or (p.grad.dtype == torch.bfloat16 and
                                                                  p.grad.is_contiguous())
                                              for p in self.model_params):
            grads = [None if p.grad is None else p.grad.data_ptr() for p in self.model_params]
            n = len(grads)
            self._lib.lmlab_grads_to_master(n, (ctypes.c_void_p * n)(*grads), self._c_offsets, self._c_sizes,
                                            self.flat_grad.data_ptr(), torch.get_num_threads())
            for p in self.model_params:
                p.grad = None
            return
        pairs = [(m.grad, p.grad) for m, p in zip(self.master, self.model_params) if p.grad is not None]
        if pairs:
            torch._foreach_add_([m for m, _ in pairs], [p for _, p in pairs])
        for p in self.model_params:
            p.grad = None

    @torch.no_grad()
    def master_to_model(self) -> None:
        """After the optimizer step: refresh the bf16 weights from the fp32 masters."""
        if self.mode == "bf16-master":
            self.flat_model.copy_(self.flat_master)

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> float:
        """Global gradient norm (before clipping); scales gradients down to `max_norm` if > 0."""
        if self.flat_grad is None:
            grads = [p for p in self.master if p.grad is not None]
            if max_norm > 0:
                return float(torch.nn.utils.clip_grad_norm_(grads, max_norm, foreach=True))
            return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.grad) for g in grads])))
        norm = float(torch.linalg.vector_norm(self.flat_grad))
        if max_norm > 0 and norm > max_norm:
            self.flat_grad.mul_(max_norm / (norm + 1e-6))
        return norm

    def _native(self):
        """The fused C kernels, where the flat bf16-master buffers live on the CPU (else None)."""
        if self.flat_grad is None or self.flat_grad.device.type != "cpu":
            return None
        if not hasattr(self, "_lib"):
            from lmlab.model import cpu_kernels

            self._lib = cpu_kernels.load()
            n = len(self.offsets)
            self._c_offsets = (ctypes.c_long * n)(*self.offsets)
            self._c_sizes = (ctypes.c_long * n)(*self.sizes)
        return self._lib

    def _plain_adamw(self, opt: torch.optim.Optimizer) -> bool:
        """True for a torch AdamW over exactly our fp32 masters, with options the fused step implements."""
        if type(opt) is not torch.optim.AdamW:
            return False
        ids = [id(p) for g in opt.param_groups for p in g["params"]]
        if sorted(ids) != sorted(id(m) for m in self.master):
            return False
        g0 = opt.param_groups[0]
        return all(not g.get(k) for g in opt.param_groups for k in ("amsgrad", "maximize", "capturable",
                                                                      "differentiable")) and \
            all(g["betas"] == g0["betas"] and g["eps"] == g0["eps"] and not torch.is_tensor(g["lr"])
                for g in opt.param_groups)

    @torch.no_grad()
    def step(self, opt: torch.optim.Optimizer, max_norm: float) -> float:
        """Clip the gradients to `max_norm` (if > 0), step the optimizer, clear the gradients and refresh the
        model's weights; returns the gradient norm before clipping.

        With bf16 weights and fp32 masters on the CPU and a plain AdamW, all of that is one fused C pass
        over the flat buffers (`lmlab_adamw_step`: the same AdamW, keeping PyTorch's optimizer state, so
        checkpoints do not change); otherwise PyTorch's clipping, `opt.step()` and copies.
        """
        lib = self._native()
        if lib is None or not self._plain_adamw(opt):
            norm = self.clip_grad_norm(max_norm)
            opt.step()
            self.zero_grad()
            self.master_to_model()
            return norm
        m_ptrs, v_ptrs, step_ptrs, lrs, wds = [], [], [], [], []
        where = {id(m): i for i, m in enumerate(self.master)}
        order = sorted((where[id(p)], g) for g in opt.param_groups for p in g["params"])
        for i, g in order:
            st = opt.state[self.master[i]]
            if not st:  # the state PyTorch's AdamW would create
                st["step"] = torch.tensor(0.0, dtype=torch.float32)
                st["exp_avg"] = torch.zeros_like(self.master[i], memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(self.master[i], memory_format=torch.preserve_format)
            m_ptrs.append(st["exp_avg"].data_ptr())
            v_ptrs.append(st["exp_avg_sq"].data_ptr())
            step_ptrs.append(st["step"].data_ptr())
            lrs.append(g["lr"])
            wds.append(g["weight_decay"])
        n = len(order)
        b1, b2 = opt.param_groups[0]["betas"]
        P = ctypes.c_void_p * n
        norm = lib.lmlab_adamw_step(n, self._c_offsets, self._c_sizes, self.flat_master.data_ptr(),
                                    self.flat_grad.data_ptr(), self.flat_model.data_ptr(), P(*m_ptrs), P(*v_ptrs),
                                    P(*step_ptrs), (ctypes.c_float * n)(*lrs), (ctypes.c_float * n)(*wds), b1, b2,
                                    opt.param_groups[0]["eps"], max_norm, torch.get_num_threads())
        if norm < 0:
            raise MemoryError("the fused optimizer step could not allocate its scratch memory")
        for p in self.model_params:
            p.grad = None
        return norm

    def named_master(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, fp32 weight) pairs: what a checkpoint should store."""
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        return iter(zip(names, self.master))

    def zero_grad(self) -> None:
        for p in self.model_params:
            p.grad = None
        if self.flat_grad is not None:
            self.flat_grad.zero_()
