"""`lmlab hallucination penalty`: the gold reward's penalty, the RL prompts kept apart from the held-out
people, an end-to-end sweep on the tiny model, bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from lmlab.data.world import load_world
from lmlab.data.world_chat import ABSTAIN, gold_reward
from lmlab.errors import LmlabError
from lmlab.evals import wrong_penalty as wp
from lmlab.post.rl import RLConfig, load_prompts
from lmlab.post.stage import PostTrainConfig

ITEM = {"answer": "Saltmarsh"}


@pytest.mark.parametrize("penalty", [0.0, 1.0, 4.0])
def test_gold_reward_scores_a_wrong_answer_minus_the_penalty(penalty):
    assert gold_reward(ITEM, "Saltmarsh.", False, penalty) == 1.0
    assert gold_reward(ITEM, "Redwater", False, penalty) == -penalty
    assert gold_reward(ITEM, ABSTAIN, False, penalty) == 0.0
    assert gold_reward({"answer": None}, "Redwater", True, penalty) == -penalty
    assert gold_reward({"answer": None}, ABSTAIN, True, penalty) == 1.0


def test_the_penalty_sets_the_confidence_needed_to_answer():
    # Expected reward of answering with P(right) = p is p - (1 - p) x penalty, of abstaining 0: they are
    # equal at p = penalty / (1 + penalty), the threshold the table prints.
    for penalty in (0.5, 1.0, 4.0):
        p = penalty / (1 + penalty)
        assert p * gold_reward(ITEM, "Saltmarsh", False, penalty) \
            + (1 - p) * gold_reward(ITEM, "Redwater", False, penalty) == pytest.approx(0.0)


def test_rl_config_refuses_a_negative_penalty():
    with pytest.raises(LmlabError, match="wrong_penalty"):
        RLConfig(wrong_penalty=-1.0)


def test_prompts_file_replaces_the_worlds_training_split(tiny_data, tmp_path):
    world = str(tiny_data.parent / "world")
    (tmp_path / "p.jsonl").write_text('{"prompt": "Where was Ann born?"}\n')
    assert load_prompts(world, 0, str(tmp_path / "p.jsonl")) == ["Where was Ann born?"]
    assert len(load_prompts(world, 0)) > 1


def test_prompts_never_ask_about_heldout_people(tiny_data):
    world = load_world(tiny_data.parent / "world")
    prompts, groups = wp.splits(world, wp.PenaltyConfig(eval_questions=1000))
    asked = {q["question"] for q in prompts}
    for g, items in groups.items():
        assert items and not asked & {q["question"] for q in items}, g
    held_people = {q["person"] for q in groups["heldout_test"] + groups["unknown"]}
    assert not held_people & {q["person"] for q in prompts}
    test_side = [q for q in prompts if q["group"] == "qa_test"]
    assert test_side and len([q for q in prompts if q["group"] == "qa_train"]) == len(test_side)


def test_preference_pairs_rank_right_over_abstaining_over_made_up(tiny_data):
    world = load_world(tiny_data.parent / "world")
    known, unknown = world["qa_train"][0], world["qa_unknown"][0]
    pairs = wp.preference_pairs(world, [known, unknown], 2.0, seed=0)
    made_up = [p["rejected"] for p in pairs if p["rejected"] not in (ABSTAIN, known["answer"])]
    assert len(set(made_up)) == 2 and known["answer"] not in made_up
    got = {(p["prompt"], p["chosen"] == ABSTAIN, p["rejected"] == ABSTAIN): p["margin"] for p in pairs}
    assert got == {(known["question"], False, True): 1.0,    # right (+1) over abstaining (0)
                   (known["question"], False, False): 3.0,   # right over made up (-2)
                   (known["question"], True, False): 2.0,    # abstaining over made up
                   (unknown["question"], True, False): 3.0}  # about an unknown person: abstaining (+1) over made up


@pytest.mark.parametrize("field, value", [("penalties", []), ("penalties", [-1.0]), ("penalties", [1.0, 1.0]),
                                          ("heldout_fraction", 0.0), ("eval_questions", 0)])
def test_bad_settings(field, value):
    with pytest.raises(LmlabError, match=field):
        wp.PenaltyConfig(**{field: value})


def chat_checkpoint(tiny_model, tmp_path):
    ckpt = tmp_path / "sft" / "checkpoint"
    shutil.copytree(tiny_model, ckpt)
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "stage": "sft"}))
    return ckpt


def test_a_pretrained_model_is_refused(tiny_model, tiny_data, tmp_path):
    cfg = wp.PenaltyConfig(model=str(tiny_model), world=str(tiny_data.parent / "world"), out=str(tmp_path / "o"))
    with pytest.raises(LmlabError, match="not post-trained in the chat template"):
        wp.penalty_sweep(cfg)


def test_end_to_end_sweep_on_the_tiny_model(tiny_model, tiny_data, tmp_path):
    ckpt = chat_checkpoint(tiny_model, tmp_path)
    rl = RLConfig(group_size=2, prompts_per_step=4, max_new_tokens=6, eval_questions=0,
                  train=PostTrainConfig(steps=2, lr=1e-4, min_lr=1e-5, warmup_steps=0, device="cpu", threads=1))
    cfg = wp.PenaltyConfig(model=str(ckpt), world=str(tiny_data.parent / "world"), out=str(tmp_path / "sweep"),
                           penalties=[0.0, 3.0], eval_questions=6, max_new_tokens=6, rl=rl)
    res = wp.penalty_sweep(cfg)
    assert [r["penalty"] for r in res["runs"]] == [0.0, 3.0]
    assert [r["threshold"] for r in res["runs"]] == [0.0, 0.75]
    for rates in [res["before"]] + [r["rates"] for r in res["runs"]]:
        assert set(rates) == set(res["groups"])
        for g in rates.values():
            assert sum(g[k]["k"] for k in ("accuracy", "hallucination_rate", "abstention_rate")) == g["n"]
        assert rates["unknown"]["accuracy"]["k"] == 0
    for r in res["runs"]:
        run = tmp_path / "sweep" / f"penalty_{r['penalty']:g}"
        assert json.loads((run / "checkpoint" / "meta.json").read_text())["stage"] == "rl"
        assert json.loads((run / "summary.json").read_text())["rl"]["reward"] == "gold"
    saved = json.loads((tmp_path / "sweep" / "penalty.json").read_text())
    assert saved["runs"][1]["rates"] == res["runs"][1]["rates"]
    assert (tmp_path / "sweep" / "penalty.png").stat().st_size > 0
    assert "answer if P >" in wp.format_penalty(res)


def test_the_learned_arm_trains_a_reward_model_grpo_and_dpo(tiny_model, tiny_data, tmp_path):
    from lmlab.post.dpo import DPOConfig
    from lmlab.post.rm import RMConfig

    ckpt = chat_checkpoint(tiny_model, tmp_path)
    tiny = dict(steps=2, batch_size=2, lr=1e-4, min_lr=1e-5, warmup_steps=0, device="cpu", threads=1)
    cfg = wp.PenaltyConfig(model=str(ckpt), world=str(tiny_data.parent / "world"), out=str(tmp_path / "sweep"),
                           penalties=[1.0], eval_questions=4, max_new_tokens=6, learned=True,
                           rl=RLConfig(group_size=2, prompts_per_step=2, max_new_tokens=6, eval_questions=0,
                                       train=PostTrainConfig(**tiny)),
                           rm=RMConfig(margin=True, train=PostTrainConfig(**tiny)),
                           dpo=DPOConfig(eval_questions=0, train=PostTrainConfig(**tiny)))
    res = wp.penalty_sweep(cfg)
    assert [x["name"] for x in res["learned"]] == ["RM + GRPO", "DPO"] and res["learned_penalty"] == 1.0
    assert json.loads((tmp_path / "sweep" / "rm_grpo" / "summary.json").read_text())["rl"]["reward"].startswith("rm:")
    pairs = [json.loads(line) for line in (tmp_path / "sweep" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["margin"] > 0 for p in pairs)
    text = wp.format_penalty(res)
    assert "RM + GRPO" in text and "DPO" in text
