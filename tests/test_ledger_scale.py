"""The scale claims at tiny size (every row valid, the runs shared), and their verdict rules and interval on
hand-made numbers with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmlab.evals.bootstrap import t_interval
from lmlab.ledger import scale_claims as sc
from lmlab.ledger.run import LedgerConfig, ledger
from lmlab.scale.sweep import read_rows, write_rows

IDS = [c.id for c in sc.CLAIMS]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ledger_scale")
    result = ledger(LedgerConfig(size="tiny", only=IDS, out=str(tmp / "docs"), work=str(tmp / "work"), readme=None))
    return tmp, result, {r["id"]: r for r in json.loads((tmp / "docs" / "ledger.json").read_text())["rows"]}


def test_every_scale_claim_gives_a_valid_row(tiny):
    tmp, result, rows = tiny
    assert result["ran"] == IDS and set(rows) == set(IDS)
    for r in rows.values():
        assert r["low"] <= r["value"] <= r["high"] and all(math.isfinite(r[k]) for k in ("value", "low", "high"))
        assert (tmp / "docs" / r["plot"]).stat().st_size > 5000
        assert "tiny" in r["measured"] and "seeds [0, 1, 2]" in r["interval"]
        json.dumps(r["details"])  # JSON-serialisable


def test_the_sweep_is_shared_and_pooled_over_three_seeds(tiny):
    tmp, _, rows = tiny
    pooled = list((tmp / "work" / "scale").glob("sweep-*/sweep_pooled.csv"))
    assert len(pooled) == 1  # one sweep for the two claims that use it
    runs = read_rows(pooled[0])
    assert sorted({r["seed"] for r in runs}) == ["0", "1", "2"] and len(runs) % 3 == 0
    assert f"({len(runs)} runs)" in rows["diminishing-returns"]["measured"]
    dim, ratio = rows["diminishing-returns"], rows["chinchilla-20-tokens-per-param"]
    assert dim["value"] == pytest.approx(dim["details"]["params"]["alpha"], rel=1e-3)
    budgets = [b for b in ratio["details"]["ratio_by_budget"] if b["where"] == "sweep"]
    assert ratio["value"] == pytest.approx(budgets[-1]["tokens_per_param"], rel=1e-3)


def test_mup_reuses_the_base_width_and_reports_both_shifts(tiny):
    tmp, _, rows = tiny
    r = rows["mup-lr-transfer"]
    assert len(r["details"]["shift_by_seed"]["mup"]) == len(r["details"]["shift_by_seed"]["sp"]) == 3
    for csv in (tmp / "work" / "mup-lr-transfer").glob("lr-*/seed*/lr_transfer.csv"):
        got = read_rows(csv)
        base = {(r["log2_lr"], r["loss"]) for r in got if r["width"] == "16"}
        assert len(got) == 2 * 2 * 3 and len(base) == 3  # muP's width-16 rows are SP's, not new runs
    assert not any(Path(tmp / "work" / "mup-lr-transfer").glob("lr-*/seed*/runs/mup_w16_*"))


def test_ratio_verdict():
    assert sc.ratio_verdict(12, 30) == ("holds", "")
    verdict, condition = sc.ratio_verdict(6, 40)
    assert verdict == "holds only" and "order of magnitude" in condition
    assert sc.ratio_verdict(25, 60)[0] == "does not hold" and sc.ratio_verdict(1, 2)[0] == "does not hold"


def test_exponents_verdict():
    assert sc.exponents_verdict({"alpha": [0.2, 0.5], "beta": [0.3, 0.9]}, rms=0.02) == ("holds", "")
    verdict, condition = sc.exponents_verdict({"alpha": [0.2, 0.5], "beta": [0.3, 0.9]}, rms=0.12)
    assert verdict == "holds only" and "12% rms" in condition
    assert sc.exponents_verdict({"alpha": [0.3, 1.1], "beta": [0.3, 0.9]}, rms=0.02)[0] == "holds"  # > 1 still
    assert sc.exponents_verdict({"alpha": [0.0, 0.4], "beta": [0.3, 0.9]}, rms=0.02)[0] == "does not hold"


def test_transfer_verdict():
    assert sc.transfer_verdict((-0.4, 0.6), (-2.3, -1.0), True) == (True, True, "holds")
    assert sc.transfer_verdict((-0.4, 0.6), (-2.3, -1.0), False)[2] == "does not hold"  # a seed without a shift
    assert sc.transfer_verdict((-1.5, 0.2), (-2.3, -1.0), True) == (False, False, "does not hold")
    assert sc.transfer_verdict((-0.4, 0.6), (-1.0, 0.1), True) == (True, False, "does not hold")  # SP may not move


def test_t_interval_of_three_seeds():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    # sd 1, t(0.975, 2 dof) = 4.303: half-width 4.303 / sqrt(3) = 2.484
    assert mean == 2.0 and hi - mean == pytest.approx(2.484, abs=1e-3) and mean - lo == pytest.approx(2.484, abs=1e-3)
    assert t_interval([0.5]) == (0.5, 0.5, 0.5)


def test_base_width_rows_are_copied_once(tmp_path):
    csv = tmp_path / "lr_transfer.csv"
    rows = [{"parametrization": "sp", "width": w, "log2_lr": x, "loss": 1.0} for w in (16, 32) for x in (-6, -4)]
    write_rows(csv, rows, ("parametrization", "width", "log2_lr", "loss"))
    sc._copy_base_width(csv, 16)
    sc._copy_base_width(csv, 16)
    got = read_rows(csv)
    assert len(got) == 6 and {(r["width"], r["log2_lr"]) for r in got if r["parametrization"] == "mup"} == \
        {("16", "-6"), ("16", "-4")}
