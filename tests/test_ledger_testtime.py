"""The test-time compute claims at tiny size (the tiny quickstart's solver, N up to 4, 3 sampling seeds), and
their statistics and verdict rules on cases with a known answer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import ledger_context, run_claims
from lmlab.ledger import testtime_claims as tc
from lmlab.ledger.claims import Row
from lmlab.ledger.run import CLAIMS

IDS = ["best-of-n-logprob", "majority-vote", "best-of-n-reward-model", "reward-over-optimisation"]


@pytest.fixture(scope="module")
def rows(tiny_quickstart, tmp_path_factory):
    return run_claims(tmp_path_factory.mktemp("tt"), tiny_quickstart, tc.CLAIMS, IDS)


def test_the_claims_are_registered():
    assert [c.id for c in tc.CLAIMS] == IDS
    assert all(c.id in {x.id for x in CLAIMS} for c in tc.CLAIMS)


def test_every_claim_gives_a_valid_row_with_its_plot(rows):
    tmp, ctx, got = rows
    for cid, row in got.items():
        assert isinstance(row, Row) and row.low <= row.value <= row.high, cid
        assert row.measured and row.interval and "tiny" in row.measured, cid
        assert "seeds 0, 1, 2" in row.interval, cid
        assert (tmp / "docs" / row.plot).stat().st_size > 1000, cid
        json.dumps(row.details)  # the ledger writes them as JSON


def test_samples_are_drawn_once_per_seed_and_shared(rows):
    tmp, ctx, got = rows
    meas = ctx.memo["testtime"]
    assert meas["seeds"] == [0, 1, 2] and meas["ns"] == tc.SIZES["tiny"]["n"]
    for s in (0, 1, 2):
        assert (tmp / "work" / "testtime-samples" / f"seed{s}" / "samples.jsonl").is_file()
    P = tc.SIZES["tiny"]["problems"]
    assert meas["acc"]["sample"].shape == (P, 1)  # one sample is N = 1 only
    for m in ("logprob", "vote", "rm", "oracle"):
        assert meas["acc"][m].shape == (P, len(meas["ns"]))
    # At N = 1 every rule picks one sample: the same accuracy as one sample.
    for m in ("logprob", "vote", "rm", "oracle"):
        assert meas["acc"][m][:, 0] == pytest.approx(meas["acc"]["sample"][:, 0])


def test_cost_grows_with_n(rows):
    _, ctx, got = rows
    n = max(tc.SIZES["tiny"]["n"])
    for cid in ("best-of-n-logprob", "majority-vote", "best-of-n-reward-model"):
        ratio = got[cid].details["cost_ratio_at_max_n"]
        assert ratio["gen_tokens"] == pytest.approx(n)  # N samples of the same mean length
        assert 1 < ratio["flops"] <= n  # the prompt's prefill is shared by the N samples


def test_rows_follow_their_rules(rows):
    _, ctx, got = rows
    for cid in ("best-of-n-logprob", "majority-vote"):
        assert got[cid].verdict == tc.gain_verdict(got[cid].low)
    rm = got["best-of-n-reward-model"]
    rank_low = rm.details["ranking_on_test_samples"]["rm"][1]
    lows = [g[1] for g in rm.details["gain_ci_by_n"]]
    assert rm.details["gain_ci_by_n"][-1] == [round(x, 4) for x in (rm.value, rm.low, rm.high)]
    assert (rm.verdict, rm.condition) == tc.verifier_verdict(-1.0 if rank_low is None else rank_low, lows,
                                                             rm.details["n"])
    if rank_low is None or rank_low <= 0.5:
        assert rm.verdict == "does not hold" and "does not rank" in rm.measured
    over = got["reward-over-optimisation"]
    assert over.value <= 0 and over.verdict == tc.overopt_verdict(over.high)
    # The tiny solver is never right: no verifier can be trained from its samples, and that is said.
    assert rm.details["verifier"]["trained"] is False and "pairs" in rm.details["verifier"]["why"]


def test_a_finished_verifier_is_reused(rows, tiny_quickstart, monkeypatch):
    tmp, _, _ = rows
    ctx = ledger_context(tmp, tiny_quickstart)

    def fail(cfg):
        raise AssertionError("retrained")

    monkeypatch.setattr(tc, "train_verifier", fail)
    assert tc._verifier(ctx)["trained"] is False


def test_ranking_on_known_cases():
    assert tc.ranking([3.0, 1.0, 2.0], [True, False, False]) == 1.0
    assert tc.ranking([0.0, 1.0], [True, False]) == 0.0
    assert tc.ranking([1.0, 1.0], [True, False]) == 0.5
    assert tc.ranking([0.5, 2.0, 1.0], [True, True, False]) == 0.5
    assert math.isnan(tc.ranking([1.0, 2.0], [True, True]))
    # Pooled: per problem, the mean over the seeds where it has a pair; never-paired problems are left out.
    correct = [[[True, False], [True, True]], [[True, False], [False, False]]]
    scores = [[[1.0, 0.0], [1.0, 2.0]], [[0.0, 1.0], [1.0, 2.0]]]
    assert tc._pooled_ranking(correct, scores).tolist() == [0.5]


def test_gain_interval_on_synthetic_accuracies():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, 400)
    acc = np.stack([base, base + 0.1 + rng.normal(0, 0.05, 400)], axis=1)
    v, lo, hi = tc.gain(acc, 0)
    assert lo < 0.1 < hi and lo > 0.09 and tc.gain_verdict(lo) == "holds"
    flat = np.stack([base, base + rng.normal(0, 0.05, 400)], axis=1)
    v, lo, hi = tc.gain(flat, 0)
    assert lo < 0 < hi and tc.gain_verdict(lo) == "does not hold"


def test_drop_from_peak_finds_a_real_fall_and_not_a_flat_curve():
    rng = np.random.default_rng(1)
    # Rises to N = 4 then falls by 10 points: the fall is found, its interval below 0.
    curve = np.array([0.4, 0.45, 0.5, 0.45, 0.4])
    acc = np.clip(curve + rng.normal(0, 0.1, (300, 5)), 0, 1)
    v, lo, hi = tc.drop_from_peak(acc, 0)
    assert v == pytest.approx(-0.1, abs=0.03) and hi < 0 and tc.overopt_verdict(hi) == "holds"
    # Rising: the largest N is the peak, no fall.
    rising = np.clip(np.array([0.3, 0.35, 0.4, 0.45, 0.5]) + rng.normal(0, 0.1, (300, 5)), 0, 1)
    v, lo, hi = tc.drop_from_peak(rising, 0)
    assert v == 0 and hi == 0 and tc.overopt_verdict(hi) == "does not hold"


def test_verifier_verdict_needs_a_verifier_that_ranks():
    ns = [1, 2, 4, 8]
    assert tc.verifier_verdict(0.5, [0, 0.1, 0.1, 0.1], ns) == ("does not hold", "")  # gains by luck do not count
    assert tc.verifier_verdict(0.45, [0, -0.1, -0.1, -0.1], ns) == ("does not hold", "")
    assert tc.verifier_verdict(0.55, [0, 0.01, 0.02, 0.01], ns) == ("holds", "")
    assert tc.verifier_verdict(0.55, [0, -0.01, -0.02, -0.01], ns) == ("does not hold", "")
    assert tc.verifier_verdict(0.55, [0, 0.01, 0.02, -0.01], ns) == ("holds only", "at N = 2, 4, not at N = 8")


def test_gains_by_n_start_at_zero():
    acc = np.array([[0.2, 0.3, 0.5], [0.4, 0.4, 0.6], [0.0, 0.1, 0.1]])
    g = tc.gains(acc, 0)
    assert g[0] == (0.0, 0.0, 0.0) and g[2][0] == pytest.approx(0.2)
