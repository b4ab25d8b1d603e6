"""Choosing one of N samples, and the expected accuracy of each rule at every N.

Rules (each returns the index of the chosen sample):

- best-of-N by a score: the mean or total token log-probability, a reward model's score, or any user
  scorer. The highest score wins; ties (and NaN scores, which rank last) go to the earliest sample.
- majority vote (self-consistency, Wang et al. 2022): the answer extracted most often wins. Samples with
  no extractable answer do not vote; if none has one, the pick has no answer and counts as wrong. Ties
  between answers are broken deterministically: the higher mean log-probability of their samples, then
  the answer that appeared first.
- oracle (pass@N): correct if any of the N is correct, the ceiling every rule is bounded by; computed
  exactly with the unbiased estimator of Chen et al. 2021, 1 - C(M - c, N) / C(M, N).

Accuracy at N < M (M samples drawn per prompt) is the average over subsets of size N: every sample
when N = 1, the whole set when N = M, otherwise `draws` random subsets (fixed seed). One draw of M
samples then serves every N, instead of drawing N fresh samples per point.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence

import numpy as np


def best_index(scores: Sequence[float]) -> int:
    """Index of the highest score; ties and NaNs resolved toward the earliest sample."""
    best, best_i = -math.inf, 0
    for i, s in enumerate(scores):
        if s is not None and not math.isnan(s) and s > best:
            best, best_i = s, i
    return best_i


def majority_vote(answers: Sequence[Hashable | None],
                  tiebreak: Sequence[float] | None = None) -> int | None:
    """Index of a sample carrying the winning answer (its first occurrence), or None if no sample has an
    answer. `tiebreak`: a per-sample score (e.g. mean log-prob); tied answers compare the mean of it."""
    votes: dict[Hashable, list[int]] = {}
    for i, a in enumerate(answers):
        if a is not None:
            votes.setdefault(a, []).append(i)
    if not votes:
        return None

    def key(item: tuple[Hashable, list[int]]) -> tuple:
        _, idx = item
        tb = 0.0
        if tiebreak is not None:
            vals = [tiebreak[i] for i in idx if tiebreak[i] is not None and not math.isnan(tiebreak[i])]
            tb = sum(vals) / len(vals) if vals else -math.inf
        return (len(idx), tb, -idx[0])

    return max(votes.items(), key=key)[1][0]


def pass_at(n_total: int, n_correct: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n_total is correct."""
    if n_total - n_correct < k:
        return 1.0
    return 1.0 - math.comb(n_total - n_correct, k) / math.comb(n_total, k)


def subsets(m: int, n: int, draws: int, rng: random.Random) -> list[list[int]]:
    """The index subsets of size n over which a rule's accuracy at N = n is averaged."""
    if n > m:
        raise ValueError(f"N = {n} is more than the {m} samples drawn")
    if n == m:
        return [list(range(m))]
    if n == 1:
        return [[i] for i in range(m)]
    return [sorted(rng.sample(range(m), n)) for _ in range(draws)]


def expected_accuracy(correct: Sequence[bool], pick, n: int, draws: int, seed: int) -> float:
    """Mean correctness of `pick(subset) -> index | None` over the subsets of size n of one prompt's
    samples (`correct[i]`: sample i is right)."""
    rng = random.Random(seed)
    hits = []
    for sub in subsets(len(correct), n, draws, rng):
        i = pick(sub)
        hits.append(bool(i is not None and correct[i]))
    return float(np.mean(hits))


def pick_best(scores: Sequence[float]):
    """A `pick` for `expected_accuracy`: best-of-N by `scores`."""
    return lambda sub: sub[best_index([scores[i] for i in sub])]


def pick_vote(answers: Sequence[Hashable | None], tiebreak: Sequence[float] | None = None):
    """A `pick` for `expected_accuracy`: majority vote over the subset's answers."""
    def pick(sub: list[int]) -> int | None:
        j = majority_vote([answers[i] for i in sub], None if tiebreak is None else [tiebreak[i] for i in sub])
        return None if j is None else sub[j]
    return pick
