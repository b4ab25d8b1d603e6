"""The hallucination claims at tiny size (a minimal quickstart with its post-training and hallucination stages,
a few steps per training, 3 seeds), and their statistics and rules on cases with a known answer: Newcombe's
interval, the seeds' interval, the vectorised AUROC, the abstention threshold, the verdicts, the seed cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ledger_context, run_claims
from lmlab.evals.binary import auroc, rate
from lmlab.ledger import hallucination_claims as hc
from lmlab.ledger.claims import VERDICTS, Row
from lmlab.ledger.run import CLAIMS

IDS = ["hallucinations-snowball", "unknown-facts-teach-hallucination", "abstention-training",
       "confidence-detects-hallucination", "retrieval-reduces-hallucination",
       "wrong-answer-penalty-reduces-hallucination"]


@pytest.fixture(scope="module")
def rows(tiny_quickstart, tmp_path_factory):
    return run_claims(tmp_path_factory.mktemp("hallucination"), tiny_quickstart, hc.CLAIMS, IDS)


def test_the_claims_are_registered():
    assert [c.id for c in hc.CLAIMS] == IDS
    assert all(c.id in {x.id for x in CLAIMS} for c in hc.CLAIMS)


def test_every_claim_gives_a_valid_row_with_its_plot(rows):
    tmp, _, got = rows
    for cid, row in got.items():
        assert isinstance(row, Row) and row.verdict in VERDICTS, cid
        assert row.low <= row.value <= row.high, cid
        assert "tiny" in row.measured and row.interval and row.unit, cid
        assert (tmp / "docs" / row.plot).stat().st_size > 1000, cid
        json.dumps(row.details)  # serialisable as the ledger writes it


def test_training_claims_ran_three_seeds_then_forgot_them(rows):
    tmp, _, got = rows
    for cid in ("unknown-facts-teach-hallucination", "retrieval-reduces-hallucination",
                "wrong-answer-penalty-reduces-hallucination"):
        assert len(got[cid].details["per_seed_made_up_difference"]) == hc.SEEDS, cid
        # Kept only to resume an interrupted run: a finished claim leaves nothing, so --force measures again.
        assert not (tmp / "work" / cid).exists(), cid


def test_abstention_reads_the_quickstarts_own_figures(rows, tiny_quickstart):
    _, _, got = rows
    h = json.loads((tiny_quickstart / "summary.json").read_text())["hallucination"]
    row = got["abstention-training"]
    assert row.value == pytest.approx(h["unknown_hallucination_rate_after"]["rate"]
                                      - h["unknown_hallucination_rate_before"]["rate"])
    assert row.details["known_right_after"]["k"] == h["known_accuracy_after"]["k"]


def test_newcombe_matches_the_published_example():
    # Newcombe 1998, Table II, example (a): 56/70 against 48/80, method 10: 0.0524 to 0.3339.
    d, lo, hi = hc.newcombe(rate(56, 70), rate(48, 80))
    assert d == pytest.approx(56 / 70 - 48 / 80)
    assert (lo, hi) == (pytest.approx(0.0524, abs=2e-4), pytest.approx(0.3339, abs=2e-4))
    assert hc.newcombe(rate(0, 0), rate(3, 10)) == (0.0, -1.0, 1.0)  # nothing measured


def test_seeds_interval_widens_with_disagreeing_seeds():
    same = hc.seeds_difference([rate(20, 100)] * 3, [rate(40, 100)] * 3)
    pooled = hc.newcombe(rate(60, 300), rate(120, 300))
    assert (same["value"], same["low"], same["high"]) == pytest.approx(pooled)  # no spread: Newcombe's
    spread = hc.seeds_difference([rate(5, 100), rate(20, 100), rate(35, 100)], [rate(40, 100)] * 3)
    assert spread["value"] == pytest.approx(same["value"])
    assert spread["high"] - spread["low"] > same["high"] - same["low"]
    assert spread["high"] > 0 > same["high"]  # one seed-spread turns 'holds' into 'does not hold'
    assert hc._lower_is_better(same) == "holds" and hc._lower_is_better(spread) == "does not hold"


def test_vectorised_auroc_agrees_with_lmlabs():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    wrong = (rng.random(200) < 0.3).astype(float)
    assert hc.auroc_np(scores, wrong) == pytest.approx(auroc(scores.tolist(), wrong.astype(bool).tolist()))
    assert np.isnan(hc.auroc_np(scores, np.zeros(200)))


def test_the_threshold_abstains_where_answers_are_mostly_wrong():
    conf = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9])
    right = np.array([False, False, True, True, True, False, True])
    assert hc.selective_threshold(conf, right) == pytest.approx(0.3)  # keep 0.3 up: 4 right, 1 wrong
    assert hc.selective_threshold(conf, np.ones(7, dtype=bool)) == 0.0  # all right: answer everything


def test_snowball_verdict_rule():
    assert hc.snowball_verdict((0.2, 0.1, 0.3), (0.0, -0.1, 0.1)) == ("holds", "")
    verdict, condition = hc.snowball_verdict((0.0, -0.01, 0.01), (0.02, 0.005, 0.035))
    assert verdict == "holds only" and "does not follow" in condition
    assert hc.snowball_verdict((0.0, -0.01, 0.01), (0.0, -0.01, 0.01)) == ("does not hold", "")


def test_a_seed_is_kept_under_its_settings(tmp_path):
    ctx = ledger_context(tmp_path)
    calls = []

    def run(out):
        calls.append(out)
        assert not out.exists() or not any(out.iterdir())  # an empty directory to train in
        return {"x": len(calls)}

    assert hc.per_seed(ctx, "c", 0, {"a": 1}, run) == {"x": 1}
    assert hc.per_seed(ctx, "c", 0, {"a": 1}, run) == {"x": 1} and len(calls) == 1
    assert hc.per_seed(ctx, "c", 0, {"a": 2}, run) == {"x": 2}  # other settings: run again


def test_an_interrupted_claim_keeps_its_seeds(tmp_path):
    ctx = ledger_context(tmp_path)

    @hc.forgets_seeds("c")
    def claim(ctx):
        hc.per_seed(ctx, "c", 0, {}, lambda out: {"x": 1})
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        claim(ctx)
    assert (tmp_path / "work" / "c" / "seed_0.json").is_file()  # the next run starts at seed 1
