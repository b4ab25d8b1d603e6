"""metrics.jsonl: one JSON object per logged step, written as a run goes, read back, drawn as a PNG.

Every training stage (pretraining and each post-training stage) writes it through `MetricsLog`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lmlab.figures import pyplot, save_png


def _row(line: str) -> dict[str, Any] | None:
    """One line as an object, or None for a line cut by a kill or anything else that is not one."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return row if isinstance(row, dict) else None


class MetricsLog:
    """Append rows, flushed as written; each row gets `elapsed_s` (since the log opened) unless it has its own.

    Resuming at `resume_step` keeps the rows up to that step and drops the rest (steps the resumed run will
    log again, or a line cut by the kill): the file then reads as one uninterrupted run.
    """

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        kept = []
        if resume_step > 0 and path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                row = _row(line)
                if row is None or not isinstance(row.get("step", 0), int):
                    break  # a line cut by a kill, or not one this log wrote: drop it and everything after
                if row.get("step", 0) <= resume_step:
                    kept.append(line)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in kept))
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.t0 = time.perf_counter()

    def write(self, row: dict[str, Any]) -> None:
        if "elapsed_s" not in row:
            row = {**row, "elapsed_s": round(time.perf_counter() - self.t0, 3)}
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The objects of a metrics.jsonl; anything else (a line cut by a kill, a stray value) is skipped: a plot
    of the readable rows beats no plot."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    return [row for row in map(_row, lines) if row is not None]


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


class NullLog:
    """The metrics log of a process other than rank 0 under torchrun: it writes nothing."""

    def write(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
