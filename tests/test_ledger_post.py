"""The post-training claims at tiny size (a minimal quickstart, a few steps per stage, 3 seeds), their verdict
rules and intervals on cases with a known answer, and the resume from finished stages."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from conftest import ledger_context, run_claims
from lmlab.evals.binary import newcombe
from lmlab.evals.bootstrap import t_interval
from lmlab.ledger import post_claims as pc
from lmlab.ledger.claims import Row
from lmlab.ledger.run import CLAIMS

IDS = ["sft-teaches-format", "reward-model-ranks", "dpo-raises-reward", "rlhf-raises-reward",
       "post-training-share-of-compute"]


@pytest.fixture(scope="module")
def rows(tiny_quickstart, tmp_path_factory):
    return run_claims(tmp_path_factory.mktemp("post"), tiny_quickstart, pc.CLAIMS, IDS)


def test_the_claims_are_registered():
    assert [c.id for c in pc.CLAIMS] == IDS
    assert all(c.id in {x.id for x in CLAIMS} for c in pc.CLAIMS)


def test_every_claim_gives_a_valid_row_with_its_plot(rows):
    tmp, ctx, got = rows
    for cid, row in got.items():
        assert isinstance(row, Row) and row.low <= row.value <= row.high, cid
        assert row.measured and row.interval and "tiny" in row.measured, cid
        assert (tmp / "docs" / row.plot).stat().st_size > 1000, cid
        json.dumps(row.details)  # the ledger writes them as JSON


def test_three_seeds_trained_and_shared_between_claims(rows):
    tmp, ctx, got = rows
    for s in (0, 1, 2):
        for stage in ("sft", "rm", "dpo", "rl"):
            assert (tmp / "work" / "post-training-seeds" / f"seed{s}" / stage / "checkpoint" / "meta.json").is_file()
    assert set(got["rlhf-raises-reward"].details["gold_change"]["per_seed"]) == {"0", "1", "2"}
    # DPO's and RL's "before" are the same SFT replies, graded once
    assert ctx.memo["post"]["graded-sft0"] is pc._graded(ctx, 0, "sft")


def test_rows_follow_their_rules(rows):
    _, _, got = rows
    share = got["post-training-share-of-compute"]
    assert share.verdict == pc.share_verdict(share.low, share.high)
    assert share.value == pytest.approx(np.mean(list(share.details["per_seed"].values())), rel=1e-3)
    by_stage = share.details["share_by_stage"]  # the value is InstructGPT's pipeline; DPO's is beside it
    assert sum(by_stage[k] for k in pc.PIPELINE) == pytest.approx(share.value, rel=1e-3)
    assert by_stage["sft"] + by_stage["dpo"] == pytest.approx(share.details["sft_dpo_share"], rel=1e-3)
    rm = got["reward-model-ranks"]
    assert rm.verdict == ("holds" if rm.low > 0.5 else "does not hold")
    n = sum(v["n"] for v in rm.details["heldout"].values())
    assert rm.value == pytest.approx(sum(v["k"] for v in rm.details["heldout"].values()) / n)
    for cid in ("dpo-raises-reward", "rlhf-raises-reward"):
        d = got[cid].details
        rule = pc.reward_verdict(tuple(d["gold_change"]["ci95"]), tuple(d["rm_score_change"]["ci95"]))
        assert (got[cid].verdict, got[cid].condition) == rule
        per_seed = [d["gold_after"][s] - d["gold_before"][s] for s in ("0", "1", "2")]
        assert d["gold_change"]["per_seed"] == pytest.approx(dict(zip(("0", "1", "2"), per_seed)), abs=1e-3)
    # our grading of DPO's held-out replies is post/evaluate's gold reward on the same prompts
    for s, (before, after) in got["dpo-raises-reward"].details["policy_report_gold_heldout"].items():
        assert got["dpo-raises-reward"].details["gold_after"][s] == pytest.approx(after, abs=1e-3)
        assert got["dpo-raises-reward"].details["gold_before"][s] == pytest.approx(before, abs=1e-3)


def test_finished_stages_are_reused_not_retrained(rows, tiny_quickstart, monkeypatch):
    tmp, ctx, _ = rows

    def refuse(cfg):
        raise AssertionError(f"retrained {cfg.out}")
    for name in ("sft", "train_rm", "dpo", "rl"):
        monkeypatch.setattr(pc, name, refuse)
    again = ledger_context(tmp, tiny_quickstart)  # a new ledger run over the same work directory
    assert pc._rl(again, 1)["checkpoint"] == ctx.memo["post"]["rl1"]["checkpoint"]
    assert pc._dpo(again, 2)["train_flops"] == ctx.memo["post"]["dpo2"]["train_flops"]
    # a retrained reward model (a newer checkpoint) means the RL run that read it is stale: trained again
    meta = tmp / "work" / "post-training-seeds" / "seed1" / "rm" / "checkpoint" / "meta.json"
    stat = meta.stat()
    os.utime(meta, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    with pytest.raises(AssertionError, match="retrained .*seed1/rl"):
        pc._rl(ledger_context(tmp, tiny_quickstart), 1)
    os.utime(meta, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_over_seeds_is_the_student_t_interval():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_rise_interval_matches_newcombe():
    # Newcombe (1998), table II, example (a): 56/70 against 48/80 -> difference 0.2, interval 0.0524 to 0.3339
    d, lo, hi = newcombe(56, 70, 48, 80)
    assert (d, lo, hi) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)
    d, lo, hi = newcombe(900, 900, 0, 300)  # never stopped -> always stops: a rise near 1, inside [-1, 1]
    assert d == 1 and 0.98 < lo < 1 and hi == pytest.approx(1)


def test_verdict_rules():
    assert pc.share_verdict(0.015, 0.025) == "holds"
    assert pc.share_verdict(0.09, 0.11) == "does not hold" and pc.share_verdict(0.005, 0.006) == "does not hold"
    assert pc.format_verdict(0.9, 0.95) == ("holds", "")
    assert pc.format_verdict(0.3, 0.5)[0] == "holds only" and pc.format_verdict(-0.1, 0.95)[0] == "does not hold"
    assert pc.reward_verdict((0.01, 0.2), (0.1, 0.5)) == ("holds", "")
    assert pc.reward_verdict((-0.3, -0.1), (0.1, 0.5)) == ("does not hold", "")  # reward hacking
    verdict, condition = pc.reward_verdict((-0.1, 0.2), (0.1, 0.5))
    assert verdict == "holds only" and "reward model" in condition
    assert pc.reward_verdict((0.1, 0.2), (-0.1, 0.5))[0] == "holds only"
    assert pc.reward_verdict((-0.1, 0.1), (-0.2, 0.3)) == ("does not hold", "")
    abstain = {"before": 0.2, "after": 0.97}
    assert "reward hacking" in pc._reward_sentence((4.5, 4.0, 5.0), 2, 3, abstain)  # proxy up, truth down in 2 of 3
    assert "reward hacking" not in pc._reward_sentence((4.5, 4.0, 5.0), 1, 3, abstain)
    assert "reward hacking" not in pc._reward_sentence((0.1, -0.2, 0.4), 3, 3, abstain)  # the proxy did not rise
