"""Statistics of yes/no outcomes: a rate with its Wilson interval, and how well a score ranks the yeses.

Written out rather than taken from scipy or scikit-learn: each is a few lines, and lmlab depends on neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054
"""The standard normal quantile for a two-sided 95% interval."""


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for k successes in n trials (Wilson 1927; Brown, Cai & DasGupta 2001).

    Chosen over the normal approximation p +- z*sqrt(p(1-p)/n) because that one collapses to a point at
    p = 0 or 1 and leaves [0, 1] for small n, both common in a small evaluation.
    """
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 and k = n the bound is exactly 0 or 1; rounding would put it a hair inside.
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def rate(k: int, n: int) -> dict[str, float | int | list[float] | None]:
    """{"k", "n", "rate", "ci95"}: a share with its Wilson interval (rate and interval None when n = 0)."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci95": None}
    return {"k": k, "n": n, "rate": k / n, "ci95": list(wilson(k, n))}


def newcombe(k1: int, n1: int, k0: int, n0: int) -> tuple[float, float, float]:
    """(p1 - p0, low, high): the difference of two independent rates with Newcombe's hybrid score interval
    (Newcombe 1998, method 10), built from each rate's Wilson interval; it stays inside [-1, 1] at rates of
    0 and 1. With nothing counted on either side nothing was measured: 0 in the widest interval."""
    if n1 <= 0 or n0 <= 0:
        return 0.0, -1.0, 1.0
    p1, p0 = k1 / n1, k0 / n0
    (l1, u1), (l0, u0) = wilson(k1, n1), wilson(k0, n0)
    d = p1 - p0
    return d, d - math.hypot(p1 - l1, u0 - p0), d + math.hypot(u1 - p1, p0 - l0)


def format_rate(r: dict[str, Any]) -> str:
    """A `rate` as 'xx.x% [lo, hi]' in percent, padded so that columns of them line up; '-' when n = 0."""
    if r["rate"] is None:
        return "-"
    lo, hi = r["ci95"]
    return f"{100 * r['rate']:5.1f}% [{100 * lo:4.1f}, {100 * hi:5.1f}]"


def percent_bars(cells: Sequence[dict[str, Any] | None]) -> tuple[list[float], list[list[float]]]:
    """`rate`s as percentages and their intervals as matplotlib's yerr (below, above); NaN where n = 0."""
    ys, lo, hi = [], [], []
    for c in cells:
        empty = c is None or c["rate"] is None
        y = math.nan if empty else 100 * c["rate"]
        ys.append(y)
        lo.append(0.0 if empty else y - 100 * c["ci95"][0])
        hi.append(0.0 if empty else 100 * c["ci95"][1] - y)
    return ys, [lo, hi]


def _average_ranks(scores: Sequence[float]) -> list[float]:
    """1-based ranks of the scores, ascending, tied scores sharing the mean of their ranks."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for j in range(start, end + 1):
            ranks[order[j]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve: the chance that a random positive scores above a random negative, ties
    counted half (the Mann-Whitney U statistic over P * N, from rank sums). None without both classes."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    pos = sum(bool(y) for y in labels)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    ranks = _average_ranks(scores)
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def average_precision(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the precision-recall curve as a step sum: sum over thresholds of (gain in recall) x
    (precision there), each distinct score one threshold (so ties are flagged together, as in
    scikit-learn's average_precision_score). None without a positive. A random score's AP is about the
    positives' share."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    pos = sum(bool(y) for y in labels)
    if pos == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ap, tp, seen, i = 0.0, 0, 0, 0
    while i < len(order):
        j = i
        while j < len(order) and scores[order[j]] == scores[order[i]]:
            j += 1
        gained = sum(bool(labels[order[t]]) for t in range(i, j))
        tp += gained
        seen = j
        ap += gained / pos * tp / seen
        i = j
    return ap
