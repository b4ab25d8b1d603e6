"""The causal-vs-masked claims at the tiny size: valid rows whose verdicts follow their rules, and the pieces
they rest on (the per-snippet probe, the pooled bootstrap, the quickstart's masked recipe, the verdict rules)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmlab.data.world import load_world
from lmlab.evals.bidirectional import compare, snippets
from lmlab.infer.engine import Engine
from lmlab.ledger import masked_claims as mc
from lmlab.ledger.run import LedgerConfig, ledger
from lmlab.model.checkpoint import load_model

IDS = [mc.ONE_MASK, mc.BOTH_SIDES]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("masked")
    ledger(LedgerConfig(size="tiny", only=IDS, out=str(tmp / "docs"), work=str(tmp / "work"), readme=None))
    rows = {r["id"]: r for r in json.loads((tmp / "docs" / "ledger.json").read_text())["rows"]}
    return tmp, rows


def test_rows_are_valid_and_drawn(tiny):
    tmp, rows = tiny
    assert sorted(rows) == sorted(IDS)
    for r in rows.values():
        assert r["low"] <= r["value"] <= r["high"] and "tiny" in r["measured"]
        assert (tmp / "docs" / r["plot"]).stat().st_size > 1000


def test_one_mask_holds_exactly(tiny):
    r = tiny[1][mc.ONE_MASK]
    d = r["details"]
    assert r["verdict"] == "holds" and r["value"] == 1.0
    assert d["config_fields_that_differ"] == ["causal"]
    assert d["max_abs_diff_masked_with_causal_mask"] == 0.0  # the causal mask, given explicitly: the causal model
    assert min(d["max_abs_diff_open_by_position"][:-1]) > 0  # its own mask: every earlier position changes
    assert d["last_position_diff_one_layer"] == 0.0
    assert 0.05 < d["masked_labelled_share"] < 0.3


def test_both_sides_verdict_follows_its_interval(tiny):
    r = tiny[1][mc.BOTH_SIDES]
    assert r["verdict"] == ("holds" if r["low"] > 0 else "does not hold")
    longest = max((k for k in r["details"] if k.startswith("masked_")), key=lambda k: int(k.split("_")[1]))
    e = r["details"][longest]
    assert len(e["val_loss_by_seed"]) == mc.SEEDS
    assert e["both_sides_minus_left_only"]["mean"] == pytest.approx(r["value"], abs=1e-4)


def test_per_snippet_agrees_with_compare(tiny):
    """Relabelling each snippet as its own attribute must not change what compare() measures."""
    run = tiny[0] / "work" / "tiny_quickstart"
    engine = Engine.from_checkpoint(run / "checkpoint", device="cpu")
    masked = load_model(run / "mlm" / "checkpoint")
    items = snippets(load_world(run / "world"), "qa_test", 2)
    mine, theirs = mc.per_snippet(engine.model, masked, engine.tok, items), compare(engine.model, masked,
                                                                                    engine.tok, items)
    for reading in mc.READINGS:
        assert len(mine[reading]["per_snippet"]) == len(items)
        assert np.nanmean(mine[reading]["per_snippet"]) == pytest.approx(theirs[reading]["value_accuracy"])
        assert mine[reading]["token_accuracy"] == pytest.approx(theirs[reading]["token_accuracy"])


def test_masked_config_is_the_quickstarts_masked_stage(tiny, tmp_path):
    run = tiny[0] / "work" / "tiny_quickstart"
    meta = json.loads((run / "mlm" / "checkpoint" / "meta.json").read_text())
    cfg = mc._masked_config(run, tmp_path, meta["step"], seed=5)
    mine = {k: v for k, v in vars(cfg.train).items() if k not in ("seed", "progress")}
    assert all(meta["train_config"][k] == v for k, v in mine.items() if k in meta["train_config"])
    assert cfg.objective == "mlm" and not cfg.model.causal and cfg.train.seed == 5
    saved = json.loads((run / "mlm" / "checkpoint" / "config.json").read_text())
    assert {k: v for k, v in vars(cfg.model).items() if k in saved} == saved


def test_pooled_bootstrap_on_known_differences():
    n = 200
    rng = np.random.default_rng(0)
    runs = [{"masked_right": {"per_snippet": (rng.random(n) < 0.6).astype(float)},
             "masked_left": {"per_snippet": (rng.random(n) < 0.2).astype(float)}} for _ in range(3)]
    runs[0]["masked_right"]["per_snippet"][0] = np.nan  # a snippet with nothing to predict is left out
    d = mc._pooled(runs, "masked_right", 0, minus="masked_left")
    assert 0.3 < d["low"] < d["mean"] < d["high"] < 0.5
    same = mc._pooled([{**r, "masked_left": r["masked_right"]} for r in runs], "masked_right", 0,
                      minus="masked_left")
    assert same == {"mean": 0.0, "low": 0.0, "high": 0.0}


def test_rules():
    assert mc.one_mask_verdict(1.0, ["causal"], 0.0, 0.1)
    assert not mc.one_mask_verdict(0.99, ["causal"], 0.0, 0.1)
    assert not mc.one_mask_verdict(1.0, ["causal", "d_model"], 0.0, 0.1)
    assert not mc.one_mask_verdict(1.0, ["causal"], 1e-3, 0.1)
    assert not mc.one_mask_verdict(1.0, ["causal"], 0.0, 0.0)
    assert mc.learned_phrase(0.0, 0.0) == "learns almost none of the facts"
    assert mc.learned_phrase(0.5, 0.9).startswith("learns most")
    assert mc.learned_phrase(0.2, 0.9) == "learns some of the facts"
    assert mc.loss_trend([[250, 2.0], [500, 1.0], [750, 0.9], [1000, 0.7]]) == "still falling at the end"
    assert mc.loss_trend([[500, 1.0], [750, 0.7], [1000, 0.695]]) == "flat over the last quarter"
    assert mc.loss_trend([[10, 5.0]]) == "measured only at the end"
