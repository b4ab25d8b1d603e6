"""`lmlab scale fit`: fit L(N, D) = E + A/N^alpha + B/D^beta to a sweep's measured losses, as Hoffmann et al.
(2022, Approach 3) did, with bootstrap confidence intervals.

The fit minimises, over runs i,

    sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),   delta = 1e-3,

with A = exp(a), B = exp(b), E = exp(e). Working in log space makes every run count in relative terms, and the
log-sum-exp is log(A/N^alpha + B/D^beta + E) written so that it never overflows. The Huber loss with a tiny
delta is nearly an absolute-error loss, which keeps one diverged run from dragging the whole law. The
objective has many local minima, hence Hoffmann's grid of starting points, the best of whose L-BFGS-B
solutions is kept.

Point estimates alone mislead at toy scale (a handful of runs pin the exponents down poorly), so the runs
are resampled with replacement and refitted; percentile intervals over the refits are reported for every
parameter and for the implied compute-optimal tokens-per-parameter ratio.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lmlab.errors import LmlabError
from lmlab.figures import pyplot, save_png
from lmlab.io import write_json
from lmlab.scale.laws import RULE_TOKENS_PER_PARAM, Law, sci

DELTA = 1e-3
"""Huber delta of Hoffmann et al.: residuals of log loss above 0.1% count linearly."""
GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 25.1, 5.0),
    "b": np.arange(0.0, 25.1, 5.0),
}
"""Hoffmann et al.'s starting points: alpha, beta in {0, 0.5, ..., 2}, e in {-1, ..., 1}, a, b in {0, 5, ..., 25}
(4,500 points)."""
STARTS = 48
"""L-BFGS-B runs from this many grid points, the best-scoring ones (see `fit_law`)."""
BOOTSTRAP_GRID_STARTS = 1
"""Each bootstrap refit starts from the full-data optimum and from this many of the best full-data grid points
(more rarely change anything but the time taken)."""
BOUNDS = [(-30.0, 60.0), (-30.0, 60.0), (-10.0, 10.0), (0.0, 5.0), (0.0, 5.0)]
"""Box for (a, b, e, alpha, beta): wide enough for any plausible law, and it stops exp(a) from overflowing."""
MIN_RUNS = 6
"""The law has 5 parameters; one more run than that is the least that leaves anything to check the fit."""
EXTRA_BUDGETS = (1e21, 1e24)
"""Compute budgets (FLOPs) beyond the sweep where the fitted ratio is extrapolated."""
CLOSE_FACTOR = 1.5
"""A fitted ratio within this factor of 20 tokens/param is called 'close to' Chinchilla's, else 'far from'."""
NAMES = ("E", "A", "B", "alpha", "beta")


@dataclass
class FitConfig:
    csv: str = ""
    """Sweep results: a CSV with a row per run and columns params, tokens and loss (more columns are ignored,
    except flops, which groups runs into compute budgets for the plot)."""
    n_column: str = "params"
    """Column holding each run's model size N (e.g. non_embedding_params, to fit on non-embedding parameters)."""
    loss_column: str = "loss"
    """Column holding each run's final loss in nats/token (e.g. val_loss)."""
    bootstrap: int = 200
    """Bootstrap resamples of the runs for the confidence intervals (0 = point estimate only)."""
    seed: int = 0
    """Seed of the bootstrap resampling."""
    out: str | None = None
    """Directory for <csv stem>_fit.png and <csv stem>_fit.json (None = the CSV's directory)."""
    POSITIONAL: ClassVar[tuple[str, ...]] = ("csv",)

    def __post_init__(self) -> None:
        if not str(self.csv).strip():
            raise LmlabError("csv must name a sweep results file (columns params, tokens, loss), got ''")
        for key in ("n_column", "loss_column"):
            if not str(getattr(self, key)).strip():
                raise LmlabError(f"{key} must name a column of the CSV, got ''")
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise LmlabError(f"bootstrap must be a whole number of resamples >= 0, got {self.bootstrap!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise LmlabError(f"seed must be an integer, got {self.seed!r}")


# ---- reading the sweep -------------------------------------------------------------------------------

@dataclass
class Runs:
    """The sweep's runs as arrays, one entry per CSV row."""

    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    flops: np.ndarray | None
    """The CSV's flops column, when it has one (it may count more than 6ND, e.g. attention)."""


def read_runs(path: str | Path, n_column: str = "params", loss_column: str = "loss") -> Runs:
    """Read and check a sweep CSV: every problem is reported with its row and column, or what is missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LmlabError(f"{path}: no such file (expected the sweep's results CSV)")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LmlabError(f"{path}: not a readable CSV ({e})") from None
    need = [n_column, "tokens", loss_column]
    missing = [c for c in need if c not in header]
    if missing:
        present = ", ".join(header) if header else "none (empty file)"
        raise LmlabError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                         f"columns present: {present}")
    cols = {c: [] for c in need + (["flops"] if "flops" in header else [])}
    for i, row in enumerate(rows, start=1):
        row = {(k or "").strip(): v for k, v in row.items()}
        for c, values in cols.items():
            values.append(_number(path, i, c, row.get(c)))
    if len(rows) < MIN_RUNS:
        raise LmlabError(f"{path}: {len(rows)} run{'s' if len(rows) != 1 else ''} given, but fitting the law's 5 "
                         f"parameters needs at least {MIN_RUNS} runs")
    runs = Runs(n=np.array(cols[n_column]), d=np.array(cols["tokens"]), loss=np.array(cols[loss_column]),
                flops=np.array(cols["flops"]) if "flops" in cols else None)
    for name, values in ((f"N ({n_column})", runs.n), ("D (tokens)", runs.d)):
        if len(np.unique(values)) < 2:
            raise LmlabError(f"{path}: every run has the same {name} = {values[0]:g}; the law's exponents need "
                             "at least 2 distinct values of N and of D")
    return runs


def _number(path: Path, row: int, column: str, raw: str | None) -> float:
    """A positive finite float, or an error naming the row (1 = first after the header) and column."""
    where = f"{path}: row {row} (line {row + 1}), column {column}"
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LmlabError(f"{where}: expected a number, got {raw!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise LmlabError(f"{where}: expected a positive finite number, got {raw!r}")
    return value


# ---- the fit -----------------------------------------------------------------------------------------

def _objective(x: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> tuple[float, np.ndarray]:
    """Hoffmann's objective at x = (a, b, e, alpha, beta), divided by delta (same minimum, gradients of order
    one), and its analytic gradient, which makes each L-BFGS-B run several times cheaper than finite differences.

    The log-sum-exp is written out (max-shifted, as scipy.special.logsumexp does) because its softmax weights
    are the gradient's, and because this function runs ~10^5 times per fit where scipy's per-call overhead
    would double the time."""
    a, b, e, alpha, beta = x
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    w = np.exp(terms - top)
    total = w.sum(axis=0)
    r = top + np.log(total) - log_l  # LSE(terms) - log L
    value = float(np.where(np.abs(r) <= DELTA, 0.5 * r * r, DELTA * (np.abs(r) - 0.5 * DELTA)).sum()) / DELTA
    # d value / d r is the clipped residual; d LSE / d terms are the softmax weights w / total.
    gw = np.clip(r, -DELTA, DELTA) / DELTA * (w / total)
    grad = np.array([gw[0].sum(), gw[1].sum(), gw[2].sum(), -(gw[0] * log_n).sum(), -(gw[1] * log_d).sum()])
    return value, grad


def _grid() -> np.ndarray:
    """Hoffmann's grid as rows of (a, b, e, alpha, beta)."""
    mesh = np.meshgrid(GRID["a"], GRID["b"], GRID["e"], GRID["alpha"], GRID["beta"], indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def _grid_scores(grid: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    """The objective at every grid point at once (one vectorised pass instead of 4,500 calls)."""
    from scipy.special import huber, logsumexp

    a, b, e, alpha, beta = (grid[:, k:k + 1] for k in range(5))
    lse = logsumexp(np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(grid), len(log_n)))]),
                    axis=0)
    return huber(DELTA, lse - log_l).sum(axis=1)


def _minimise(starts: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    """L-BFGS-B from each start; the best solution's (a, b, e, alpha, beta)."""
    from scipy.optimize import minimize

    best, best_value = starts[0], math.inf
    for x0 in starts:
        res = minimize(_objective, x0, args=(log_n, log_d, log_l), jac=True, method="L-BFGS-B", bounds=BOUNDS,
                       options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-8})
        if res.fun < best_value:
            best, best_value = res.x, float(res.fun)
    return best


def fit_law(n: np.ndarray, d: np.ndarray, loss: np.ndarray, starts: int = STARTS) -> tuple[Law, np.ndarray]:
    """Fit the law to runs (N, D, L); returns it and the optimum x = (a, b, e, alpha, beta).

    Hoffmann's full grid of 4,500 starting points is scored in one vectorised pass, and L-BFGS-B (with the
    analytic gradient) runs from the `starts` best-scoring grid points only: running it from all 4,500
    takes about 50 times longer, and on the synthetic sweeps of the tests it reached the same optimum.
    """
    x = _minimise(_best_grid_points(n, d, loss, starts), np.log(n), np.log(d), np.log(loss))
    return _law(x), x


def _best_grid_points(n: np.ndarray, d: np.ndarray, loss: np.ndarray, k: int) -> np.ndarray:
    grid = _grid()
    scores = _grid_scores(grid, np.log(n), np.log(d), np.log(loss))
    return grid[np.argsort(scores, kind="stable")[:k]]


def _law(x: np.ndarray, name: str = "fit", source: str = "") -> Law:
    a, b, e, alpha, beta = (float(v) for v in x)
    # A fit pinned at alpha or beta = 0 has no compute-optimal allocation; nudge it so arithmetic stays finite.
    return Law(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=max(alpha, 1e-9), beta=max(beta, 1e-9),
               name=name, source=source)


def bootstrap(runs: Runs, x: np.ndarray, resamples: int, seed: int, flops: list[float]) -> dict[str, np.ndarray]:
    """Refit on `resamples` resamplings of the runs (with replacement); one row per refit of the five
    parameters, and of the tokens-per-parameter ratio at each budget in `flops`.

    Each refit starts from the full-data optimum `x` (the resampled optimum is usually near it) and from the
    best-scoring full-data grid point(s), in case the resample's optimum lies in another basin.
    """
    rng = np.random.default_rng(seed)
    starts = np.vstack([x[None, :], _best_grid_points(runs.n, runs.d, runs.loss, BOOTSTRAP_GRID_STARTS)])
    log_n, log_d, log_l = np.log(runs.n), np.log(runs.d), np.log(runs.loss)
    params, ratios = [], []
    for _ in range(resamples):
        idx = rng.integers(0, len(runs.n), len(runs.n))
        law = _law(_minimise(starts, log_n[idx], log_d[idx], log_l[idx]))
        params.append([getattr(law, k) for k in NAMES])
        ratios.append([_safe(law.tokens_per_param, c) for c in flops])
    return {"params": np.array(params).reshape(-1, len(NAMES)), "ratios": np.array(ratios).reshape(-1, len(flops))}


def _safe(f: Any, c: float) -> float:
    """f(c) for an allocation (N_opt, D_opt, their ratio), inf where a fit on a degenerate edge (an exponent
    at 0: the sweep cannot tell how loss falls with N or D) sends it out of floating-point range."""
    try:
        return float(f(c))
    except (OverflowError, ZeroDivisionError):
        return math.inf


def _interval(values: np.ndarray) -> list[float | None]:
    """The 2.5th and 97.5th percentiles (None without resamples)."""
    if values.size == 0:
        return [None, None]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [_num(lo), _num(hi)]


def _num(x: float) -> float | None:
    """A JSON-able float: inf and nan become None."""
    x = float(x)
    return x if math.isfinite(x) else None


# ---- compute budgets ---------------------------------------------------------------------------------

def round_sig(x: float, digits: int = 2) -> float:
    """`x` to `digits` significant figures, for a budget's label."""
    return float(f"{x:.{digits - 1}e}")


BUDGET_SPREAD = 1.2
"""Runs whose compute lies within this factor of a budget's smallest run belong to that budget."""


def budgets(runs: Runs) -> list[dict[str, Any]]:
    """The sweep's compute budgets (IsoFLOP groups): runs grouped by the flops column if there is one, else by 6ND.

    A run joins the budget of the runs before it (in order of compute) while within `BUDGET_SPREAD` of its
    smallest; plain rounding to 2 significant figures would split a budget whose runs straddle a rounding
    edge (0.94e15 and 1.04e15 after rounding steps to whole batches). `budget` labels the group (geometric
    mean, 2 significant figures); `c6` is its geometric mean of 6ND, the C the law's allocation speaks of.
    """
    six_nd = 6 * runs.n * runs.d
    compute = runs.flops if runs.flops is not None else six_nd
    order = np.argsort(compute, kind="stable")
    members: list[list[int]] = []
    for i in order.tolist():
        if members and compute[i] <= BUDGET_SPREAD * compute[members[-1][0]]:
            members[-1].append(i)
        else:
            members.append([i])
    groups = []
    for idx in members:
        best = idx[int(np.argmin(runs.loss[idx]))]
        groups.append({"budget": round_sig(float(np.exp(np.log(compute[idx]).mean()))),
                       "c6": float(np.exp(np.log(six_nd[idx]).mean())), "runs": sorted(idx),
                       "best_params": float(runs.n[best]), "best_tokens": float(runs.d[best]),
                       "best_loss": float(runs.loss[best])})
    return groups


# ---- the verb ----------------------------------------------------------------------------------------

def fit(cfg: FitConfig) -> dict[str, Any]:
    """Everything `lmlab scale fit` reports, as a JSON-able dict (the figure and JSON are written too)."""
    path = Path(cfg.csv).expanduser()
    runs = read_runs(path, cfg.n_column, cfg.loss_column)
    _, x = fit_law(runs.n, runs.d, runs.loss)
    law = _law(x, name="fit", source=str(path))
    groups = budgets(runs)
    at = [(g["c6"], "sweep") for g in groups] + [(c, "extrapolated") for c in EXTRA_BUDGETS]
    boot = bootstrap(runs, x, cfg.bootstrap, cfg.seed, [c for c, _ in at])
    predicted = np.array([law.loss(n, d) for n, d in zip(runs.n, runs.d)])
    rel = predicted / runs.loss - 1
    ratio_rows = []
    for j, (c, where) in enumerate(at):
        ratio_rows.append({"flops": c, "where": where, "params": _num(_safe(law.n_opt, c)),
                           "tokens": _num(_safe(law.d_opt, c)),
                           "tokens_per_param": _num(_safe(law.tokens_per_param, c)),
                           "interval": _interval(boot["ratios"][:, j])})
    out_dir = Path(cfg.out).expanduser() if cfg.out is not None else path.parent
    result: dict[str, Any] = {
        "csv": str(path),
        "runs": len(runs.n),
        "columns": {"n": cfg.n_column, "tokens": "tokens", "loss": cfg.loss_column},
        "law": "L(N, D) = E + A / N^alpha + B / D^beta",
        "params": {k: getattr(law, k) for k in NAMES},
        "intervals": {k: _interval(boot["params"][:, i]) for i, k in enumerate(NAMES)},
        "bootstrap": {"resamples": cfg.bootstrap, "seed": cfg.seed, "percentiles": [2.5, 97.5]},
        "fit_quality": {"rms_relative_error": float(np.sqrt(np.mean(rel**2))),
                        "max_relative_error": float(np.max(np.abs(rel)))},
        "ratio_exponent": _num(law.ratio_exponent),
        "tokens_per_param": ratio_rows,
        "budgets": [{k: v for k, v in g.items() if k != "runs"} | {"n_runs": len(g["runs"])} for g in groups],
        "warnings": edge_warnings(x),
        "png": str(out_dir / f"{path.stem}_fit.png"),
        "json": str(out_dir / f"{path.stem}_fit.json"),
    }
    result["summary"] = summary(result)
    plot(runs, law, groups, result["png"])
    write_json(result["json"], result)
    return result


def edge_warnings(x: np.ndarray) -> list[str]:
    """One line per parameter that ended on the edge of the search box: the sweep does not pin it down."""
    out = []
    for name, value, (lo, hi) in zip(("log A", "log B", "log E", "alpha", "beta"), x, BOUNDS):
        if min(value - lo, hi - value) < 1e-6:
            out.append(f"{name} = {value:g} sits on the edge of its search range [{lo:g}, {hi:g}]: the sweep does "
                       "not pin it down (widen the ranges of N and D); trust the allocation less")
    return out


def summary(result: dict[str, Any]) -> str:
    """A plain sentence: the fitted ratio at the sweep's scale against Chinchilla's ~20, and where it heads."""
    sweep = [r for r in result["tokens_per_param"] if r["where"] == "sweep"]
    extra = [r for r in result["tokens_per_param"] if r["where"] == "extrapolated"]
    mid = sweep[len(sweep) // 2]
    ratio = mid["tokens_per_param"]
    if ratio is None:
        return ("The fitted law has no finite compute-optimal ratio (an exponent sits at 0): the sweep does not "
                "constrain how loss falls with N or with D; add runs spanning wider ranges of both.")
    close = RULE_TOKENS_PER_PARAM / CLOSE_FACTOR <= ratio <= RULE_TOKENS_PER_PARAM * CLOSE_FACTOR
    lo, hi = mid["interval"]
    ci = f" (95% interval {lo:.3g} to {hi:.3g})" if lo is not None and hi is not None else ""
    span = (f"{sci(sweep[0]['flops'])} to {sci(sweep[-1]['flops'])} FLOPs" if len(sweep) > 1
            else f"{sci(mid['flops'])} FLOPs")
    k = result["ratio_exponent"]
    trend = ("stays nearly flat" if abs(k) < 0.02 else "grows" if k > 0 else "shrinks")
    ext = ", ".join(f"{r['tokens_per_param']:.3g} at {sci(r['flops'])}" for r in extra
                    if r["tokens_per_param"] is not None)
    return (f"At these scales ({span}) the fitted compute-optimal ratio is {ratio:.3g} tokens per parameter at "
            f"{sci(mid['flops'])} FLOPs{ci}, {'close to' if close else 'far from'} Chinchilla's ~20 "
            f"({ratio / RULE_TOKENS_PER_PARAM:.2g}x); it {trend} with compute as C^{k:+.3f} (extrapolated: {ext}).")


def plot(runs: Runs, law: Law, groups: list[dict[str, Any]], out: str | Path) -> Path:
    """IsoFLOP curves with the fitted law, N_opt(C) against the sweep's best runs, predicted vs measured."""
    plt = pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(groups), 1)))
    for g, color in zip(groups, colors):
        idx = np.array(g["runs"])
        ax1.scatter(runs.n[idx], runs.loss[idx], color=color, s=22, zorder=3, label=f"{sci(g['budget'])} FLOPs")
        lo, hi = runs.n[idx].min(), runs.n[idx].max()
        grid = np.geomspace(lo / 1.5, hi * 1.5, 100)
        ax1.plot(grid, [law.loss(n, g["c6"] / (6 * n)) for n in grid], color=color, lw=1.2)
        n_opt = _safe(law.n_opt, g["c6"])
        if lo / 1.5 <= n_opt <= hi * 1.5:
            ax1.scatter([n_opt], [law.loss(n_opt, g["c6"] / (6 * n_opt))], color=color, marker="*", s=120,
                        edgecolor="black", linewidth=0.5, zorder=4)
    span = runs.loss.max() - runs.loss.min()
    ax1.set_ylim(runs.loss.min() - 0.08 * span, runs.loss.max() + 0.08 * span)  # the law's tails can soar
    ax1.set_xscale("log")
    ax1.set_xlabel("parameters N")
    ax1.set_ylabel("loss (nats/token)")
    ax1.set_title("IsoFLOP curves: runs (dots), fitted law (lines, * = its N_opt)", fontsize=10)
    ax1.legend(fontsize=7, title="budget", title_fontsize=7)

    cs = np.array([g["c6"] for g in groups])
    c_line = np.geomspace(cs.min() / 3, cs.max() * 3, 100)
    ax2.plot(c_line, [_safe(law.n_opt, c) for c in c_line], color="C0", label="fitted law N_opt(C)")
    ax2.plot(c_line, np.sqrt(c_line / (6 * RULE_TOKENS_PER_PARAM)), color="grey", ls="--",
             label=f"{RULE_TOKENS_PER_PARAM:g} tokens/param")
    best = [g for g in groups if len(g["runs"]) >= 2]
    ax2.scatter([g["c6"] for g in best], [g["best_params"] for g in best], color="C3", zorder=3,
                label="sweep's best run per budget")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("compute C = 6ND (FLOPs)")
    ax2.set_ylabel("parameters N")
    ax2.set_title("Compute-optimal model size")
    ax2.legend(fontsize=7)

    predicted = np.array([law.loss(n, d) for n, d in zip(runs.n, runs.d)])
    ax3.scatter(runs.loss, predicted, s=16, color="C0")
    lims = [min(runs.loss.min(), predicted.min()), max(runs.loss.max(), predicted.max())]
    ax3.plot(lims, lims, color="grey", ls="--", lw=1, label="predicted = measured")
    ax3.set_xlabel("measured loss")
    ax3.set_ylabel("predicted loss")
    ax3.set_title(f"E={law.E:.3g}  A={law.A:.3g}  B={law.B:.3g}  alpha={law.alpha:.3f}  beta={law.beta:.3f}",
                  fontsize=9)
    ax3.legend(fontsize=7)
    return save_png(fig, out)


def format_fit(result: dict[str, Any]) -> str:
    """The fitted parameters with intervals, the ratios, the summary sentence and where the files went."""
    b = result["bootstrap"]
    head = (f"95% interval from {b['resamples']} bootstrap resamples" if b["resamples"] else "no bootstrap")
    lines = [f"{result['law']} fitted to {result['runs']} runs of {result['csv']}",
             f"(N = column {result['columns']['n']}, D = tokens, L = {result['columns']['loss']}; Huber loss on "
             "log L as in Hoffmann et al. 2022)", "", f"  {'':<6} {'fit':>10}   {head}"]
    for k, v in result["params"].items():
        lo, hi = result["intervals"][k]
        ci = f"[{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else "-"
        lines.append(f"  {k:<6} {v:>10.4g}   {ci}")
    q = result["fit_quality"]
    lines += [f"  fit error: rms {q['rms_relative_error']:.2%}, max {q['max_relative_error']:.2%} of the measured loss",
              "", "compute-optimal allocation (C = 6ND)",
              f"  {'C (FLOPs)':<12} {'N_opt':>12} {'D_opt':>12} {'tokens/param':>13}   95% interval"]
    for r in result["tokens_per_param"]:
        lo, hi = r["interval"]
        ci = f"[{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else "-"
        n, d = (("-" if v is None else sci(v)) for v in (r["params"], r["tokens"]))
        t = "-" if r["tokens_per_param"] is None else f"{r['tokens_per_param']:.3g}"
        lines.append(f"  {sci(r['flops']):<12} {n:>12} {d:>12} {t:>13}   {ci}"
                     + ("  (extrapolated)" if r["where"] == "extrapolated" else ""))
    lines += ["", *_wrap(result["summary"])]
    lines += [line for w in result["warnings"] for line in _wrap(f"warning: {w}")]
    lines += ["", f"figure: {result['png']}", f"fit:    {result['json']}"]
    return "\n".join(lines) + "\n"


def _wrap(text: str) -> list[str]:
    import textwrap

    return textwrap.wrap(text, 116)
