"""Plots written as PNG files (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

from lmlab.figures import pyplot, save_png


def read_metrics(path: str | Path) -> list[dict]:
    """The objects of a metrics.jsonl; anything else (a line cut by a kill, a stray value) is skipped: a plot
    of the readable rows beats no plot."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def plot_loss(metrics: str | Path, out: str | Path, title: str = "pretraining loss") -> Path:
    """Training loss per logged step, and train/val loss at each evaluation."""
    rows = read_metrics(metrics)
    train = [r for r in rows if "loss" in r and not r.get("eval")]
    evals = [r for r in rows if r.get("eval")]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, alpha=0.7, label="train (batch)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val")
        ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "s--", ms=3, label="train (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, out)
