"""Which implementation of an op runs: chosen by measurement, on the CPU at hand and at the shapes at hand.

A fused kernel is worth having only where it beats PyTorch's own op, and that depends on the CPU (the
kernels win on an AVX-512/AMX Intel and lose on an AVX2-only AMD), on the shapes and on the thread
count. So the first time an op meets a new signature (shapes, with the row count rounded up to a power
of two; dtype; whether gradients are needed; threads), both implementations run on random inputs of
that signature, in alternating rounds, and the fused kernel is kept only if its median time is lower
(the idea of `torch.backends.cudnn.benchmark`). Choices are kept in memory and in
`$LMLAB_CACHE/native/choices-<cpu>.json`, keyed by the kernels' build, the torch version and the
thread count, so a kind of machine pays for each measurement once. Inputs come from a private
generator: measuring never moves the global random state a run depends on.

Every call is counted under the path it took and why (`calls()`), and every measurement is kept
(`measured()`), for the run's log and `lmlab doctor`.

`LMLAB_NATIVE`: `0` = PyTorch's ops everywhere; unset or `1` = measure; `force` = the kernels wherever
they can run (what the kernels' own tests and benchmarks compare).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from lmlab import cbuild
from lmlab.io import write_json

MARGIN = 0.98
"""The fused kernel is chosen only if its median time is below this share of PyTorch's: a tie keeps the
plain path, which every machine has."""

_choices: dict[tuple, bool] = {}
_measured: dict[str, dict] = {}
_calls: Counter = Counter()
_disk: dict[str, dict] | None = None
_build_id = ""


def mode() -> str:
    """'off', 'measure' or 'force', from LMLAB_NATIVE."""
    value = os.environ.get("LMLAB_NATIVE", "1").strip().lower()
    return {"0": "off", "off": "off", "force": "force"}.get(value, "measure")


def set_build(build_id: str) -> None:
    """Name the kernels' build (source, flags, CPU, architecture): measurements of another build are not reused."""
    global _build_id
    _build_id = build_id


def bucket(n: int) -> int:
    """n rounded up to a power of two: shapes that differ only in row count share one measurement."""
    return 1 << max(0, int(n) - 1).bit_length()


def count(op: str, impl: str, why: str) -> None:
    """Count one call of `op` by `impl`. Not inside torch.compile: the compiler would guard on the count and
    compile the graph again at every call, until it gave up and ran eagerly."""
    if torch.compiler.is_compiling():
        return
    _calls[(op, impl, why)] += 1


def calls() -> list[dict]:
    """How many calls of each op took each path, and why."""
    return [{"op": op, "impl": impl, "why": why, "calls": n} for (op, impl, why), n in sorted(_calls.items())]


def measured() -> list[dict]:
    """Every measurement this process made or read from the cache, fastest path first named."""
    return list(_measured.values())


def reset() -> None:
    """Forget the counts (a new run); choices stay."""
    _calls.clear()


def _cache_file() -> Path:
    return cbuild.cache_dir() / f"choices-{cbuild.cpu_key()}.json"


def _load_disk() -> dict[str, dict]:
    global _disk
    if _disk is None:
        try:
            _disk = json.loads(_cache_file().read_text())
            if not isinstance(_disk, dict):
                _disk = {}
        except (OSError, ValueError):
            _disk = {}
    return _disk


def _save(key: str, entry: dict) -> None:
    disk = _load_disk()
    disk[key] = entry
    try:
        current = json.loads(_cache_file().read_text()) if _cache_file().exists() else {}
        if isinstance(current, dict):
            disk = {**current, **disk}
        write_json(_cache_file(), disk)
    except (OSError, ValueError):
        pass  # a read-only cache: the choice still holds for this process


def torch_capability() -> str:
    """The instruction set torch's own kernels run with (ATEN_CPU_CAPABILITY can lower it)."""
    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return get() if get else "?"


def time_pair(native: Callable[[], object], plain: Callable[[], object], rounds: int = 7,
              min_seconds: float = 0.002) -> tuple[float, float]:
    """Median seconds per call of each, measured in alternating rounds (so a slow spell hits both)."""
    for fn in (native, plain, native, plain):
        fn()
    t = time.perf_counter()
    plain()
    one = max(time.perf_counter() - t, 1e-6)
    reps = max(1, min(200, int(min_seconds / one)))
    times: dict[str, list[float]] = {"native": [], "torch": []}
    for _ in range(rounds):
        for name, fn in (("native", native), ("torch", plain)):
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - t) / reps)
    return statistics.median(times["native"]), statistics.median(times["torch"])


def choose(op: str, sig: tuple, bench: Callable[[torch.Generator], tuple[Callable, Callable]]) -> bool:
    """True when the fused kernel should run for `op` at signature `sig`. `bench(generator)` builds the
    two candidates (fused, PyTorch) on random inputs of that signature; it is called only the first time
    this machine meets the signature. Called on every op: a dict lookup after the first time."""
    memo = (op, sig)
    hit = _choices.get(memo)
    if hit is not None:
        return hit
    m = mode()
    if m != "measure":
        _choices[memo] = m == "force"
        return _choices[memo]
    threads = torch.get_num_threads()
    key = f"{op}|{sig}|threads={threads}|{_build_id}|torch={torch.__version__}/{torch_capability()}"
    entry = _load_disk().get(key)
    if not isinstance(entry, dict) or not {"native_us", "torch_us"} <= entry.keys():
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            native, plain = bench(torch.Generator().manual_seed(0))
            t_native, t_torch = time_pair(native, plain)
        entry = {"op": op, "signature": str(sig), "threads": threads, "native_us": round(t_native * 1e6, 2),
                 "torch_us": round(t_torch * 1e6, 2)}
        entry["impl"] = "native" if t_native < MARGIN * t_torch else "torch"
        _save(key, entry)
    entry = {**entry, "impl": "native" if entry["native_us"] < MARGIN * entry["torch_us"] else "torch"}
    _measured[key] = entry
    _choices[memo] = entry["impl"] == "native"
    return _choices[memo]


def forget() -> None:
    """Drop the in-memory choices (tests; a changed LMLAB_NATIVE)."""
    global _disk
    _choices.clear()
    _measured.clear()
    _disk = None
