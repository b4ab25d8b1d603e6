"""Matplotlib without a display, and figures saved atomically as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.io import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported on first use: it costs most of a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, out: str | Path) -> Path:
    """Lay out, write atomically, and close a figure."""
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)
    return out


def percent_axes(ax: Any, xlabel: str, ylabel: str = "%") -> None:
    """An axis of percentages, 0 to 100 with a little room for error bars, and a light grid."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
