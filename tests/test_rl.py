"""RL: KL estimators, GAE, the PPO and GRPO pieces against hand computation, and short PPO/GRPO runs."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from lmlab.config import from_dict
from lmlab.data.conversations import IGNORE
from lmlab.errors import LmlabError
from lmlab.post.rl import RLConfig, gae, grpo_advantages, kl_per_token, load_reward, ppo_policy_loss, ppo_value_loss, rl


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert kl_per_token(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    r = [math.exp(-0.5), math.exp(1.0)]  # ref / pi
    assert kl_per_token(logp, ref, "k3").tolist() == pytest.approx([x - 1 - math.log(x) for x in r])
    assert (kl_per_token(torch.randn(100), torch.randn(100), "k3") >= 0).all()


def test_kl_at_masked_positions_is_zero_even_where_exp_would_overflow():
    """A prompt position's placeholder log-prob can be -1000: k3 there must be 0, and so must its gradient."""
    logp = torch.tensor([-0.5, -1000.0], requires_grad=True)
    ref, mask = torch.tensor([-0.7, 0.0]), torch.tensor([True, False])
    for est in ("k1", "k3"):
        kl = kl_per_token(logp, ref, est, mask) * mask
        assert torch.isfinite(kl).all() and kl[1] == 0
        assert kl[0] == kl_per_token(logp[:1], ref[:1], est)[0]
        kl.sum().backward()
        assert torch.isfinite(logp.grad).all() and logp.grad[1] == 0
        logp.grad = None


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    gamma, lam = 0.9, 0.8
    d2 = 1.0 + 0 - 0.7
    d1 = 0.0 + gamma * 0.7 - 0.6
    d0 = 0.0 + gamma * 0.6 - 0.5
    a2, a1 = d2, d1 + gamma * lam * d2
    a0 = d0 + gamma * lam * a1
    adv, ret = gae(rewards, values, mask, gamma, lam)
    assert adv[0, :3].tolist() == pytest.approx([a0, a1, a2]) and adv[0, 3] == 0
    assert ret[0, :3].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])


def test_ppo_losses_match_hand_computation():
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0]])
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.tensor([[True, True, False]])
    loss, clipped = ppo_policy_loss(logp, old, adv, mask, 0.2)
    # ratio 1.5 clipped to 1.2 (A > 0): -1.2; ratio 0.5, A > 0: min(0.5, 0.8) = 0.5 -> -0.5
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2) and clipped == pytest.approx(1.0)
    v, old_v, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 1.0]])
    vl = ppo_value_loss(v, old_v, ret, torch.tensor([[True, True]]), 0.2)
    # row 0: max((1-0)^2, (0.7-0)^2) = 1; row 1: max(1, 1) = 1 -> 0.5 x mean(1, 1)
    assert vl.item() == pytest.approx(0.5)


def test_grpo_advantages_are_normalised_within_groups():
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0, 5.0, 5.0, 5.0, 5.0]), 4)
    assert adv[:4].tolist() == pytest.approx([1, -1, 1, -1], abs=1e-4)
    assert adv[4:].tolist() == pytest.approx([0, 0, 0, 0])  # no signal when every reply scores the same


def test_bad_settings_and_rewards_are_refused(tmp_path):
    with pytest.raises(LmlabError, match="grpo needs group_size >= 2"):
        RLConfig(group_size=1)
    with pytest.raises(LmlabError, match="algo must be one of ppo, grpo"):
        RLConfig(algo="a2c")
    with pytest.raises(LmlabError, match="reward must be 'gold'"):
        load_reward("bleu", str(tmp_path), "cpu")
    with pytest.raises(LmlabError, match="needs a world directory"):
        load_reward("gold", str(tmp_path), "cpu")
    with pytest.raises(LmlabError, match="cannot load 'nope'"):
        load_reward("python:math:nope", str(tmp_path), "cpu")


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_short_rl_run_raises_the_reward_of_a_python_function(tiny_data, tiny_model, tmp_path, algo):
    # Reward: the reply is short. Easy to learn, checkable, and independent of any learned model.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "Tell me about person {i}."}}\n' for i in range(8)))
    (tmp_path / "short_reward.py").write_text("def reward(prompt, reply):\n    return -len(reply) / 20\n")
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        cfg = from_dict(RLConfig, {
            "init": str(tiny_model), "data": str(prompts), "reward": "python:short_reward:reward", "algo": algo,
            "out": str(tmp_path / algo), "prompts_per_step": 8, "group_size": 4, "max_new_tokens": 12,
            "train": {"steps": 25, "lr": 1e-3, "min_lr": 1e-3, "warmup_steps": 0, "device": "cpu", "threads": 1,
                      "log_interval": 1}})
        s = rl(cfg)
    finally:
        sys.path.remove(str(tmp_path))
    import json
    rows = [json.loads(x) for x in (tmp_path / algo / "metrics.jsonl").read_text().splitlines()]
    ops = rows.pop()["ops"]  # the last line: which implementation each op took, and why
    assert {o["op"] for o in ops} >= {"linear", "attention"} and all(o["calls"] > 0 for o in ops)
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.1, (first, last)
    assert all(math.isfinite(r["kl"]) and 0 <= r["clip_fraction"] <= 1 for r in rows)
    assert s["final"]["kl"] > 0 and (tmp_path / algo / "checkpoint" / "model.safetensors").is_file()


def test_a_recipe_naming_a_python_reward_is_refused_unless_allowed(tmp_path, capsys, monkeypatch):
    from lmlab.cli import main

    monkeypatch.chdir(tmp_path)  # whatever the verb writes by default stays out of the repository
    recipe = tmp_path / "rl.yaml"
    recipe.write_text("reward: python:os:getcwd\n")
    assert main(["rl", "--config", str(recipe)]) == 2
    assert "names code to run (reward: 'python:os:getcwd')" in capsys.readouterr().err
    # allowed, the recipe gets as far as the missing policy
    assert main(["rl", "--config", str(recipe), "--allow-code", "--init", str(tmp_path / "none")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_each_prompt_of_a_step_samples_with_its_own_seed(tiny_model):
    """One seed for the whole step gave reply j of every prompt the same random draws: the same prompt twice
    sampled the same replies twice. A process's share of the prompts gets the seeds they have in the step."""
    from lmlab.data.tokenizer import Tokenizer
    from lmlab.model.checkpoint import load_model
    from lmlab.post.rl import prompt_seeds, rollouts

    seeds = prompt_seeds(5, 6)
    assert len(set(seeds)) == 6 and prompt_seeds(5, 3, 1, 2) == seeds[1::2]
    tok = Tokenizer.load(tiny_model / "tokenizer.json")
    cfg = RLConfig(chat=False, group_size=3, max_new_tokens=12)
    _, replies, _ = rollouts(load_model(tiny_model), tok, ["The", "The"], cfg, "cpu", 5)
    assert replies[:3] != replies[3:]
    _, share, _ = rollouts(load_model(tiny_model), tok, ["The"], cfg, "cpu", 5, first=1, stride=2)
    assert share == replies[3:]


def test_plain_rollouts_start_a_document_and_stop_at_its_end(tiny_model):
    """chat false: the prompt is the document's text after the end-of-document token, no chat markers."""
    from lmlab.data.tokenizer import Tokenizer
    from lmlab.model.checkpoint import load_model
    from lmlab.post.rl import rollouts

    tok = Tokenizer.load(tiny_model / "tokenizer.json")
    prompts = ["Aeara Astamir works at", "The"]
    cfg = RLConfig(chat=False, group_size=3, max_new_tokens=6)
    batch, replies, rows = rollouts(load_model(tiny_model), tok, prompts, cfg, "cpu", 0)
    assert rows == [prompts[0]] * 3 + [prompts[1]] * 3 and len(replies) == 6
    for i, p in enumerate(rows):
        head = [tok.eos_id, *tok.encode(p)]
        ids, labels = batch["ids"][i].tolist(), batch["labels"][i].tolist()
        assert ids[: len(head)] == head and labels[: len(head)] == [IGNORE] * len(head)
        reply = [t for t, m in zip(ids[len(head):], batch["mask"][i, len(head):].tolist()) if m]
        assert 1 <= len(reply) <= 6 and tok.eos_id not in reply[:-1]  # an end of document ends the reply


def test_a_python_reward_function_overrides_the_spec_on_plain_prompts(tiny_data, tiny_model, tmp_path):
    """reward_fn gets the raw prompts (no chat template) and its rewards train the policy: short replies."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "Person {i} was born in"}}\n' for i in range(8)))
    seen = set()

    def short(ps, replies):
        seen.update(ps)
        return [-len(r) / 20 for r in replies]

    cfg = from_dict(RLConfig, {
        "init": str(tiny_model), "data": str(prompts), "reward": "rm:/nonexistent", "chat": False,
        "out": str(tmp_path / "out"), "prompts_per_step": 8, "group_size": 4, "max_new_tokens": 12,
        "train": {"steps": 25, "lr": 1e-3, "min_lr": 1e-3, "warmup_steps": 0, "device": "cpu", "threads": 1,
                  "log_interval": 1}})
    s = rl(cfg, reward_fn=short)
    assert seen == {f"Person {i} was born in" for i in range(8)} and s["reward"] == "short"
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()][:-1]
    first, last = sum(r["reward"] for r in rows[:5]) / 5, sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.1, (first, last)
    with pytest.raises(LmlabError, match=r"3 values for \d+ distinct \(prompt, reply\) pairs"):
        rl(replace(cfg, out=str(tmp_path / "bad")), reward_fn=lambda ps, rs: [0.0, 1.0, 2.0])


def test_each_distinct_reply_is_scored_once_and_identical_ones_alike():
    """A reward model's scores round differently in different batches: identical replies must still get one
    reward, or GRPO would divide their rounding noise by its own tiny spread into advantages of order 1."""
    from lmlab.post.rl import distinct_rewards

    asked = []

    def noisy(prompts, replies):  # a score that depends on the batch position, as rounding may
        asked.append(list(zip(prompts, replies)))
        return [len(r) + 1e-7 * i for i, r in enumerate(replies)]

    prompts, replies = ["p"] * 4 + ["q"] * 4, ["a", "a", "bb", "a", "a", "a", "a", "a"]
    got = distinct_rewards(noisy, prompts, replies)
    assert asked == [[("p", "a"), ("p", "bb"), ("q", "a")]]
    assert got[0] == got[1] == got[3] and got[4:] == [got[4]] * 4 and got[2] == pytest.approx(2.0)
    assert torch.equal(grpo_advantages(torch.tensor(got[4:] + got[4:]), 4), torch.zeros(8))


def test_a_group_of_equal_rewards_has_no_advantage():
    """Eight equal fp32 rewards: their fp32 mean can miss the value by a rounding step, which the division by
    their (as small) spread plus 1e-6 used to turn into advantages of about 0.3."""
    for value in (4.098133, 2.6595662, -1.3, 1 / 3):
        rewards = torch.full((8,), value, dtype=torch.float32)
        assert torch.equal(grpo_advantages(rewards, 8), torch.zeros(8)), value
