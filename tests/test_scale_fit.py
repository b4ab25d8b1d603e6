"""`lmlab.scale.fit`: recovering a known law from noisy synthetic IsoFLOP sweeps (parameters inside their bootstrap
intervals, the tokens-per-parameter ratio), the files it writes, and a clear error for every kind of bad CSV."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lmlab.config import field_docs
from lmlab.errors import LmlabError
from lmlab.scale.fit import NAMES, FitConfig, Runs, budgets, fit, fit_law, format_fit, read_runs
from lmlab.scale.laws import Law

TRUE = Law(E=1.8, A=400.0, B=2000.0, alpha=0.35, beta=0.37, name="true")
"""Close to Epoch AI's refit of Chinchilla, so the ratio sits near Chinchilla's ~20 x a factor of 2."""
BUDGETS = (1e14, 1e15, 1e16, 1e17, 1e18)
NOISE = 0.005
"""0.5% lognormal noise on each loss, about what seeds alone do to a small run's final loss."""
NOISE_SEED = 1


def sweep() -> tuple[np.ndarray, np.ndarray]:
    """An IsoFLOP sweep: 13 sizes log-spaced over [1e5, 1e8] at each budget, D = C / (6N) kept in [1e6, 1e10]
    (46 runs)."""
    n_all, d_all = [], []
    for c in BUDGETS:
        for n in np.geomspace(1e5, 1e8, 13):
            d = c / (6 * n)
            if 1e6 <= d <= 1e10:
                n_all.append(n)
                d_all.append(d)
    return np.array(n_all), np.array(d_all)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def synthetic_csv(path: Path, noise: float = NOISE, seed: int = NOISE_SEED) -> Path:
    """The sweep's losses under TRUE with multiplicative noise, in the columns the sweep writes."""
    n, d = sweep()
    loss = np.array([TRUE.loss(a, b) for a, b in zip(n, d)])
    loss *= np.exp(np.random.default_rng(seed).normal(0.0, noise, len(n)))
    rows = [[f"{a:.6g}", f"{b:.6g}", f"{6 * a * b:.6g}", f"{l_:.6f}", 64, 2] for a, b, l_ in zip(n, d, loss)]
    return write_csv(path, ["params", "tokens", "flops", "loss", "d_model", "n_layers"], rows)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[dict, str, Path]:
    """One fit of the noisy sweep with 100 bootstrap resamples, shared by the tests below (about 3 s)."""
    root = tmp_path_factory.mktemp("fit")
    path = synthetic_csv(root / "sweep.csv")
    result = fit(FitConfig(csv=str(path), bootstrap=100, seed=0))
    return result, format_fit(result), path


# ---- recovering a known law --------------------------------------------------------------------------

def test_true_parameters_lie_inside_their_bootstrap_intervals(fitted):
    result, _, _ = fitted
    assert result["runs"] == 46
    for k in NAMES:
        lo, hi = result["intervals"][k]
        assert lo <= getattr(TRUE, k) <= hi, f"{k}: true {getattr(TRUE, k)} outside [{lo}, {hi}]"
        assert lo <= result["params"][k] <= hi
    assert result["params"]["alpha"] == pytest.approx(TRUE.alpha, abs=0.01)
    assert result["params"]["beta"] == pytest.approx(TRUE.beta, abs=0.01)
    assert result["warnings"] == []


def test_fitted_ratio_is_close_to_the_true_one(fitted):
    result, _, _ = fitted
    rows = result["tokens_per_param"]
    assert [r["where"] for r in rows] == ["sweep"] * 5 + ["extrapolated"] * 2
    assert [r["flops"] for r in rows[-2:]] == [1e21, 1e24]
    for r in rows:
        true = TRUE.tokens_per_param(r["flops"])
        tol = 0.05 if r["where"] == "sweep" else 0.25  # extrapolation amplifies the exponent's error
        assert r["tokens_per_param"] == pytest.approx(true, rel=tol)
        assert 6 * r["params"] * r["tokens"] == pytest.approx(r["flops"], rel=1e-9)
        if r["where"] == "sweep":
            lo, hi = r["interval"]
            assert lo <= true <= hi
    k = (result["params"]["alpha"] - result["params"]["beta"]) / (result["params"]["alpha"] + result["params"]["beta"])
    assert result["ratio_exponent"] == pytest.approx(k)
    # 38 tokens/param at 1e16 FLOPs: about twice Chinchilla's 20, so "far from" by the 1.5x convention.
    assert "far from Chinchilla's ~20" in result["summary"]


def test_budgets_group_the_sweep(fitted):
    result, _, _ = fitted
    assert [b["budget"] for b in result["budgets"]] == list(BUDGETS)
    assert sum(b["n_runs"] for b in result["budgets"]) == 46
    for b in result["budgets"]:
        assert b["c6"] == pytest.approx(b["budget"], rel=1e-4)


def test_noiseless_fit_is_exact():
    n, d = sweep()
    loss = np.array([TRUE.loss(a, b) for a, b in zip(n, d)])
    law, _ = fit_law(n, d, loss)
    for k in NAMES:
        assert getattr(law, k) == pytest.approx(getattr(TRUE, k), rel=1e-4)


# ---- what it prints and writes -----------------------------------------------------------------------

def test_prints_and_writes_png_and_json(fitted):
    result, out, path = fitted
    assert not [k for k in result if k.startswith("_")]
    png, js = Path(result["png"]), Path(result["json"])
    assert png == path.parent / "sweep_fit.png" and js == path.parent / "sweep_fit.json"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(js.read_text())
    assert saved["params"] == result["params"] and saved["intervals"] == result["intervals"]
    json.dumps(result, allow_nan=False)
    for text in ("alpha", "beta", "tokens/param", "Chinchilla's ~20", "(extrapolated)", str(png), str(js),
                 "95% interval from 100 bootstrap resamples"):
        assert text in out


def test_out_directory_and_other_columns(tmp_path):
    n, d = sweep()
    loss = np.array([TRUE.loss(a, b) for a, b in zip(n, d)])
    rows = [[a, a * 0.9, b, l_, l_ * 1.01] for a, b, l_ in zip(n, d, loss)]
    path = write_csv(tmp_path / "runs.csv", ["params", "non_embedding_params", "tokens", "loss", "val_loss"], rows)
    result = fit(FitConfig(csv=str(path), n_column="non_embedding_params", loss_column="val_loss",
                           bootstrap=0, out=str(tmp_path / "figs")))
    assert Path(result["png"]) == tmp_path / "figs" / "runs_fit.png"
    assert Path(result["json"]).is_file() and Path(result["png"]).is_file()
    assert result["columns"] == {"n": "non_embedding_params", "tokens": "tokens", "loss": "val_loss"}
    assert result["intervals"]["E"] == [None, None]
    assert result["params"]["A"] == pytest.approx(TRUE.A * 0.9**TRUE.alpha * 1.01, rel=0.02)
    assert "no bootstrap" in format_fit(result)


def test_budgets_without_a_flops_column_use_6nd():
    n = np.array([1e6, 2e6, 4e6, 1e6, 2e6, 4e6])
    d = np.array([1e9, 0.5e9, 0.25e9, 1e10, 0.5e10, 0.25e10]) / 6 * np.array([1.001, 0.95, 1.04, 1, 1, 1])
    runs = Runs(n=n, d=d, loss=np.arange(6.0) + 1, flops=None)
    groups = budgets(runs)
    assert [g["budget"] for g in groups] == [1e15, 1e16]  # 0.95e15 and 1.04e15 stay in one budget
    assert [g["runs"] for g in groups] == [[0, 1, 2], [3, 4, 5]]
    assert [g["best_params"] for g in groups] == [1e6, 1e6]


def test_budgets_follow_the_flops_column():
    n = np.array([1e6, 2e6, 1e6, 2e6])
    runs = Runs(n=n, d=np.array([1e8, 1e8, 1e9, 1e9]), loss=np.ones(4), flops=np.array([3e14, 3.3e14, 3e15, 2.9e15]))
    assert [g["budget"] for g in budgets(runs)] == [3.1e14, 2.9e15]


# ---- bad input ---------------------------------------------------------------------------------------

def good_rows(k: int = 8) -> list[list[object]]:
    return [[1e6 * 2**i, 1e8 / 2**i, 3.0 + 0.1 * i] for i in range(k)]


def test_missing_file(tmp_path):
    with pytest.raises(LmlabError, match="no such file"):
        fit(FitConfig(csv=str(tmp_path / "nope.csv")))


def test_missing_columns_are_named_with_those_present(tmp_path):
    path = write_csv(tmp_path / "s.csv", ["params", "steps", "val_loss"], [[1, 2, 3]] * 8)
    with pytest.raises(LmlabError, match=r"missing columns tokens, loss; columns present: params, steps, val_loss"):
        read_runs(path)
    with pytest.raises(LmlabError, match="missing columns non_embedding_params, tokens;"):
        read_runs(path, n_column="non_embedding_params", loss_column="val_loss")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(LmlabError, match="columns present: none"):
        read_runs(empty)


@pytest.mark.parametrize("bad", ["abc", "", "-3", "0", "nan", "inf"])
def test_bad_values_name_row_and_column(tmp_path, bad):
    rows = good_rows()
    rows[2][1] = bad
    path = write_csv(tmp_path / "s.csv", ["params", "tokens", "loss"], rows)
    with pytest.raises(LmlabError, match=r"row 3 \(line 4\), column tokens: expected a (positive finite )?number"):
        read_runs(path)


def test_bad_flops_column_is_named(tmp_path):
    rows = [r + ["x" if i == 0 else 1e15] for i, r in enumerate(good_rows())]
    path = write_csv(tmp_path / "s.csv", ["params", "tokens", "loss", "flops"], rows)
    with pytest.raises(LmlabError, match="row 1 .*column flops"):
        read_runs(path)


def test_too_few_runs(tmp_path):
    path = write_csv(tmp_path / "s.csv", ["params", "tokens", "loss"], good_rows(5))
    with pytest.raises(LmlabError, match="5 runs given, but fitting the law's 5 parameters needs at least 6 runs"):
        read_runs(path)


@pytest.mark.parametrize("column", [0, 1])
def test_needs_two_distinct_sizes_and_token_counts(tmp_path, column):
    rows = good_rows()
    for r in rows:
        r[column] = 5e6
    path = write_csv(tmp_path / "s.csv", ["params", "tokens", "loss"], rows)
    what = "N \\(params\\)" if column == 0 else "D \\(tokens\\)"
    with pytest.raises(LmlabError, match=f"every run has the same {what} = 5e\\+06; .*at least 2 distinct"):
        read_runs(path)


def test_config_validation():
    with pytest.raises(LmlabError, match="csv must name"):
        FitConfig()
    with pytest.raises(LmlabError, match="bootstrap must be .* got -1"):
        FitConfig(csv="x.csv", bootstrap=-1)
    with pytest.raises(LmlabError, match="loss_column must name a column"):
        FitConfig(csv="x.csv", loss_column="")
    docs = field_docs(FitConfig)
    assert {"csv", "n_column", "loss_column", "bootstrap", "seed", "out"} <= set(docs)
    assert FitConfig.POSITIONAL == ("csv",)


def test_a_sweep_that_cannot_pin_the_law_warns_instead_of_failing(tmp_path):
    """Loss that ignores N: alpha runs to the edge of its range; the fit still reports, with a warning."""
    rng = np.random.default_rng(0)
    rows = [[n, d, (2 + 300 / d**0.3) * math.exp(rng.normal(0, 0.002))] for n in (1e5, 1e6, 1e7)
            for d in (1e7, 1e8, 1e9)]
    path = write_csv(tmp_path / "flat.csv", ["params", "tokens", "loss"], rows)
    result = fit(FitConfig(csv=str(path), bootstrap=10))
    assert any(w.startswith("alpha") for w in result["warnings"])
    assert "warning: alpha" in format_fit(result)
    json.dumps(result, allow_nan=False)
