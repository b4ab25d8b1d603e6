"""What `lmlab size` is asked: the model, its precision, context and batch, the optimizer, the hardware.

A dataclass of its own so that the verb (plan/size.py) and the arithmetic it
calls (plan/memory.py, plan/compute.py) share it without importing each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from lmlab.errors import LmlabError

BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4}
"""Bits per stored weight at each precision (scales of quantized formats come on top)."""
OPTIMIZERS = ("adamw", "sgd", "adam8bit")


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
