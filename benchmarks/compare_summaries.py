"""Are two quickstart runs the same run? Compare their summary.json, leaving out what only timing changes.

Used to check that a refactoring changed no number: run the quickstart at two commits with the same
seeds and the generic path (LMLAB_NATIVE=0, so no timing-dependent kernel choice can differ), then

    python benchmarks/compare_summaries.py BEFORE/summary.json AFTER/summary.json

It prints every differing value (by its dotted key) and exits 1 if there is one.
"""

from __future__ import annotations

import json
import sys
from typing import Any

TIMING = ("wall", "elapsed", "tokens_per_s", "mfu", "peak_flops", "seconds")
"""Keys holding a duration or a speed (or derived from one), and so different on every run; so do keys
ending in `_s` (seconds)."""
PLACES = ("ops", "ops_measured", "checkpoint", "out", "csv", "png", "path")
"""Keys naming where files went or which kernel ran: not results."""


def comparable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: comparable(v) for k, v in x.items()
                if not any(t in k for t in TIMING) and not k.endswith("_s") and k not in PLACES}
    if isinstance(x, list):
        return [comparable(v) for v in x]
    return x


def differences(a: Any, b: Any, key: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in
                (differences(a[k], b[k], f"{key}.{k}") if k in a and k in b else [f"{key}.{k}: in one only"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (u, v) in enumerate(zip(a, b)) for d in differences(u, v, f"{key}[{i}]")]
    return [] if a == b else [f"{key}: {a!r} != {b!r}"]


def leaves(x: Any) -> int:
    if isinstance(x, dict):
        return sum(map(leaves, x.values()))
    return sum(map(leaves, x)) if isinstance(x, list) else 1


def main(before: str, after: str) -> int:
    a, b = (comparable(json.load(open(p, encoding="utf-8"))) for p in (before, after))
    found = differences(a, b)
    print(f"{leaves(a)} values compared, {len(found)} differ")
    print("\n".join(found))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
