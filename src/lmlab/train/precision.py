"""Numeric precision of training: fp32, bf16 autocast, or bf16 weights + fp32 master.

Why three modes: on CUDA, per-op autocast is the standard and fast way to use
bf16. On a CPU with bf16 matrix units (AMX), autocast's per-op casts cost more
than they save at small shapes, while bf16 matmuls themselves are several times
faster than fp32 (docs/benchmarks.md). `bf16-master` therefore keeps the model's weights in bf16 (so no
per-op casts) and the optimizer's weights in fp32 (so small updates are not
rounded away); after each step the fp32 masters are copied into the bf16
weights. Losses are always computed in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from lmlab.model import ops
from lmlab.model.cpu_kernels import FlatParams
from lmlab.train.hardware import cpu_has_fast_bf16

MODES = ("auto", "fp32", "bf16-autocast", "bf16-master")


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
        self.flat: FlatParams | None = None
        self._fused: bool | None = None  # the fused optimizer step was chosen (decided at the first step)
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
        offset = 0
        for p in self.model_params:
            k = p.numel()
            m = self.flat_master[offset:offset + k].view_as(p)
            m.copy_(p.detach())
            m.grad = self.flat_grad[offset:offset + k].view_as(p)
            self.master.append(m)
            bf = self.flat_model[offset:offset + k].view_as(p)
            bf.copy_(p.detach())
            p.data = bf  # the parameter now lives in the flat bf16 buffer
            offset += k
        self.flat = FlatParams(self.master, self.flat_master, self.flat_grad, self.flat_model)

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
        if self.mode == "bf16-master":
            ops.grads_to_master(self.flat, self.model_params, bool(self._fused))

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

    @torch.no_grad()
    def step(self, opt: torch.optim.Optimizer, max_norm: float, lr: float | None = None) -> float:
        """Set the learning rate (each group's `lr` times its `lr_scale`, muP's per-group factor), clip the
        gradients to `max_norm` (if > 0), step the optimizer, clear the gradients and refresh the model's
        weights; returns the gradient norm before clipping. Every trainer's step goes through here.

        With bf16 weights and fp32 masters on the CPU and a plain AdamW, the operations layer may take all of
        that as one fused C pass over the flat buffers (where it measured it faster); otherwise PyTorch's
        clipping, `opt.step()` and copies.
        """
        if lr is not None:
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
        if self.flat is not None:
            self._fused = ops.fused_optimizer(self.flat, opt)
        if not self._fused:
            norm = self.clip_grad_norm(max_norm)
            opt.step()
            self.zero_grad()
            self.master_to_model()
            return norm
        norm = self.flat.adamw_step(opt, max_norm)
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
