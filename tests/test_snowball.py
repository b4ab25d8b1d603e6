"""`lmlab hallucination snowball`: prefixes with one planted error, the reading and grading of continuations on
hand-written text, the correction training's loss mask, bad input, and one end-to-end run on the tiny model."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from lmlab.data.conversations import IGNORE
from lmlab.data.tokenizer import Tokenizer
from lmlab.data.world import load_world
from lmlab.errors import LmlabError
from lmlab.evals.answers import canonical
from lmlab.evals.bio_facts import DEPENDENT, MARKER, catch_reward, grade, make_prefixes, statements
from lmlab.evals.snowball import SnowballConfig, format_snowball, rl_prompts, snowball
from lmlab.model.checkpoint import load_checkpoint
from lmlab.post.correct import correction_texts, decision_labels, encode_example
from lmlab.post.rl import RLConfig
from lmlab.post.stage import PostTrainConfig


@pytest.fixture(scope="module")
def world(tiny_data):
    return load_world(tiny_data.parent / "world")


def _facts(text, name, world):
    return [(s["attribute"], s["value"]) for s in statements(text, name, world["pools"])]


def test_error_and_control_differ_in_the_planted_fact_only(world):
    people = [p for p in world["people"] if p["group"] == "qa_train"][:4]
    rows = make_prefixes(world, people, 2, 2, random.Random(0))
    assert len(rows) == 4 * 6 * 2
    for r in rows:
        person, donor = world["people_by_name"][r["person"]], world["people_by_name"][r["donor"]]
        err, ctl = _facts(r["error"], r["person"], world), _facts(r["control"], r["person"], world)
        assert err[:-1] == ctl[:-1] and len(err) == len(r["context"]) + 1
        assert err[-1][0] == ctl[-1][0] == r["attribute"]
        assert r["injected"] == donor[r["attribute"]] != person[r["attribute"]] == r["truth"]
        assert donor["name"] != person["name"] and donor["group"] != "unknown"
        assert DEPENDENT.get(r["attribute"]) not in r["context"] and r["attribute"] not in r["later"]
        assert sorted(r["later"] + r["context"] + [r["attribute"]]) == sorted(world["attributes"])
        if r["attribute"] == "employer":  # else the city could not tell which employer is believed
            assert world["employer_city"][r["injected"]] != person["employer_city"]


def test_prefixes_are_seeded(world):
    people = [p for p in world["people"] if p["group"] == "qa_test"][:3]
    assert make_prefixes(world, people, 1, 1, random.Random(5)) == make_prefixes(world, people, 1, 1, random.Random(5))
    assert make_prefixes(world, people, 1, 1, random.Random(5)) != make_prefixes(world, people, 1, 1, random.Random(6))


@pytest.fixture()
def employer_row(world):
    """A wrong employer planted for the first known person (a donor whose company is in another city)."""
    person = world["people"][0]
    donor = next(p for p in world["people"][1:] if p["group"] != "unknown"
                 and world["employer_city"][p["employer"]] != person["employer_city"]
                 and p["birth_city"] != person["birth_city"] and p["major"] != person["major"])
    later = [a for a in world["attributes"] if a != "employer"]
    return person, donor, {"person": person["name"], "attribute": "employer", "donor": donor["name"],
                           "injected": donor["employer"], "truth": person["employer"], "context": [], "later": later,
                           "template": 0}


def test_a_dependent_fact_going_with_the_planted_employer_counts_as_following_it(world, employer_row):
    person, donor, row = employer_row
    name, planted_city = person["name"], world["employer_city"][donor["employer"]]
    g = grade(row, f" {name}'s office is in {planted_city}. {name} was born in {person['birth_city']}.", world)
    city = next(f for f in g["facts"] if f["attribute"] == "employer_city")
    assert city["follows"] and not city["correct"]
    born = next(f for f in g["facts"] if f["attribute"] == "birth_city")
    assert born["correct"] and not born["follows"]
    assert g["restated"] is None and g["correction"] is None and not g["any_correction"]


def test_a_continuation_repeating_the_truth_does_not_follow_the_error(world, employer_row):
    person, _, row = employer_row
    name = person["name"]
    text = (f" {MARKER} {name} works at {person['employer']}. {name} works in {person['employer_city']}."
            f" {name} is employed by {person['employer']}. {name} majored in {person['major']}.")
    g = grade(row, text, world)
    assert {f["attribute"]: (f["correct"], f["follows"]) for f in g["facts"]} == {
        "employer_city": (True, False), "major": (True, False)}
    assert g["correction"] == "truth" and g["any_correction"] and g["restated"] == "truth"


def test_reading_stops_at_another_person_and_falls_back_to_pool_values(world, employer_row):
    person, donor, row = employer_row
    name = person["name"]
    text = (f" {name} happily works near {person['employer_city']} these days. {donor['name']} was born in "
            f"{donor['birth_city']}. {name} was born in {donor['birth_city']}.")
    said = statements(text, name, world["pools"])
    assert [(s["attribute"], s["value"], s["template"]) for s in said] == [
        ("employer_city", canonical(person["employer_city"]), False)]  # a value read from a pool is canonical
    g = grade(row, text, world)
    assert [f["attribute"] for f in g["facts"]] == ["employer_city"] and g["unmatched"] == 1


def test_a_repeated_attribute_is_graded_once_on_its_first_statement(world, employer_row):
    person, _, row = employer_row
    name, wrong = person["name"], next(c for c in world["pools"]["major"] if c != person["major"])
    g = grade(row, f" {name} majored in {wrong}. {name}'s major was {person['major']}.", world)
    assert [(f["attribute"], f["correct"]) for f in g["facts"]] == [("major", False)]


def test_correction_training_never_targets_the_prefix(tiny_model):
    tok = Tokenizer.load(tiny_model / "tokenizer.json")
    ex = encode_example(tok, "Aeara Astamir works at Beacon Health.", " Correction: fixed.", 200)
    head = 1 + len(tok.encode("Aeara Astamir works at Beacon Health."))
    assert ex.labels[: head - 1] == [IGNORE] * (head - 1)
    assert ex.labels[head - 1:] == tok.encode(" Correction: fixed.") + [tok.eos_id]
    assert len(ex.ids) == len(ex.labels) and ex.ids[0] == tok.eos_id
    with pytest.raises(LmlabError, match="context"):
        encode_example(tok, "Aeara Astamir works at Beacon Health.", " x", 5)


def test_correction_texts_and_the_decision_token(world, tiny_model):
    person = [p for p in world["people"] if p["group"] == "qa_train"][0]
    row = make_prefixes(world, [person], 1, 1, random.Random(0))[0]
    (err, fix), (ctl, rest) = correction_texts(world, row, random.Random(0))
    assert (err, ctl) == (row["error"], row["control"])
    assert fix.startswith(f"\n{MARKER} {person['name']}") and rest.startswith(f" {person['name']}")
    assert _facts(fix, person["name"], world)[0] == (row["attribute"], row["truth"])  # the same fact, now true
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8], [IGNORE, 5, 6, 9], [IGNORE, IGNORE, 3, 4]])
    assert decision_labels(labels, [True, True, False]).tolist() == [[IGNORE, IGNORE, 7, IGNORE],
                                                                     [IGNORE, 5, IGNORE, IGNORE], [IGNORE] * 4]


@pytest.mark.parametrize("field, value", [("people", 0), ("prefixes", 0), ("context", 4), ("group", "unknown"),
                                          ("max_new_tokens", 0), ("seed", -1),
                                          ("decision_weight", -1.0), ("rl_prefixes", 0)])
def test_bad_settings(field, value):
    with pytest.raises(LmlabError, match=field):
        SnowballConfig(**{field: value})


def test_rl_needs_the_correction_training():
    with pytest.raises(LmlabError, match="rl needs mitigate"):
        SnowballConfig(rl=True)
    assert SnowballConfig(rl=True, mitigate=True).rl_settings.group_size == 8


def test_the_catch_reward_on_hand_written_continuations(world, employer_row):
    person, donor, row = employer_row
    name, fix = person["name"], f"{MARKER} {person['name']} works at {person['employer']}."
    rest = f" {name} was born in {person['birth_city']}."
    assert catch_reward(row, "error", fix + rest, world) == 2.0  # caught and restored
    assert catch_reward(row, "error", f"\n{fix}", world) == 2.0
    assert catch_reward(row, "error", f"{MARKER} {name} works at {donor['employer']}.", world) == 1.0  # caught only
    assert catch_reward(row, "error", f"{MARKER} {name} was born in {person['birth_city']}.", world) == 1.0
    assert catch_reward(row, "error", rest, world) == 0.0  # went on
    assert catch_reward(row, "error", rest + f"\n{fix}", world) == 0.0  # too late: the error had its say
    assert catch_reward(row, "control", rest, world) == 0.0
    assert catch_reward(row, "control", fix, world) == catch_reward(row, "control", rest + " " + fix, world) == -1.0


def test_rl_prompts_are_training_people_apart_from_the_measured(world):
    qa_test = [p for p in world["people"] if p["group"] == "qa_test"][:2]
    qa_train = [p for p in world["people"] if p["group"] == "qa_train"]
    cfg = SnowballConfig(mitigate=True, rl=True, context=1, rl_prefixes=2)
    measured = make_prefixes(world, qa_train[:2], 1, 1, random.Random(cfg.seed)) + make_prefixes(
        world, qa_test, 1, 1, random.Random(0))
    prompts = rl_prompts(cfg, world, measured)
    texts = {r[c] for r in measured for c in ("error", "control")}
    assert prompts and not texts & set(prompts)
    assert {r["person"] for r, _ in prompts.values()} <= {p["name"] for p in qa_train}
    assert {c for _, c in prompts.values()} == {"error", "control"}
    assert all(r[c] == t for t, (r, c) in prompts.items())


def test_a_world_without_known_people(tiny_data, tmp_path):
    world = tmp_path / "w"
    shutil.copytree(tiny_data.parent / "world", world)
    facts = json.loads((world / "facts.json").read_text())
    facts["people"] = [{**p, "group": "unknown"} for p in facts["people"]]
    (world / "facts.json").write_text(json.dumps(facts))
    with pytest.raises(LmlabError, match="no qa_train people"):
        snowball(SnowballConfig(model=str(tmp_path / "none"), world=str(world), device="cpu"))


def test_end_to_end_measure_and_mitigate(tiny_model, tiny_data, tmp_path):
    out = tmp_path / "out"
    cfg = SnowballConfig(model=str(tiny_model), world=str(tiny_data.parent / "world"), people=3, prefixes=1, context=0,
                         max_new_tokens=40, device="cpu", mitigate=True, train_prefixes=1, out=str(out),
                         train=PostTrainConfig(steps=3, batch_size=4, lr=1e-3, min_lr=1e-4, warmup_steps=1))
    res = snowball(cfg)
    assert res["prefixes"] == 3 * 6 and set(res["stages"]) == {"pretrained", "corrected"}
    assert res["training"]["steps"] == 3
    assert res["training"]["replayed"] == len(load_world(cfg.world, pretrain=True)["pretrain"])
    for stage in res["stages"].values():
        for cond in stage.values():
            assert cond["prefixes"] == 18
            dep = cond["dependent"]["employer->employer_city"]
            assert dep["prefixes"] == 3 and dep["stated"]["k"] == dep["follows_error"]["n"] <= 3
            assert dep["follows_error"]["k"] + dep["follows_truth"]["k"] <= dep["follows_error"]["n"]
            for r in (cond["independent"]["wrong"], cond["marked"], cond["qa"]["independent"]["wrong"]):
                assert r["n"] == 0 or r["ci95"][0] <= r["rate"] <= r["ci95"][1]
            qa = cond["qa"]
            assert qa["asked"] + qa["left_out"] == 3 * 6 * 5 and qa["asked"] > 0  # all later attributes
            assert qa["independent"]["n"] + qa["employer->employer_city"]["n"] <= qa["asked"]
    lines = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 2 * 18 and {x["stage"] for x in lines} == {"pretrained", "corrected"}
    assert json.loads((out / "snowball.json").read_text())["files"]["checkpoint"] == str(out / "checkpoint")
    assert load_checkpoint(out / "checkpoint").meta["stage"] == "correct"
    again = snowball(SnowballConfig(model=str(tiny_model), world=cfg.world, people=3, prefixes=1, context=0,
                                    max_new_tokens=40, device="cpu"))
    assert again["stages"]["pretrained"] == res["stages"]["pretrained"]


def test_end_to_end_rl_stage(tiny_model, tiny_data, tmp_path):
    cfg = SnowballConfig(model=str(tiny_model), world=str(tiny_data.parent / "world"), people=2, prefixes=1, context=0,
                         max_new_tokens=24, qa=False, device="cpu", mitigate=True, train_prefixes=1, out=str(tmp_path),
                         force=True, train=PostTrainConfig(steps=2, batch_size=4, lr=1e-3, warmup_steps=1, threads=1),
                         rl=True, rl_settings=RLConfig(prompts_per_step=4, group_size=2, max_new_tokens=8, train=(
                             PostTrainConfig(steps=2, lr=1e-3, warmup_steps=0, log_interval=1))))
    res = snowball(cfg)
    assert list(res["stages"]) == ["pretrained", "corrected", "rl"] and res["rl"]["steps"] == 2
    assert len(res["rl"]["reward_curve"]) == 2 and all(-1 <= r <= 2 for r in res["rl"]["reward_curve"])
    assert res["stages"]["rl"]["error"]["prefixes"] == 12
    assert load_checkpoint(tmp_path / "checkpoint").meta["stage"] == "rl"
    text = format_snowball(res)
    assert "rl (grpo, catch reward): 2 steps" in text and "\nrl:" in text
