"""Device choice and a quick measured matmul peak (the denominator of MFU)."""

from __future__ import annotations

import time

import torch


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def measure_matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 1024, seconds: float = 0.25) -> float:
    """FLOP/s of a square n x n matmul in `dtype`: a stated, reproducible peak for MFU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed > seconds:
            return 2 * n**3 * reps / elapsed
