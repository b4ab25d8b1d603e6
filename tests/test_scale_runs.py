"""`lmlab scale sweep` and `lmlab scale lr-transfer` on tiny grids: CSVs, resumption, plots, bad input."""

from __future__ import annotations

import math

import pytest

from lmlab.errors import LmlabError
from lmlab.scale.lr_transfer import LRTransferConfig, best_log2_lr, lr_transfer, summarize
from lmlab.scale.sweep import SweepConfig, plan, read_rows, sweep, write_rows


def test_plan_spends_each_budget_as_6_n_d_and_skips_what_cannot_train():
    cfg = SweepConfig(models=["16x1", "64x2"], budgets=[1e10, 1e11], min_steps=20, max_tokens_per_param=100,
                      batch_size=4, block_size=32)
    runs = plan(cfg, vocab_size=300)
    for r in runs:
        assert 6 * r["params"] * r["tokens"] == pytest.approx(r["flops"], rel=0.01)
        assert r["steps"] >= 20 and r["tokens_per_param"] <= 100
    names = {r["name"] for r in runs}
    # 16x1 (about 8k params) on 1e11 FLOPs would see about 2,000 tokens per parameter: skipped
    assert "d16L1_C1e11" not in names and "d64L2_C1e11" in names


def test_sweep_writes_one_row_per_run_and_resumes(tiny_data, tmp_path):
    cfg = SweepConfig(corpus=str(tiny_data), out=str(tmp_path / "s"), models=["16x1", "32x1"], budgets=[3e8, 1e9],
                      min_steps=5, batch_size=4, block_size=32, eval_batches=2, threads=1, device="cpu")
    first = sweep(cfg)
    rows = read_rows(tmp_path / "s" / "sweep.csv")
    assert first["new_runs"] == len(rows) == len(plan(cfg, 300)) >= 3
    for r in rows:
        assert math.isfinite(float(r["loss"])) and float(r["loss"]) < math.log(300) + 0.5
        assert int(r["tokens"]) == int(r["steps"]) * 4 * 32
    assert sweep(cfg)["new_runs"] == 0  # everything done: nothing retrained
    write_rows(tmp_path / "s" / "sweep.csv", rows[1:])  # lose one row: only that run is trained again
    again = sweep(cfg)
    assert again["new_runs"] == 1 and again["runs"] == len(rows)


@pytest.mark.parametrize("bad, match", [
    (dict(models=["64"]), "must be d_model x n_layers"),
    (dict(models=["40x2"]), "multiple of 16"),
    (dict(budgets=[0]), "budgets must be positive"),
    (dict(batch_size=0), "batch_size must be >= 1"),
])
def test_sweep_bad_input(bad, match):
    with pytest.raises(LmlabError, match=match):
        SweepConfig(**bad)


def test_sweep_refuses_a_grid_with_nothing_to_train(tiny_data, tmp_path):
    cfg = SweepConfig(corpus=str(tiny_data), out=str(tmp_path / "s"), models=["16x1"], budgets=[1e6])
    with pytest.raises(LmlabError, match="no \\(model, budget\\) pair"):
        sweep(cfg)


def test_best_lr_is_refined_by_a_parabola():
    pts = [(x, (x + 6.3) ** 2 + 2.0) for x in (-9, -8, -7, -6, -5, -4)]
    assert best_log2_lr(pts) == pytest.approx(-6.3)
    assert best_log2_lr([(-3, 1.0), (-2, 2.0), (-1, 3.0)]) == -3  # on the edge: the grid point
    assert best_log2_lr([(-3, float("nan")), (-2, 2.0), (-1, 3.0)]) == -2  # diverged runs ignored
    assert best_log2_lr([(-3, float("nan"))]) is None


def test_summary_reports_the_shift_in_octaves():
    rows = []
    for par, centre in (("sp", {32: -6.0, 256: -8.0}), ("mup", {32: -6.0, 256: -6.0})):
        for w, c in centre.items():
            rows += [{"parametrization": par, "width": w, "log2_lr": x, "loss": (x - c) ** 2 + 1}
                     for x in range(-10, -3)]
    s = summarize(rows)
    assert s["sp"]["shift_octaves"] == pytest.approx(-2.0) and s["mup"]["shift_octaves"] == pytest.approx(0.0)


def test_lr_transfer_end_to_end_writes_csv_and_png(tiny_data, tmp_path):
    cfg = LRTransferConfig(corpus=str(tiny_data), out=str(tmp_path / "t"), widths=[16, 32], n_heads=2,
                           log2_lrs=[-8, -6, -4], steps=8, batch_size=4, block_size=32, eval_batches=2, threads=1,
                           device="cpu", parametrizations=["mup"])
    result = lr_transfer(cfg)
    assert result["runs"] == 6 and (tmp_path / "t" / "lr_transfer.png").stat().st_size > 10_000
    assert set(result["mup"]["best_log2_lr"]) == {"16", "32"}
    assert lr_transfer(cfg)["runs"] == 6  # resumed: nothing new


def test_lr_transfer_bad_input():
    with pytest.raises(LmlabError, match="at least two multiples of n_heads=4"):
        LRTransferConfig(widths=[32])
    with pytest.raises(LmlabError, match="at least 3 learning rates"):
        LRTransferConfig(log2_lrs=[-8, -6])
    with pytest.raises(LmlabError, match="'sp' and/or 'mup'"):
        LRTransferConfig(parametrizations=["ntk"])
