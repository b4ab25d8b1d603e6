"""A quick measured matmul peak (the denominator of MFU) and CPU allocator tuning."""

from __future__ import annotations

import os
import time

import torch

from lmlab import cbuild

_NO_BF16_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
"""oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) below its bf16 kernels: with one, bf16 runs as fp32."""


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16) and oneDNN may use them
    (ONEDNN_MAX_CPU_ISA can cap it below them, which is also how a plain CPU is imitated on this one)."""
    flags = cbuild.cpu_info()["flags"]
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return ("amx_bf16" in flags or "avx512_bf16" in flags) and cap not in _NO_BF16_ISAS


def has_peak(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the hardware has a native peak for `dtype`: a CPU without bf16 units runs bf16 matmuls by
    converting to fp32, and an MFU against that "peak" would be nonsense."""
    return device.type != "cpu" or dtype != torch.bfloat16 or cpu_has_fast_bf16()


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 1024, seconds: float = 0.25) -> float | None:
    """`measure_matmul_peak`, or None where the hardware has no native peak for `dtype`."""
    return measure_matmul_peak(dtype, device, n, seconds) if has_peak(dtype, device) else None


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


def tune_cpu_allocator() -> bool:
    """Keep freed tensor memory in the process instead of returning it to the OS (glibc only).

    A training step allocates and frees the same few hundred-kilobyte activation
    buffers every time. glibc serves blocks above its mmap threshold with fresh
    mmap() calls and trims the heap eagerly, so each step page-faults hundreds
    of times (measured here: ~450 minor faults per step of the Shakespeare
    benchmark, ~2 after this call) and loses several percent of its time.
    Raising both thresholds (what jemalloc/tcmalloc preloading achieves) is safe:
    peak memory is unchanged, only its return to the OS is deferred.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) == 1
    return libc.mallopt(m_trim_threshold, 1 << 30) == 1 and ok
