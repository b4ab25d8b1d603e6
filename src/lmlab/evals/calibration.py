"""Is a model's confidence worth believing? Reliability bins, expected calibration error and their diagram.

A model is calibrated when, of the answers it gives with confidence c, a share c is right. The bins split
[0, 1] into equal widths; ECE is the bin-size-weighted mean gap |accuracy - confidence| over the bins
(Naeini et al. 2015; Guo et al. 2017, "On Calibration of Modern Neural Networks").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmlab.figures import pyplot, save_png


def reliability_bins(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> list[dict[str, Any]]:
    """Per equal-width bin: its edges, n, mean confidence and accuracy (None when empty).
    A confidence of exactly 1 falls in the last bin."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, c in enumerate(confidences):
        members[min(int(c * bins), bins - 1)].append(i)
    out = []
    for b, idx in enumerate(members):
        n = len(idx)
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "n": n,
                    "confidence": sum(confidences[i] for i in idx) / n if n else None,
                    "accuracy": sum(bool(correct[i]) for i in idx) / n if n else None})
    return out


def expected_calibration_error(bins: Sequence[dict[str, Any]]) -> float | None:
    """Sum over bins of (n_b / N) |accuracy_b - confidence_b|; None when every bin is empty."""
    total = sum(b["n"] for b in bins)
    if total == 0:
        return None
    return sum(b["n"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["n"])


def plot_reliability(bins: Sequence[dict[str, Any]], ece: float | None, out: str | Path, title: str = "") -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration, bins' sizes as labels."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    full = [b for b in bins if b["n"]]
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
    ax.bar([b["lo"] for b in full], [b["accuracy"] for b in full], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for b in full:
        ax.text(b["lo"] + width / 2, b["accuracy"] + 0.01, str(b["n"]), ha="center", va="bottom", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("confidence (exp mean token log-probability)")
    ax.set_ylabel("accuracy")
    ece_text = "n/a" if ece is None else f"{ece:.3f}"
    ax.set_title(f"{title} ECE {ece_text}".strip(), fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    return save_png(fig, out)
