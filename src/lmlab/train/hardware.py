"""A measured matmul peak (the denominator of MFU), cached per machine, and CPU allocator tuning."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from lmlab import cbuild
from lmlab.io import write_json

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


PEAK_REPEATS = 5
"""Timed rounds of a cached measurement; the best one is kept (a busy spell only ever slows a round down)."""


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 1024, seconds: float = 0.25) -> float | None:
    """This machine's matmul peak (FLOP/s), measured once and then read from the cache (`cached_peak`), or None
    where the hardware has no native peak for `dtype`."""
    return cached_peak(dtype, device, n, seconds)["flops"] if has_peak(dtype, device) else None


def peak_key(dtype: torch.dtype, device: torch.device, n: int) -> str:
    """What a peak depends on: the device, the dtype, the matrix size, torch's thread count and version."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    dtype_name = str(dtype).removeprefix("torch.")
    return f"{where}|{dtype_name}|n={n}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def peak_cache_file() -> Path:
    """`$LMLAB_CACHE/native/peaks-<cpu>.json`, beside the kernel choices measured on the same CPU."""
    return cbuild.cache_dir() / f"peaks-{cbuild.cpu_key()}.json"


def _read_peaks() -> dict[str, Any]:
    try:
        data = json.loads(peak_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_peak(dtype: torch.dtype, device: torch.device, n: int = 1024, seconds: float = 0.25,
                remeasure: bool = False) -> dict[str, Any]:
    """{"flops", "key", "measured_at", "repeats", "cache"}: the cached peak for this key, else the best of
    PEAK_REPEATS rounds, stored. A peak re-measured on every run moved MFU by a factor of two from run to
    run on a busy machine; measured once, the same model on the same machine reports the same MFU."""
    key = peak_key(dtype, device, n)
    entry = None if remeasure else _read_peaks().get(key)
    if not (isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float)) and entry["flops"] > 0):
        entry = {"flops": measure_matmul_peak(dtype, device, n, seconds, PEAK_REPEATS),
                 "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "repeats": PEAK_REPEATS}
        try:  # re-read just before writing: another process may have stored other keys meanwhile
            write_json(peak_cache_file(), {**_read_peaks(), key: entry})
        except OSError:
            pass  # a read-only cache: this process still uses what it measured
    return {**entry, "key": key, "cache": str(peak_cache_file())}


def measure_matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 1024, seconds: float = 0.25,
                        repeats: int = 1) -> float:
    """FLOP/s of a square n x n matmul in `dtype`, the best of `repeats` rounds of `seconds` each."""
    # A private generator: whether the peak was cached must not change the run's random stream.
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(max(1, repeats)):
        reps, start = 0, time.perf_counter()
        while True:
            a @ b
            reps += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if elapsed > seconds:
                break
        best = max(best, 2 * n**3 * reps / elapsed)
    return best


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
