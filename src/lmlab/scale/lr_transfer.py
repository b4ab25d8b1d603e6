"""`lmlab scale lr-transfer`: does the best learning rate stay put as the model widens? SP vs muP.

The muP paper's headline figure at toy scale (Yang et al. 2022, "Tensor Programs V", fig. 1): for each
width, a sweep of learning rates at a fixed step budget, under standard parametrization (SP) and under
muP with the narrowest width as its base. Under SP the best learning rate drifts down as width grows
(the updates of wider matrices move the activations more); under muP it should stay where it was found
on the small model, which is what lets a sweep on a small model tune a large one. Every run is a CSV
row (resumable, like `lmlab scale sweep`); the plot shows loss against log2(lr), one curve per width.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.data.shards import TokenData
from lmlab.errors import LmlabError
from lmlab.figures import pyplot, save_png
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.rundir import locked_run
from lmlab.scale.sweep import prepare_corpus, pretrain_run, read_rows, write_rows

COLUMNS = ("parametrization", "width", "log2_lr", "lr", "loss", "train_loss", "params", "wall_s")


@dataclass
class LRTransferConfig:
    corpus: str = "world"
    """'world' (the built-in world), a text file or directory, or a directory of shards from `lmlab prepare`."""
    out: str = "runs/lr_transfer"
    """Run directory: data, one sub-directory per run, lr_transfer.csv and lr_transfer.png."""
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    """d_model of each model; the first is muP's base width. Every model has n_heads heads, so the head
    dimension grows with the width too."""
    n_layers: int = 2
    """Blocks in every model."""
    n_heads: int = 4
    """Attention heads in every model."""
    log2_lrs: list[float] = field(default_factory=lambda: [-12, -11, -10, -9, -8, -7, -6, -5, -4, -3])
    """Learning rates to try, as powers of two."""
    parametrizations: list[str] = field(default_factory=lambda: ["sp", "mup"])
    """Which parametrizations to sweep."""
    steps: int = 300
    """Optimizer steps per run (warmup 5%, cosine to lr/10)."""
    batch_size: int = 16
    """Sequences per step."""
    block_size: int = 64
    """Tokens per sequence."""
    eval_batches: int = 20
    """Validation batches for each run's final loss."""
    world_people: int = 4000
    """People in the built-in world."""
    threads: int | None = None
    """CPU threads for torch (None = torch's default)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    seed: int = 1337
    """Seed of every run's initialisation and batch order (the trainer's default)."""

    def __post_init__(self) -> None:
        if len(self.widths) < 2 or any(w < self.n_heads or w % self.n_heads for w in self.widths):
            raise LmlabError(f"widths must list at least two multiples of n_heads={self.n_heads}, got {self.widths}")
        if len(self.log2_lrs) < 3:
            raise LmlabError(f"log2_lrs needs at least 3 learning rates to locate a best one, got {self.log2_lrs}")
        for p in self.parametrizations:
            if p not in ("sp", "mup"):
                raise LmlabError(f"parametrizations must be 'sp' and/or 'mup', got {p!r}")
        for key in ("steps", "batch_size", "block_size", "eval_batches", "n_layers"):
            if getattr(self, key) < 1:
                raise LmlabError(f"{key} must be >= 1, got {getattr(self, key)}")


def best_log2_lr(points: list[tuple[float, float]]) -> float | None:
    """The learning rate (log2) of the lowest loss, refined by a parabola through it and its two neighbours
    on the grid (the grid's own point if it lies on an edge or the parabola opens downwards)."""
    pts = sorted((x, y) for x, y in points if math.isfinite(y))
    if not pts:
        return None
    i = min(range(len(pts)), key=lambda k: pts[k][1])
    if 0 < i < len(pts) - 1:
        (x0, y0), (x1, y1), (x2, y2) = pts[i - 1], pts[i], pts[i + 1]
        denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2 ** 2 * (y0 - y1) + x1 ** 2 * (y2 - y0) + x0 ** 2 * (y1 - y2)) / denom
        if a > 0:
            return min(max(-b / (2 * a), x0), x2)
    return pts[i][0]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best log2(lr) per width under each parametrization, and how far it moves from the narrowest to the
    widest model (in octaves: factors of two)."""
    out: dict[str, Any] = {}
    for par in sorted({r["parametrization"] for r in rows}):
        widths = sorted({int(r["width"]) for r in rows if r["parametrization"] == par})
        best = {w: best_log2_lr([(float(r["log2_lr"]), float(r["loss"])) for r in rows
                                 if r["parametrization"] == par and int(r["width"]) == w]) for w in widths}
        found = [b for b in best.values() if b is not None]
        lowest = {str(w): min((float(r["loss"]) for r in rows if r["parametrization"] == par and int(r["width"]) == w
                               and math.isfinite(float(r["loss"]))), default=None) for w in widths}
        out[par] = {"best_log2_lr": {str(w): b for w, b in best.items()}, "best_loss": lowest,
                    "shift_octaves": (best[widths[-1]] - best[widths[0]]) if len(found) == len(widths) else None,
                    "spread_octaves": (max(found) - min(found)) if found else None}
    return out


def plot(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    pars = [p for p in ("sp", "mup") if any(r["parametrization"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(pars), figsize=(5.5 * len(pars), 4.2), sharey=True, squeeze=False)
    finite = [float(r["loss"]) for r in rows if math.isfinite(float(r["loss"]))]
    top = min(max(finite), min(finite) + 2.5) if finite else None
    for ax, par in zip(axes[0], pars):
        widths = sorted({int(r["width"]) for r in rows if r["parametrization"] == par})
        for w in widths:
            pts = sorted((float(r["log2_lr"]), float(r["loss"])) for r in rows
                         if r["parametrization"] == par and int(r["width"]) == w)
            line, = ax.plot([x for x, _ in pts], [y if math.isfinite(y) else float("nan") for _, y in pts],
                            marker="o", ms=3, label=f"width {w}")
            best = summary[par]["best_log2_lr"].get(str(w))
            if best is not None:
                ax.axvline(best, color=line.get_color(), ls=":", lw=1)
        shift = summary[par]["shift_octaves"]
        ax.set_title(f"{'muP' if par == 'mup' else 'SP'}: best lr moves "
                     f"{'n/a' if shift is None else f'{shift:+.2f}'} octaves")
        ax.set_xlabel("log2(learning rate)")
        if top is not None:
            ax.set_ylim(min(finite) - 0.05, top)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("validation loss")
    return save_png(fig, path)


@locked_run
def lr_transfer(cfg: LRTransferConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_corpus(cfg.corpus, out, cfg.world_people)
    vocab = int(TokenData.read_meta(data)["vocab_size"])
    csv_path = out / "lr_transfer.csv"
    rows = read_rows(csv_path)
    done = {(r["parametrization"], int(r["width"]), float(r["log2_lr"])) for r in rows}
    grid = [(p, w, x) for p in cfg.parametrizations for w in cfg.widths for x in cfg.log2_lrs]
    todo = [g for g in grid if g not in done]
    print(f"lr-transfer: {len(grid)} runs ({len(grid) - len(todo)} already in {csv_path})", flush=True)
    for i, (par, width, x) in enumerate(todo, 1):
        model = dict(vocab_size=vocab, d_model=width, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                     max_seq_len=cfg.block_size, parametrization=par, mup_base_width=cfg.widths[0],
                     norm="layernorm", positions="learned", mlp="gelu", bias=False, tie_embeddings=False)
        params = Transformer(ModelConfig(**model)).count_params()["total"]
        lr, t = 2.0 ** x, time.perf_counter()
        try:
            s = pretrain_run(data, out / "runs" / f"{par}_w{width}_lr{x:g}", model, cfg.steps, cfg.batch_size,
                             cfg.block_size, lr, cfg.eval_batches, cfg.threads, cfg.device, cfg.seed)
            loss, train_loss = s["val_loss"], s["train_loss"]
        except LmlabError as e:  # a diverged run ("loss became nan") is a result, not a failure
            if "loss became" not in str(e):
                raise
            loss = train_loss = float("nan")
        rows.append({"parametrization": par, "width": width, "log2_lr": x, "lr": lr, "loss": loss,
                     "train_loss": train_loss, "params": params, "wall_s": round(time.perf_counter() - t, 2)})
        write_rows(csv_path, rows, COLUMNS)
        print(f"  [{i}/{len(todo)}] {par:>3} width {width:>4} lr 2^{x:g}: val loss {loss:.4f}", flush=True)
    summary = summarize(rows)
    png = plot(rows, summary, out / "lr_transfer.png")
    return {"csv": str(csv_path), "png": str(png), "runs": len(rows), **summary}


def format_lr_transfer(result: dict[str, Any]) -> str:
    """Per parametrization in the CSV: the best lr at each width and how far it moves as the model widens."""
    lines = []
    for par in ("sp", "mup"):
        s = result.get(par)
        if not s:
            continue
        best = ", ".join(f"{w}: 2^{b:.2f}" if b is not None else f"{w}: n/a" for w, b in s["best_log2_lr"].items())
        shift = s["shift_octaves"]
        lowest = ", ".join(f"{w}: {v:.3f}" for w, v in s["best_loss"].items() if v is not None)
        lines.append(f"{'muP' if par == 'mup' else 'SP':>3}: best lr by width {best}; narrowest -> widest moves "
                     f"{'n/a' if shift is None else f'{shift:+.2f}'} octaves; lowest loss by width {lowest}")
    lines.append(f"CSV {result['csv']}, plot {result['png']}")
    return "\n".join(lines) + "\n"
