"""Intervals for a statistic of independent measurements: the percentile bootstrap (Efron 1979), and
Student's t for the mean of a few values (one per seed)."""

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


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean of a few values, e.g. one per training seed; a single
    value has no spread to measure, so its interval is the point."""
    from scipy.stats import t  # scipy is a dependency; imported here so lmlab.evals loads without it

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean, mean
    half = float(t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half
