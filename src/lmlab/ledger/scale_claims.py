"""Claims about scale: Chinchilla's 20 tokens per parameter, power-law returns, muP's learning-rate transfer.

Two experiments, run with lmlab's own scaling verbs on the built-in world (4000 people, BPE 1024, 2.25 M
training tokens), each at three seeds (ctx.seed, +1, +2: initialisation, batch order, validation windows):

- an IsoFLOP sweep (`lmlab scale sweep`): GPT-style models 16x2 ... 128x4 (24 k to 927 k parameters) at
  budgets of 1e11, 3e11 and 1e12 FLOPs, then Hoffmann et al.'s parametric law L = E + A/N^alpha + B/D^beta
  fitted to the three seeds' runs pooled (`lmlab scale fit`, bootstrap over runs). It answers two claims:
  the compute-optimal tokens per parameter, and the exponents of N and D.
- an lr sweep under SP and muP (`lmlab scale lr-transfer`): widths 32, 64, 128 (2 layers, 4 heads, muP's base
  width 32), learning rates 2^-9 ... 2^-4, 300 steps of 16 x 64 tokens. The best lr of each width comes from
  a parabola through the three best grid points; its shift from width 32 to 128 is taken per seed, and the
  interval is Student-t over the three seeds.

Why these sizes (20 minutes on a 2-core CPU for the three claims, one thread per run): the default sweep's
3e12 budget alone costs about 2/3 of its time, so it is left out in favour of three seeds of the three smaller
budgets; runs with more than 100 tokens per parameter are skipped (they would read the corpus more than 2.5
times, and the 16x2 model at 1e12 FLOPs is the sweep's slowest run). The lr sweep keeps the 300 steps of
docs/benchmarks.md, where SP's best lr fell about an octave per doubling of width, drops width 256 (as costly
as the three others together) and uses a one-octave grid that brackets every optimum seen there. At the base
width muP is SP (tests/test_mup.py), so muP's width-32 runs are SP's, not trained twice. Measured on a shared
AMX CPU: 10.0 CPU-minutes for the three claims (the sweep's 42 runs and its fit about 4.7, the lr sweep's
3 x 30 runs about 5.3), 23.7 minutes of wall time while the run got 42% of a core.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.evals.bootstrap import t_interval
from lmlab.figures import pyplot, save_png
from lmlab.ledger.claims import Claim, Row, plot_path
from lmlab.scale.fit import FitConfig, fit
from lmlab.scale.laws import RULE_TOKENS_PER_PARAM
from lmlab.scale.lr_transfer import LRTransferConfig, lr_transfer, summarize
from lmlab.scale.sweep import SweepConfig, prepare_corpus, read_rows, sweep, write_rows

SEEDS = 3
WORLD = {"full": dict(world_people=4000, vocab_size=1024), "tiny": dict(world_people=24, vocab_size=300)}
SWEEP = {
    "full": dict(models=["16x2", "32x2", "48x2", "64x3", "96x3", "128x4"], budgets=[1e11, 3e11, 1e12],
                 max_tokens_per_param=100.0),
    "tiny": dict(models=["16x1", "32x1"], budgets=[3e8, 1e9], min_steps=5, batch_size=4, block_size=32,
                 eval_batches=2),
}
BOOTSTRAP = {"full": 200, "tiny": 10}
LR = {
    "full": dict(widths=[32, 64, 128], log2_lrs=[-9, -8, -7, -6, -5, -4], steps=300),
    "tiny": dict(widths=[16, 32], n_heads=2, log2_lrs=[-8, -6, -4], steps=5, batch_size=4, block_size=32,
                 eval_batches=2),
}
RATIO_FACTOR = 4.0
"""The ratio counts as pinned down when its interval spans at most this factor (high / low)."""
RMS_POWER_LAW = 0.05
"""The law describes the losses when it misses them by at most this rms share (Hoffmann et al.'s fits, and this
repository's on tinyshakespeare, are within about 2%)."""
TRANSFER_OCTAVES = 1.0
"""muP transfers when its shift's interval stays within +-1 octave: the small model's lr is within a factor 2 of
the large one's best, where a one-octave lr grid cannot tell the two apart and the loss curve is flat."""


# ---- shared runs -------------------------------------------------------------------------------------

def _tag(settings: dict[str, Any]) -> str:
    """A short hash of a run's settings: changed settings get a fresh directory instead of stale CSV rows."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def _seeds(ctx: Any) -> list[int]:
    return [ctx.seed + k for k in range(SEEDS)]


def _data(ctx: Any) -> Path:
    """Token shards of the built-in world, made once and shared by both experiments."""
    if "scale_data" not in ctx.memo:
        w = WORLD[ctx.size]
        ctx.memo["scale_data"] = prepare_corpus("world", ctx.workdir("scale") / f"world-{_tag(w)}",
                                                w["world_people"], vocab_size=w["vocab_size"])
    return ctx.memo["scale_data"]


def _sweep(ctx: Any) -> dict[str, Any]:
    """The IsoFLOP sweep at each seed, pooled into one CSV, and `lmlab scale fit` on it (made once)."""
    if "scale_fit" in ctx.memo:
        return ctx.memo["scale_fit"]
    data = _data(ctx)
    settings = {**SWEEP[ctx.size], "data": str(data)}
    root = ctx.workdir("scale") / f"sweep-{_tag(settings)}"
    pooled = []
    for seed in _seeds(ctx):
        cfg = SweepConfig(corpus=str(data), out=str(root / f"seed{seed}"), threads=1, device="cpu", seed=seed,
                          **SWEEP[ctx.size])
        sweep(cfg)
        pooled += [{**r, "seed": seed} for r in read_rows(Path(cfg.out) / "sweep.csv")]
    csv = root / "sweep_pooled.csv"
    write_rows(csv, pooled, (*pooled[0].keys(),))
    result = fit(FitConfig(csv=str(csv), bootstrap=BOOTSTRAP[ctx.size], seed=ctx.seed, out=str(root)))
    ctx.memo["scale_fit"] = {**result, "rows": pooled, "per_seed": len(pooled) // SEEDS}
    return ctx.memo["scale_fit"]


def _lr_runs(ctx: Any) -> dict[int, list[dict[str, Any]]]:
    """Per seed, the lr sweep's rows under SP and muP (muP's base width copied from SP: the same model)."""
    if "scale_lr" in ctx.memo:
        return ctx.memo["scale_lr"]
    data = _data(ctx)
    settings = {**LR[ctx.size], "data": str(data)}
    root = ctx.workdir("mup-lr-transfer") / f"lr-{_tag(settings)}"
    out: dict[int, list[dict[str, Any]]] = {}
    for seed in _seeds(ctx):
        base = dict(corpus=str(data), out=str(root / f"seed{seed}"), threads=1, device="cpu", seed=seed,
                    **LR[ctx.size])
        rows = lr_transfer(LRTransferConfig(**base, parametrizations=["sp"]))
        _copy_base_width(Path(rows["csv"]), LR[ctx.size]["widths"][0])
        out[seed] = read_rows(Path(lr_transfer(LRTransferConfig(**base, parametrizations=["mup"]))["csv"]))
    ctx.memo["scale_lr"] = out
    return out


def _copy_base_width(csv: Path, width: int) -> None:
    """Add SP's rows at muP's base width as muP rows (lr_transfer then skips them as done)."""
    rows = read_rows(csv)
    have = {(r["parametrization"], r["width"], r["log2_lr"]) for r in rows}
    new = [{**r, "parametrization": "mup"} for r in rows if r["parametrization"] == "sp" and int(r["width"]) == width
           and ("mup", r["width"], r["log2_lr"]) not in have]
    if new:
        write_rows(csv, rows + new, (*rows[0].keys(),))


# ---- statistics and verdict rules --------------------------------------------------------------------

def ratio_verdict(low: float, high: float, target: float = RULE_TOKENS_PER_PARAM) -> tuple[str, str]:
    """(verdict, condition) for the compute-optimal ratio's interval against the rule's 20."""
    if not low <= target <= high:
        return "does not hold", ""
    if high <= RATIO_FACTOR * low:
        return "holds", ""
    return "holds only", (f"as an order of magnitude: the interval ({low:.3g} to {high:.3g} tokens per parameter) "
                          f"is too wide to tell 20 from {low:.2g} or {high:.2g}")


def exponents_verdict(intervals: dict[str, list[float]], rms: float) -> tuple[str, str]:
    """(verdict, condition): every exponent's interval above 0 means loss keeps falling with N and with D as a
    power law, and such a law buys less with each 10x (each decade's gain is 10^-alpha times the one before, for
    any alpha > 0, so no upper bound on the exponent is needed); 'holds only' when the law misses the measured
    losses by more than RMS_POWER_LAW: then the power law is a rough description of them, not their law."""
    if not all(lo > 0 for lo, _ in intervals.values()):
        return "does not hold", ""
    if rms > RMS_POWER_LAW:
        return "holds only", f"as a rough description: the fitted law misses the measured losses by {rms:.0%} rms"
    return "holds", ""


def transfer_verdict(mup: tuple[float, float], sp: tuple[float, float], complete: bool) -> tuple[bool, bool, str]:
    """(muP transfers, SP drifts, verdict) from the two shifts' 95% intervals (low, high), in octaves.

    muP transfers: its interval lies within +-TRANSFER_OCTAVES. SP drifts: its interval excludes 0 and does
    not overlap muP's. The claim holds when both do, at every seed (`complete`)."""
    transfers = -TRANSFER_OCTAVES <= mup[0] and mup[1] <= TRANSFER_OCTAVES
    drifts = (sp[1] < 0 or sp[0] > 0) and (sp[1] < mup[0] or sp[0] > mup[1])
    return transfers, drifts, "holds" if complete and transfers and drifts else "does not hold"


def _bounded(lo: float | None, hi: float | None, value: float) -> tuple[float, float]:
    """A bootstrap interval that contains its point estimate; a missing bound (refits without a finite ratio)
    stands as 0 below, or 1e9 above: unbounded for any purpose here."""
    lo = 0.0 if lo is None else lo
    hi = 1e9 if hi is None else hi
    return min(lo, value), max(hi, value)


# ---- claims ------------------------------------------------------------------------------------------

def _sweep_sentence(ctx: Any, res: dict[str, Any]) -> str:
    budgets = ", ".join(f"{b['budget']:.0e}" for b in res["budgets"])
    tiny = " (tiny size: a 24-person world, two one-layer widths, steps in the tens)" if ctx.size == "tiny" else ""
    return (f"an IsoFLOP sweep on the built-in world at budgets of {budgets} FLOPs, {res['per_seed']} runs per seed "
            f"at seeds {_seeds(ctx)} ({res['runs']} runs), with L = E + A/N^alpha + B/D^beta fitted to all{tiny}")


def _boot_text(ctx: Any, res: dict[str, Any]) -> str:
    return (f"percentile bootstrap over {res['bootstrap']['resamples']} resamples of the {res['runs']} runs pooled "
            f"from seeds {_seeds(ctx)} (resample seed {ctx.seed}), each refitted")


def chinchilla_ratio(ctx: Any) -> Row:
    res = _sweep(ctx)
    at = [r for r in res["tokens_per_param"] if r["where"] == "sweep"]
    top = at[-1]  # the largest budget: the most compute this sweep speaks for
    value = top["tokens_per_param"]
    if value is None:
        value, (low, high) = 0.0, (0.0, 1e9)
    else:
        low, high = _bounded(*top["interval"], value)
    verdict, condition = ratio_verdict(low, high)
    path, link = plot_path(ctx, "chinchilla-20-tokens-per-param")
    shutil.copyfile(res["png"], path)
    best = {f"{b['budget']:.0e}": round(b["best_tokens"] / b["best_params"], 2) for b in res["budgets"]}
    return Row(value=value, low=low, high=high, unit=f"compute-optimal tokens per parameter at {top['flops']:.2g} "
               "FLOPs (fitted law)", verdict=verdict, condition=condition,
               measured=_sweep_sentence(ctx, res) + f"; the sweep's best run per budget has {best} tokens/param",
               interval=_boot_text(ctx, res), plot=link,
               details={"ratio_by_budget": [{"flops": float(f"{r['flops']:.3g}"), "where": r["where"],
                                             "tokens_per_param": _r(r["tokens_per_param"]),
                                             "interval": [_r(x) for x in r["interval"]]}
                                            for r in res["tokens_per_param"]],
                        "ratio_exponent": _r(res["ratio_exponent"]), "best_run_tokens_per_param": best,
                        "rms_relative_error": _r(res["fit_quality"]["rms_relative_error"]),
                        "warnings": res["warnings"], "summary": res["summary"]})


def diminishing_returns(ctx: Any) -> Row:
    res = _sweep(ctx)
    p, ci, rms = res["params"], res["intervals"], res["fit_quality"]["rms_relative_error"]
    intervals = {k: [ci[k][0] if ci[k][0] is not None else 0.0, ci[k][1] if ci[k][1] is not None else 5.0]
                 for k in ("alpha", "beta")}
    verdict, condition = exponents_verdict(intervals, rms)
    low, high = min(intervals["alpha"][0], p["alpha"]), max(intervals["alpha"][1], p["alpha"])
    link = _plot_terms(ctx, res)
    b_lo, b_hi = intervals["beta"]
    return Row(value=p["alpha"], low=low, high=high, unit="alpha: exponent of N in the fitted law (beta, of D, "
               "in 'measured')", verdict=verdict, condition=condition,
               measured=_sweep_sentence(ctx, res) + f"; beta = {p['beta']:.3g} [{b_lo:.3g}, {b_hi:.3g}], the law "
               f"misses the losses by {rms:.1%} rms",
               interval=_boot_text(ctx, res), plot=link,
               details={"params": {k: _r(v) for k, v in p.items()},
                        "intervals": {k: [_r(x) for x in v] for k, v in ci.items()},
                        "rms_relative_error": _r(rms),
                        "max_relative_error": _r(res["fit_quality"]["max_relative_error"]),
                        "loss_drop_per_10x": {"N": _r(1 - 10 ** -p["alpha"]), "D": _r(1 - 10 ** -p["beta"])},
                        "interval_below_1": {k: hi < 1 for k, (_, hi) in intervals.items()},
                        "warnings": res["warnings"]})


def _plot_terms(ctx: Any, res: dict[str, Any]) -> str:
    """Each run's loss less the law's other two terms, against N and against D: the fitted power laws."""
    p = res["params"]
    rows = res["rows"]
    n, d, loss = (np.array([float(r[k]) for r in rows]) for k in ("params", "tokens", "loss"))
    path, link = plot_path(ctx, "diminishing-returns")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    terms = (("N (parameters)", n, p["A"], p["alpha"], p["B"] / d ** p["beta"]),
             ("D (tokens)", d, p["B"], p["beta"], p["A"] / n ** p["alpha"]))
    for ax, (name, x, a, e, other) in zip(axes, terms):
        part = loss - p["E"] - other
        keep = part > 0
        ax.scatter(x[keep], part[keep], s=14, color="tab:blue", label="runs: loss - E - other term (<= 0: not shown)")
        grid = np.geomspace(x.min(), x.max(), 50)
        ax.plot(grid, a / grid ** e, color="black", label=f"{a:.3g} / x^{e:.3f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(name)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("reducible loss (nats/token)")
    save_png(fig, path)
    return link


def mup_transfer(ctx: Any) -> Row:
    runs = _lr_runs(ctx)
    per_seed = {seed: summarize(rows) for seed, rows in runs.items()}
    shifts = {par: [s[par]["shift_octaves"] for s in per_seed.values()] for par in ("sp", "mup")}
    complete = all(x is not None for v in shifts.values() for x in v)
    stats = {par: t_interval([x for x in v if x is not None] or [0.0]) for par, v in shifts.items()}
    transfers, drifts, verdict = transfer_verdict(stats["mup"][1:], stats["sp"][1:], complete)
    widths = LR[ctx.size]["widths"]
    link = _plot_lr(ctx, runs, per_seed)
    sp_mean, sp_lo, sp_hi = stats["sp"]
    tiny = " (tiny size: 5-step runs)" if ctx.size == "tiny" else ""
    return Row(value=stats["mup"][0], low=stats["mup"][1], high=stats["mup"][2],
               unit=f"octaves the best lr moves from width {widths[0]} to {widths[-1]} under muP", verdict=verdict,
               measured=(f"loss against log2(lr) at widths {widths} under SP and muP, {len(runs)} seeds{tiny}; "
                         f"under SP the best lr moves {sp_mean:+.2f} [{sp_lo:+.2f}, {sp_hi:+.2f}] octaves"),
               interval=f"Student-t 95% over the per-seed shifts, seeds {_seeds(ctx)}", plot=link,
               details={"shift_by_seed": {p: [_r(x) for x in v] for p, v in shifts.items()},
                        "sp_shift": [_r(x) for x in stats["sp"]], "mup_transfers": transfers, "sp_drifts": drifts,
                        "best_log2_lr": {p: {str(seed): {w: _r(b) for w, b in s[p]["best_log2_lr"].items()}
                                             for seed, s in per_seed.items()} for p in ("sp", "mup")},
                        "config": LR[ctx.size]})


def _plot_lr(ctx: Any, runs: dict[int, list[dict[str, Any]]], per_seed: dict[int, dict[str, Any]]) -> str:
    """Validation loss against log2(lr), one line per width and seed, a panel per parametrization."""
    path, link = plot_path(ctx, "mup-lr-transfer")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110, sharey=True)
    widths = LR[ctx.size]["widths"]
    colors = dict(zip(widths, plt.cm.viridis(np.linspace(0, 0.85, len(widths)))))
    for ax, par in zip(axes, ("sp", "mup")):
        for k, (seed, rows) in enumerate(runs.items()):
            for w in widths:
                pts = sorted((float(r["log2_lr"]), float(r["loss"])) for r in rows
                             if r["parametrization"] == par and int(r["width"]) == w)
                ax.plot(*zip(*pts), marker="o", ms=3, lw=1, alpha=0.8, color=colors[w],
                        label=f"width {w}" if k == 0 else None)
                best = per_seed[seed][par]["best_log2_lr"].get(str(w))
                if best is not None:
                    ax.axvline(best, color=colors[w], ls=":", lw=0.8)
        ax.set_title("muP" if par == "mup" else "SP (standard)")
        ax.set_xlabel("log2(learning rate)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("validation loss (one line per seed; dotted: best lr)")
    save_png(fig, path)
    return link


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else float(f"{x:.{digits}g}")


CLAIMS = [
    Claim("chinchilla-20-tokens-per-param", "About 20 training tokens per parameter is compute-optimal.",
          "Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models' (Chinchilla)",
          "The compute-optimal tokens per parameter of Chinchilla's parametric law fitted to an IsoFLOP sweep, at "
          "the sweep's largest budget, with a bootstrap interval: holds if the interval contains 20 (and spans at "
          "most a factor 4; wider: holds only as an order of magnitude), else does not hold at this scale.",
          chinchilla_ratio),
    Claim("diminishing-returns", "Loss falls as a power law in parameters and data: each 10x buys less.",
          "Kaplan et al. 2020, 'Scaling Laws for Neural Language Models'; Hoffmann et al. 2022 (Chinchilla)",
          "The exponents alpha (N) and beta (D) of L = E + A/N^alpha + B/D^beta fitted to an IsoFLOP sweep: holds if "
          "both bootstrap intervals lie above 0 (a power law with a positive exponent buys less with each 10x) and "
          "the law misses the losses by at most 5% rms (more: holds only as a rough description).",
          diminishing_returns),
    Claim("mup-lr-transfer", "Hyperparameters tuned on a small model transfer to a larger one under muP, and not "
          "under the standard parametrization.",
          "Yang et al. 2022, 'Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter "
          "Transfer' (muP)",
          "The best learning rate's shift from the narrowest to the widest model of an lr sweep, under muP and SP: "
          "holds if muP's interval lies within +-1 octave and SP's excludes 0 and does not overlap muP's.",
          mup_transfer),
]
