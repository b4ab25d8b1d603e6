"""The memory claims at tiny size (one measuring subprocess for both), and the rules their verdicts follow."""

from __future__ import annotations

import json

import pytest

from lmlab.ledger.memory_claims import CLAIMS, RULE_BAND, TRAIN_BAND, largest_within, rule_bytes, verdict
from lmlab.ledger.run import LedgerConfig, ledger

IDS = [c.id for c in CLAIMS]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memory")
    result = ledger(LedgerConfig(size="tiny", only=IDS, out=str(tmp / "docs"), work=str(tmp / "work"), readme=None))
    assert result["ran"] == IDS
    data = json.loads((tmp / "docs" / "ledger.json").read_text())
    return tmp, {r["id"]: r for r in data["rows"]}


def test_claim_ids():
    assert IDS == ["inference-memory-rule", "training-memory-3-4x"]


def test_rows_are_valid_and_draw_their_plots(rows):
    tmp, by_id = rows
    for r in by_id.values():
        assert r["low"] <= r["value"] <= r["high"]
        assert r["verdict"] in ("holds", "does not hold", "holds only")
        assert (r["verdict"] == "holds only") == bool(r["condition"])
        assert "tiny" in r["measured"] and "range (min..max)" in r["interval"]
        assert (tmp / "docs" / r["plot"]).stat().st_size > 1000


def test_inference_memory_is_at_least_the_weights_and_grows_with_the_workload(rows):
    _, by_id = rows
    d = by_id["inference-memory-rule"]["details"]
    for by in d["ratios"].values():
        for series in by.values():
            assert all(r >= 1 / 1.2 - 1e-3 for _, _, r in series)  # the peak holds at least the weights
            for context in {c for _, c, _ in series}:
                at = [r for _, c, r in sorted(series) if c == context]
                assert at == sorted(at)  # more sequences, more KV cache and activations
    # the verdict follows the written rule from the recorded numbers
    everywhere = [r for by in d["ratios"].values() for s in by.values() for _, _, r in s]
    lo, hi = d["at_batch_1_shortest_context_range"]
    assert by_id["inference-memory-rule"]["verdict"] == verdict([lo, hi], everywhere, RULE_BAND)


def test_training_needs_more_than_serving_and_more_still_against_bf16(rows):
    _, by_id = rows
    d = by_id["training-memory-3-4x"]["details"]
    for by in d["ratios"].values():
        fp32, bf16 = by["vs fp32 inference"], by["vs bf16 inference"]
        assert all(r > 1 for _, _, r in fp32)
        # the bf16 prefill is smaller, so the same training step is a larger multiple of it
        assert all(b16 > f32 for (_, _, f32), (_, _, b16) in zip(fp32, bf16))
    assert d["band"] == [round(x, 3) for x in TRAIN_BAND]


def test_rule_bytes_is_the_rule_of_thumb():
    assert rule_bytes(8_000_000_000, "bf16") == pytest.approx(19.2e9)  # 8 x 2 x 1.2 GB
    assert rule_bytes(1_000_000, "fp32") == pytest.approx(4.8e6)


def test_largest_within_stops_at_the_first_workload_out_of_band():
    band = (0.8, 1.2)
    points = [(16, 0.9), (64, 1.0), (64, 1.1), (128, 1.1), (128, 1.3), (256, 1.15), (512, 2.0)]
    assert largest_within(points, band) == 64  # one setting of 128 tokens is out; 256 does not count after it
    assert largest_within([(16, 1.5), (64, 1.0)], band) is None
    assert largest_within([(16, 1.0), (64, 1.1)], band) == 64


def test_verdict_rule():
    band = (0.8, 1.2)
    assert verdict([1.0, 1.1], [1.0, 1.1, 1.19], band) == "holds"
    assert verdict([1.0, 1.1], [1.0, 1.1, 3.0], band) == "holds only"
    assert verdict([1.0, 1.3], [1.0, 1.3, 3.0], band) == "does not hold"
