"""Weight-only int8 quantisation for inference: 4x smaller linear weights, the same activations.

Decoding one token at a time reads every weight once per token, so on a CPU it
is bound by memory bandwidth, not arithmetic: int8 weights (with one fp scale
per output row) move a quarter of the bytes of fp32. The matmul runs in
PyTorch's `_weight_int8pack_mm` kernel with bf16 activations; the change in
outputs is small and is measured (see `benchmarks/generate_vs_hf.py` and tests).
"""

from __future__ import annotations

import torch
import torch.nn as nn

AVAILABLE = hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as int8 rows times per-row scales (symmetric, absmax / 127)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.register_buffer("weight_int8", torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scales).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear but a MoE router (the output head included; a tied embedding table stays fp) in place."""
    if not AVAILABLE:
        raise RuntimeError("this PyTorch has no _weight_int8pack_mm kernel; int8 weights need PyTorch >= 2.4")
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            # A mixture-of-experts router stays in full precision: it is tiny, and rounding its scores
            # could send tokens to different experts.
            if isinstance(child, nn.Linear) and child_name != "router":
                setattr(module, child_name, Int8Linear(child))
    return model
