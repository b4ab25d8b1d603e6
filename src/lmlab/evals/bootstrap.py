"""Percentile bootstrap intervals for a statistic of independent measurements (Efron 1979)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_interval(values, stat: Callable[[np.ndarray], float] = np.mean, resamples: int = 2000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of `stat` over resamples (with replacement) of `values` (a 1-D array, or
    a 2-D one whose rows are resampled together)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    stats = np.array([stat(x[i]) for i in idx])
    lo, hi = np.percentile(stats, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
