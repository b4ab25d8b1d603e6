"""`lmlab hallucination penalty`: a reward that punishes a made-up answer more than an abstention, and what
it costs (mitigation (d) of the knowledge-mismatch hypothesis).

GRPO from the SFT model with the world's gold reward: +1 for the right answer, 0 for "I don't know."
about a known person (+1 about an unknown one), -penalty for anything wrong. With `learned`, the same
ranking taught to a learned reward model instead: preference pairs right > abstain > made up, each pair's
margin the gold rewards' difference at `learned_penalty`, a Bradley-Terry reward model with margins
(Touvron et al. 2023) and GRPO against it, and DPO on the same pairs. A policy that maximises it
answers exactly when P(right) > penalty / (1 + penalty), so raising the penalty should trade answers it
gets right for fewer made-up ones. The trade-off curve is measured over `penalties`.

The prompts are where that trade is live: questions about half the QA-test people (facts only in
biographies, which the SFT model often gets wrong), as many QA-train questions (which it knows), and the
unknown people post-training taught to abstain on. Held out: the other QA-test people, the other unknown
people and the QA-train questions left out of the prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmlab.config import check_int, check_numbers, check_open_share
from lmlab.data.world import load_world
from lmlab.data.world_chat import ABSTAIN, gold_reward, heldout_people, unknown_split, wrong_value
from lmlab.errors import LmlabError
from lmlab.evals.binary import format_rate, percent_bars
from lmlab.evals.hallucination import chat_template_gap, grade_groups
from lmlab.figures import percent_axes, pyplot, save_png
from lmlab.infer.engine import Engine
from lmlab.io import write_json, write_jsonl
from lmlab.post.dpo import DPOConfig, dpo
from lmlab.post.rl import RLConfig, rl
from lmlab.post.rm import RMConfig, train_rm
from lmlab.post.stage import PostTrainConfig, require_causal
from lmlab.rundir import locked_run

COLUMNS = (("heldout_test", "accuracy", "QA-test right"), ("heldout_test", "hallucination_rate", "QA-test made up"),
           ("heldout_test", "abstention_rate", "QA-test abstained"), ("unknown", "hallucination_rate",
                                                                        "unknown made up"),
           ("heldout_train", "accuracy", "QA-train right"))
"""(group, rate, column) of the table; the first three are the held-out QA-test people's facts."""


def _rm() -> RMConfig:
    # The quickstart's reward model: the backbone's log-probability of the reply as a feature, 120 steps.
    return RMConfig(logprob_feature=True, margin=True, train=PostTrainConfig(steps=120, lr=3e-4, min_lr=3e-5))


def _dpo() -> DPOConfig:
    # The quickstart's DPO settings (beta 1, an NLL term, lr 3e-5): smaller betas drift and forget.
    return DPOConfig(beta=1.0, nll_weight=1.0, eval_questions=0,
                     train=PostTrainConfig(steps=200, lr=3e-5, min_lr=3e-6))


def _rl() -> RLConfig:
    # GRPO in groups of 8, 100 rounds of 16 prompts at lr 1e-4: an abstention has to be sampled in a
    # group before the reward can prefer it, and the SFT model rarely abstains about a known person.
    return RLConfig(algo="grpo", group_size=8, eval_questions=0,
                    train=PostTrainConfig(steps=100, lr=1e-4, min_lr=1e-5, warmup_steps=5, log_interval=10))


@dataclass
class PenaltyConfig:
    model: str = "runs/quickstart/sft/checkpoint"
    """The policy to start from: a model post-trained in the chat template that says "I don't know." at all."""
    world: str = "runs/quickstart/world"
    """The world it was trained on."""
    out: str = "runs/hallucination/penalty"
    """Run directory: one RL run per penalty (penalty_0.0, ...), penalty.json, penalty.png."""
    penalties: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0])
    """Gold-reward penalties for a wrong answer, each >= 0 (may be empty with `learned`)."""
    heldout_fraction: float = 0.5
    """Share of the QA-test people held out of the prompts."""
    eval_questions: int = 400
    """Most questions per evaluation group (a seeded sample)."""
    max_new_tokens: int = 24
    """Longest answer, in tokens."""
    seed: int = 0
    """Seed of the people split and the prompt sample (RL's own seed is rl.train.seed)."""
    rl: RLConfig = field(default_factory=_rl)
    """RL settings, the same for every penalty (init, data, prompts, reward and out are set here)."""
    learned: bool = False
    """Also: a reward model on pairs right > abstain > made up, GRPO against it, and DPO on the pairs."""
    learned_penalty: float = 1.0
    """The penalty whose gold-reward differences are the pairs' margins."""
    rm: RMConfig = field(default_factory=_rm)
    """Reward model settings for `learned` (init, data and out are set here)."""
    dpo: DPOConfig = field(default_factory=_dpo)
    """DPO settings for `learned` (init, data and out are set here)."""

    def __post_init__(self) -> None:
        if self.penalties or not self.learned:  # with `learned`, the gold sweep may be left out
            check_numbers("penalties", self.penalties, 0, 1e9)
        check_open_share("heldout_fraction", self.heldout_fraction)
        check_int("eval_questions", self.eval_questions)
        check_numbers("learned_penalty", [self.learned_penalty], 0, 1e9)


def splits(world: dict[str, Any], cfg: PenaltyConfig) -> tuple[list[dict[str, Any]], dict[str, list]]:
    """(the RL prompts' questions, the held-out evaluation groups)."""
    held = heldout_people(world, cfg.heldout_fraction, cfg.seed)
    taught, held_unknown = unknown_split(world, cfg.rl.train.seed)
    rng = random.Random(cfg.seed + 1)
    test_side = [q for q in world["qa_test"] if q["person"] not in held]
    train = list(world["qa_train"])
    rng.shuffle(train)
    prompts = test_side + train[: len(test_side)] + [q for q in world["qa_unknown"] if q["person"] in taught]
    rng.shuffle(prompts)
    k = cfg.eval_questions
    groups = {"heldout_test": [q for q in world["qa_test"] if q["person"] in held][:k],
              "unknown": [q for q in world["qa_unknown"] if q["person"] in held_unknown][:k],
              "heldout_train": train[len(test_side):][:k]}
    if not prompts or not groups["heldout_test"]:
        raise LmlabError(f"the world in {cfg.world} has too few QA-test people to split into prompts and held-out")
    return prompts, groups


def preference_pairs(world: dict[str, Any], prompts: list[dict[str, Any]], penalty: float,
                     seed: int) -> list[dict[str, Any]]:
    """Per prompt, every ordered pair of right / abstain / a plausible made-up value that the gold reward
    ranks apart (about an unknown person there is no right answer), margin = the reward difference."""
    rng = random.Random(seed)
    pairs = []
    for q in prompts:
        unknown = q["group"] == "unknown"
        replies = ([] if unknown else [q["answer"]]) + [ABSTAIN, wrong_value(world, q, rng)]
        scored = [(r, gold_reward(q, r, unknown, penalty)) for r in replies]
        pairs += [{"prompt": q["question"], "chosen": a, "rejected": b, "margin": ra - rb}
                  for i, (a, ra) in enumerate(scored) for b, rb in scored[i + 1:] if ra > rb]
    return pairs


def learned_runs(cfg: PenaltyConfig, world: dict[str, Any], prompts: list[dict[str, Any]], groups: dict[str, list],
                 out: Path) -> list[dict[str, Any]]:
    """A reward model on the pairs and GRPO against it; DPO on the same pairs; held-out rates of both."""
    data = out / "pairs.jsonl"
    write_jsonl(data, preference_pairs(world, prompts, cfg.learned_penalty, cfg.seed))
    rm_run = train_rm(replace(cfg.rm, init=cfg.model, data=str(data), out=str(out / "rm")))
    rl_run = rl(replace(cfg.rl, init=cfg.model, data=cfg.world, prompts=str(out / "prompts.jsonl"),
                        reward=f"rm:{rm_run['checkpoint']}", out=str(out / "rm_grpo")))
    dpo_run = dpo(replace(cfg.dpo, init=cfg.model, data=str(data), out=str(out / "dpo")))
    return [{"name": "RM + GRPO", "wall_s": rm_run["wall_s"] + rl_run["wall_s"], "final": rl_run["final"],
             "rm_heldout_accuracy": rm_run["heldout_accuracy"],
             "rates": evaluate(rl_run["checkpoint"], world, groups, cfg)},
            {"name": "DPO", "wall_s": dpo_run["wall_s"], "final": None,
             "rates": evaluate(dpo_run["checkpoint"], world, groups, cfg)}]


def evaluate(path: str, world: dict[str, Any], groups: dict[str, list], cfg: PenaltyConfig) -> dict[str, Any]:
    """The held-out groups' rates for the checkpoint at `path`, which must be post-trained in the chat template
    (a model that never saw it cannot say "I don't know.")."""
    engine = Engine.from_checkpoint(path, cfg.rl.train.device)
    require_causal(engine.model.cfg, path, "the penalty experiment")
    gap = chat_template_gap(engine.tok, engine.meta)
    if gap:
        raise LmlabError(f"{path} is not post-trained in the chat template ({gap}); start from an SFT model, "
                         "which can say \"I don't know.\"")
    return grade_groups(engine, world, groups, True, cfg.max_new_tokens)


@locked_run
def penalty_sweep(cfg: PenaltyConfig) -> dict[str, Any]:
    """GRPO per penalty from the same model on the same prompts; held-out rates before and after each."""
    world = load_world(cfg.world)
    prompts, groups = splits(world, cfg)
    before = evaluate(cfg.model, world, groups, cfg)  # also refuses a model that cannot abstain, before any work
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "prompts.jsonl", [{"prompt": q["question"]} for q in prompts])
    runs = []
    for penalty in cfg.penalties:
        rcfg = replace(cfg.rl, init=cfg.model, data=cfg.world, prompts=str(out / "prompts.jsonl"), reward="gold",
                       wrong_penalty=float(penalty), out=str(out / f"penalty_{float(penalty):g}"))
        summary = rl(rcfg)
        runs.append({"penalty": float(penalty), "threshold": penalty / (1 + penalty), "wall_s": summary["wall_s"],
                     "final": summary["final"], "rates": evaluate(summary["checkpoint"], world, groups, cfg)})
    learned = learned_runs(cfg, world, prompts, groups, out) if cfg.learned else []
    result = {"model": cfg.model, "world": cfg.world, "seed": cfg.seed, "prompts": len(prompts),
              "learned": learned, "learned_penalty": cfg.learned_penalty if cfg.learned else None,
              "rl": {"algo": cfg.rl.algo, "steps": cfg.rl.train.steps, "group_size": cfg.rl.group_size,
                     "lr": cfg.rl.train.lr, "kl_coef": cfg.rl.kl_coef, "seed": cfg.rl.train.seed},
              "groups": {g: len(v) for g, v in groups.items()}, "before": before, "runs": runs,
              "files": {"plot": str(out / "penalty.png"), "result": str(out / "penalty.json")}}
    plot_tradeoff(result, out / "penalty.png")
    write_json(out / "penalty.json", result)
    return result


def plot_tradeoff(res: dict[str, Any], path: Path) -> Path:
    """Held-out QA-test facts: right, made up and abstained against the penalty (the SFT model at the left)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    points = [("SFT", res["before"])] + [(f"{r['penalty']:g}", r["rates"]) for r in res["runs"]]
    xs = list(range(len(points)))
    for group, name, col in COLUMNS:
        ys, err = percent_bars([rates[group][name] for _, rates in points])
        ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, label=col)
    ax.set_xticks(xs, [p for p, _ in points])
    percent_axes(ax, "penalty for a wrong answer (GRPO, gold reward)", "% of held-out questions")
    ax.legend(fontsize=7)
    return save_png(fig, path)


def format_penalty(res: dict[str, Any]) -> str:
    """Per penalty: the held-out rates with 95% intervals, the reward and KL at the last step."""
    r = res["rl"]
    lines = [f"penalty sweep from {res['model']}: {r['algo']} {r['steps']} steps, groups of {r['group_size']}, "
             f"lr {r['lr']:g}, KL coef {r['kl_coef']:g}, on {res['prompts']} prompts; held out "
             + ", ".join(f"{g} {n}" for g, n in res["groups"].items()),
             f"{'penalty':<11}{'answer if P >':<14}" + "".join(f"{c:<24}" for _, _, c in COLUMNS) + "reward   KL"]
    rows = [("SFT", "-", res["before"], None)] + [(f"{x['penalty']:g}", f"{x['threshold']:.2f}", x["rates"], x["final"])
                                                   for x in res["runs"]]
    rows += [(x["name"], f"pairs {res['learned_penalty']:g}", x["rates"], x["final"]) for x in res.get("learned", [])]
    for name, thr, rates, final in rows:
        tail = "" if final is None else f"{final['reward']:+.3f}  {final['kl']:.3f}"
        lines.append(f"{name:<11}{thr:<14}" + "".join(f"{format_rate(rates[g][k]):<24}" for g, k, _ in COLUMNS) + tail)
    if "files" in res:
        lines.append(f"wrote {res['files']['plot']}, {res['files']['result']}")
    return "\n".join(lines)
