"""`lmlab hallucination unknown-sft`: the people split, the mixes (same size, exact Unknown share, nested),
early stopping chosen by validation loss, an end-to-end run on the tiny model, bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from lmlab.data.world import load_world
from lmlab.errors import LmlabError
from lmlab.evals import unknown_sft as us
from lmlab.post.stage import PostTrainConfig


@pytest.fixture(scope="module")
def world(tiny_data):
    return load_world(tiny_data.parent / "world")


def labelled(world):
    """Known people's facts with a made-up, deterministic `known` label: every third one is Unknown."""
    items = world["qa_train"] + world["qa_test"]
    return [{**q, "known": i % 3 != 0} for i, q in enumerate(items)]


def test_pools_keep_heldout_people_out_of_the_fine_tuning_side(world):
    cfg = us.UnknownSFTConfig(seed=3)
    pools = us.split_pools(world, labelled(world), cfg)
    side = {q["person"] for q in pools["known"] + pools["unknown"]}
    held = {q["person"] for q in pools["heldout_known"] + pools["heldout_unknown_facts"]}
    assert side and held and not side & held
    assert held <= {q["person"] for q in world["qa_test"]}  # only QA-test people are held out
    assert all(q["known"] for q in pools["known"] + pools["heldout_known"])
    assert not any(q["known"] for q in pools["unknown"] + pools["heldout_unknown_facts"])
    n_facts = len(world["qa_train"]) + len(world["qa_test"])
    assert sum(len(pools[k]) for k in ("known", "unknown", "heldout_known", "heldout_unknown_facts")) == n_facts
    taught = {q["person"] for q in pools["abstain"]}
    unknown = {q["person"] for q in pools["unknown_people"]}
    assert taught and unknown and not taught & unknown


def test_mixes_have_one_size_the_exact_unknown_share_and_are_nested(world):
    cfg = us.UnknownSFTConfig(shares=[0, 0.25, 0.5, 1.0])
    pools = us.split_pools(world, labelled(world), cfg)
    n, by_share = us.mixes(pools, cfg)
    assert n == min(len(pools["known"]), len(pools["unknown"]))
    for share, mix in by_share.items():
        assert len(mix) == n
        assert sum(not q["known"] for q in mix) == round(share * n)
        assert len({(q["person"], q["attribute"]) for q in mix}) == n  # no example twice
    unknown = lambda m: {(q["person"], q["attribute"]) for q in m if not q["known"]}
    assert unknown(by_share[0.25]) <= unknown(by_share[0.5]) <= unknown(by_share[1.0])
    rows = us.conversations(by_share[0.5], pools["abstain"])
    assert len(rows) == n + len(pools["abstain"])
    assert sum(r["response"] == "I don't know." for r in rows) == len(pools["abstain"])


def test_examples_more_than_the_pools_allow(world):
    cfg = us.UnknownSFTConfig(examples=10_000)
    with pytest.raises(LmlabError, match="more than the"):
        us.mixes(us.split_pools(world, labelled(world), cfg), cfg)


def test_a_model_that_knows_nothing_gives_no_mix(world):
    cfg = us.UnknownSFTConfig()
    facts = [{**q, "known": False} for q in world["qa_train"] + world["qa_test"]]
    with pytest.raises(LmlabError, match="no mix possible"):
        us.mixes(us.split_pools(world, facts, cfg), cfg)


@pytest.mark.parametrize("field, value, match", [
    ("shares", [], "shares"), ("shares", [0.5, 1.5], "shares"), ("shares", [0.5, 0.5], "repeat"),
    ("examples", 0, "examples"), ("heldout_fraction", 1.0, "heldout_fraction"), ("eval_questions", 0, "eval")])
def test_bad_settings(field, value, match):
    with pytest.raises(LmlabError, match=match):
        us.UnknownSFTConfig(**{field: value})


def test_a_post_trained_checkpoint_is_refused(tiny_model, tmp_path):
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(tiny_model, ckpt)
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "stage": "sft"}))
    with pytest.raises(LmlabError, match="starts from a pretrained"):
        us.pretrained_engine(us.UnknownSFTConfig(model=str(ckpt)))


def test_end_to_end_on_the_tiny_model(tiny_model, tiny_data, tmp_path, monkeypatch):
    # What the tiny model knows is too little to mix; label its facts as above, and run the rest for real.
    monkeypatch.setattr(us, "known_facts", lambda world, engine, _n: labelled(world))
    cfg = us.UnknownSFTConfig(model=str(tiny_model), world=str(tiny_data.parent / "world"), out=str(tmp_path / "run"),
                              shares=[0.0, 1.0], eval_questions=6, max_new_tokens=6,
                              train=PostTrainConfig(steps=6, batch_size=4, eval_interval=2, lr=1e-3, min_lr=1e-4,
                                                    warmup_steps=1, device="cpu", threads=1))
    res = us.unknown_sft(cfg)
    assert [r["share"] for r in res["runs"]] == [0.0, 1.0]
    for r in res["runs"]:
        steps = [t["step"] for t in r["trajectory"]]
        assert steps == [2, 4, 6] and r["converged"]["step"] == 6
        assert r["early"]["val_loss"] == min(t["val_loss"] for t in r["trajectory"])
        assert r["unknown_examples"] == round(r["share"] * res["answered_per_mix"])
        assert (tmp_path / "run" / f"share_{round(100 * r['share']):03d}" / "checkpoint" / "meta.json").is_file()
        for t in r["trajectory"]:
            cell = t["unknown"]
            assert cell["accuracy"]["k"] == 0  # nothing about an unknown person can be right
            assert cell["hallucination_rate"]["k"] + cell["abstention_rate"]["k"] == cell["n"] > 0
    assert "fit_known" not in res["runs"][1]["converged"]  # a mix of Unknown examples only
    saved = json.loads((tmp_path / "run" / "unknown_sft.json").read_text())
    assert saved["runs"][0]["early"] == res["runs"][0]["early"]
    assert (tmp_path / "run" / "unknown_sft.png").stat().st_size > 0
    text = us.format_unknown_sft(res)
    assert "early" in text and "converged" in text and "hallucinated" in text


def test_report_collects_every_result_with_its_plots(tiny_model, tiny_data, tmp_path, monkeypatch):
    from lmlab.evals.hallucination import HallucinationConfig, hallucination_eval
    from lmlab.report.hallucination_report import HallucinationReportConfig, hallucination_report

    world = str(tiny_data.parent / "world")
    hallucination_eval(HallucinationConfig(model=str(tiny_model), world=world, questions=2, samples=2,
                                           max_new_tokens=4, device="cpu", out=str(tmp_path / "lab" / "eval")))
    monkeypatch.setattr(us, "known_facts", lambda world, engine, _n: labelled(world))
    us.unknown_sft(us.UnknownSFTConfig(
        model=str(tiny_model), world=world, out=str(tmp_path / "lab" / "usft"), shares=[0.5], eval_questions=2,
        max_new_tokens=4, train=PostTrainConfig(steps=2, batch_size=2, eval_interval=1, warmup_steps=0,
                                                device="cpu", threads=1)))
    res = hallucination_report(HallucinationReportConfig(dir=str(tmp_path / "lab")))
    page = (tmp_path / "lab" / "report.md").read_text()
    assert res["report"] == str(tmp_path / "lab" / "report.md") and len(res["results"]) == 2
    assert page.index("## Evaluation") < page.index("## Hypothesis 2")
    assert "](eval/reliability.png)" in page and "](usft/unknown_sft.png)" in page
    assert "hallucinated" in page and "Unknown fitted" in page


def test_report_of_a_directory_without_results(tmp_path):
    from lmlab.report.hallucination_report import HallucinationReportConfig, hallucination_report

    with pytest.raises(LmlabError, match="no hallucination results"):
        hallucination_report(HallucinationReportConfig(dir=str(tmp_path)))
    with pytest.raises(LmlabError, match="not a directory"):
        hallucination_report(HallucinationReportConfig(dir=str(tmp_path / "missing")))


def _fake(seed, k_known, k_made_up, shares=(0.0, 1.0)):
    cell = lambda k, n: {"k": k, "n": n, "rate": k / n, "ci95": [0, 1]}
    point = {"heldout_known": {"accuracy": cell(k_known, 10)}, "unknown": {"hallucination_rate": cell(k_made_up, 20)}}
    return {"seed": seed, "runs": [{"share": s, "early": point, "converged": point} for s in shares]}


def test_pooling_seeds_adds_their_counts():
    pooled = us.pool_seeds([_fake(0, 3, 5), _fake(1, 4, 15)])
    assert pooled["seeds"] == [0, 1]
    row = pooled["table"][1]["converged"]
    assert (row["Known right"]["k"], row["Known right"]["n"]) == (7, 20)
    assert (row["unknown: made up"]["k"], row["unknown: made up"]["n"]) == (20, 40)
    assert row["Unknown fitted"]["n"] == 0 and row["Unknown fitted"]["rate"] is None
    assert "pooled over seeds 0, 1" in us.format_pooled(pooled)
    with pytest.raises(LmlabError, match="same shares"):
        us.pool_seeds([_fake(0, 3, 5), _fake(1, 3, 5, shares=(0.0, 0.5))])
