"""Claims about post-training (SFT, reward model, DPO, RLHF), tested by rerunning the quickstart's recipe.

Design. For each of three seeds s (ctx.seed, +1, +2) the quickstart's post-training is rerun from its
pretrained checkpoint with the quickstart's own settings: SFT into the chat format, a reward model on
the SFT backbone, DPO from the SFT model, and GRPO from the SFT model against that seed's reward model
(the recipe of configs/rl_world.yaml: groups of 8, 150 steps). The seed sets the data order and which
half of the unknown people post-training sees, the same half in every stage of a seed, so the held-out
people are unseen by all of them. Every before/after comparison is made on greedy chat replies to the
seed's held-out prompts (the 200 that `post/evaluate.py` grades: held-out QA-train questions and
questions about unseen unknown people), graded by the world's truth (the gold reward: +1 right or an
abstention about an unknown person, 0 abstaining about a known one, -1 wrong or made up) and scored by
the seed's reward model. Rates are pooled over the seeds with Wilson intervals; changes of a mean and the
compute share have Student-t intervals over the three per-seed values.

Sizes. Full: the quickstart's settings (SFT 300 steps, reward model 120, DPO 200) and the GRPO recipe
(150 steps of 16 prompts x 8 replies). Measured on one thread of this 2-core machine: 7.7 minutes for the
module (SFT, reward model and DPO about 10 s each per seed plus their evaluations, GRPO 117 s per seed),
within its 10-minute share of the ledger. Three seeds is the fewest that give a spread; the recipe's 150
GRPO steps are kept because it is lmlab's RLHF recipe (the RL defaults, 60 steps of groups of 4, are a
weaker optimisation). Tiny: a few steps per stage on the tiny quickstart (seconds): every code path, none
of the quality.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.config import to_dict
from lmlab.data.world import load_world
from lmlab.data.world_chat import ABSTAIN, gold_reward, normalise, preference_pairs
from lmlab.evals.binary import newcombe, wilson
from lmlab.evals.bootstrap import bootstrap_interval, t_interval
from lmlab.evals.chat import chat_answers
from lmlab.figures import pyplot, save_png
from lmlab.infer.engine import Engine
from lmlab.io import write_json
from lmlab.ledger.claims import Claim, Row, plot_path
from lmlab.post.dpo import DPOConfig, dpo
from lmlab.post.rl import RLConfig, rl
from lmlab.post.rm import RMConfig, load_reward_model, train_rm
from lmlab.post.sft import SFTConfig, sft
from lmlab.quickstart import QuickstartConfig

SEEDS = 3
HELDOUT_PROMPTS = {"full": 200, "tiny": 8}
"""Held-out prompts per seed graded before and after: policy_report's 200 (2 x its 100 eval questions)."""
TARGET_SHARE, FACTOR = 0.02, 2.0
"""The compute claim holds if post-training is within a factor of 2 of 2% of pretraining (1% to 4%)."""
FORMAT_FLOOR = 0.9
"""SFT 'teaches the format' if, besides a rise, at least 90% of replies end their turn (the interval's low end)."""


# -- the recipe -------------------------------------------------------------------------------------------

def _recipes(size: str) -> tuple[SFTConfig, RMConfig, DPOConfig, RLConfig]:
    """The quickstart's SFT, reward model and DPO settings and configs/rl_world.yaml's GRPO (full), or the
    same with a few steps each (tiny). Paths and seeds are set per seed by the caller."""
    qs = QuickstartConfig()
    rl_cfg = RLConfig(algo="grpo", group_size=8, train=replace(RLConfig().train, steps=150), eval_questions=0)
    if size == "full":
        return qs.sft, qs.rm, qs.dpo, rl_cfg

    def few(tc, steps=4):
        return replace(tc, steps=steps, batch_size=4, warmup_steps=1, eval_interval=0, log_interval=1)
    return (replace(qs.sft, eval_questions=4, train=few(qs.sft.train)), replace(qs.rm, train=few(qs.rm.train)),
            replace(qs.dpo, eval_questions=4, train=few(qs.dpo.train)),
            replace(rl_cfg, group_size=2, prompts_per_step=4, max_new_tokens=8, train=few(rl_cfg.train, 2)))


def _seeds(ctx: Any) -> list[int]:
    return [ctx.seed + i for i in range(SEEDS)]


def _cached_stage(fn: Callable[[Any], dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """Run a post-training verb, or take its summary from a finished run with the same settings and the same
    checkpoints read (its init, and RL's reward model): an interrupted ledger resumes, and a new quickstart, a
    retrained upstream stage or a changed recipe trains again."""
    out = Path(cfg.out)
    reads = [cfg.init] + ([cfg.reward[3:]] if str(getattr(cfg, "reward", "")).startswith("rm:") else [])
    stamps = [(Path(r) / "meta.json").stat().st_mtime_ns for r in reads]
    key = json.loads(json.dumps({"config": to_dict(cfg), "reads": stamps}))
    done = out / "ledger_done.json"
    if done.is_file() and (out / "checkpoint" / "meta.json").is_file():
        saved = json.loads(done.read_text())
        if saved.get("key") == key:
            return saved["summary"]
    summary = fn(cfg)
    write_json(done, {"key": key, "summary": summary})
    return summary


def _memo(ctx: Any, key: str, make: Callable[[], Any]) -> Any:
    store = ctx.memo.setdefault("post", {})
    if key not in store:
        store[key] = make()
    return store[key]


def _dir(ctx: Any, seed: int) -> Path:
    return ctx.workdir("post-training-seeds") / f"seed{seed}"


def _with(cfg: Any, ctx: Any, seed: int, stage: str, init: str) -> Any:
    run = ctx.quickstart_run()
    return replace(cfg, init=init, data=str(run / "world"), out=str(_dir(ctx, seed) / stage),
                   train=replace(cfg.train, seed=seed))


def _sft(ctx: Any, seed: int) -> dict[str, Any]:
    cfg = _with(_recipes(ctx.size)[0], ctx, seed, "sft", str(ctx.quickstart_run() / "checkpoint"))
    return _memo(ctx, f"sft{seed}", lambda: _cached_stage(sft, cfg))


def _rm(ctx: Any, seed: int) -> dict[str, Any]:
    init = _sft(ctx, seed)["checkpoint"]
    cfg = _with(_recipes(ctx.size)[1], ctx, seed, "rm", init)
    return _memo(ctx, f"rm{seed}", lambda: _cached_stage(train_rm, cfg))


def _dpo(ctx: Any, seed: int) -> dict[str, Any]:
    init = _sft(ctx, seed)["checkpoint"]
    cfg = _with(_recipes(ctx.size)[2], ctx, seed, "dpo", init)
    return _memo(ctx, f"dpo{seed}", lambda: _cached_stage(dpo, cfg))


def _rl(ctx: Any, seed: int) -> dict[str, Any]:
    init = _sft(ctx, seed)["checkpoint"]
    cfg = replace(_with(_recipes(ctx.size)[3], ctx, seed, "rl", init), reward=f"rm:{_rm(ctx, seed)['checkpoint']}")
    return _memo(ctx, f"rl{seed}", lambda: _cached_stage(rl, cfg))


# -- grading replies ---------------------------------------------------------------------------------------

def _graded(ctx: Any, seed: int, policy: str) -> dict[str, list[float]]:
    """Greedy chat replies of a policy ('sft', 'dpo', 'rl') to the seed's held-out prompts: per prompt the
    gold reward, the seed's reward-model score of the reply, and whether it abstains (1) or not (0)."""
    def make() -> dict[str, list[float]]:
        ckpt = {"sft": _sft, "dpo": _dpo, "rl": _rl}[policy](ctx, seed)["checkpoint"]
        world = load_world(ctx.quickstart_run() / "world")
        pairs = preference_pairs(world, seed)["heldout"][:HELDOUT_PROMPTS[ctx.size]]
        prompts = [p["prompt"] for p in pairs]
        replies = [a for a, _ in chat_answers(Engine.from_checkpoint(ckpt), prompts)]
        known = {q["question"]: q for q in world["qa_train"] + world["qa_test"]}
        gold = [gold_reward(known.get(p["prompt"], {"answer": None}), a, p["group"] == "unknown")
                for p, a in zip(pairs, replies)]
        rm, tok = load_reward_model(_rm(ctx, seed)["checkpoint"])
        abstain = [float(normalise(a) == normalise(ABSTAIN)) for a in replies]
        return {"gold": gold, "rm": rm.score(tok, prompts, replies, truncate=True), "abstain": abstain}
    return _memo(ctx, f"graded-{policy}{seed}", make)


# -- statistics --------------------------------------------------------------------------------------------

def share_verdict(low: float, high: float) -> str:
    """Within a factor FACTOR of TARGET_SHARE: the whole interval in [2%/2, 2% x 2]."""
    return "holds" if low >= TARGET_SHARE / FACTOR and high <= TARGET_SHARE * FACTOR else "does not hold"


def format_verdict(rise_low: float, after_low: float) -> tuple[str, str]:
    """(verdict, condition): a rise whose interval excludes 0 and most replies in the format after."""
    if rise_low <= 0:
        return "does not hold", ""
    if after_low >= FORMAT_FLOOR:
        return "holds", ""
    return "holds only", f"in part: after SFT the share of replies that end their turn is below {FORMAT_FLOOR:.0%}"


def reward_verdict(gold: tuple[float, float], rm: tuple[float, float]) -> tuple[str, str]:
    """(verdict, condition) from the (low, high) intervals of the gold and reward-model score changes."""
    gold_up, rm_up = gold[0] > 0, rm[0] > 0
    if gold_up and rm_up:
        return "holds", ""
    if rm_up and gold[1] < 0:  # the proxy rose and the truth fell: reward hacking
        return "does not hold", ""
    if rm_up:
        return "holds only", "for the reward model's score: the gold reward's change is not distinguishable from 0"
    if gold_up:
        return "holds only", "for the gold reward: the reward model's score did not rise measurably"
    return "does not hold", ""


# -- claim 1: SFT teaches the format ----------------------------------------------------------------------

GROUPS = ("train", "test", "unknown")


def _stops(result: dict[str, Any]) -> tuple[int, int]:
    """(replies that ended their turn, replies) over the QA groups of one chat evaluation."""
    k = sum(round(result[g]["stop_rate"] * result[g]["n"]) for g in GROUPS)
    return k, sum(result[g]["n"] for g in GROUPS)


def sft_teaches_format(ctx: Any) -> Row:
    runs = {s: _sft(ctx, s) for s in _seeds(ctx)}
    k0, n0 = _stops(runs[ctx.seed]["before"])  # the pretrained model, greedy: the same for every seed
    after = {s: _stops(r["after"]) for s, r in runs.items()}
    k1, n1 = sum(k for k, _ in after.values()), sum(n for _, n in after.values())
    d, lo, hi = newcombe(k1, n1, k0, n0)
    verdict, condition = format_verdict(lo, wilson(k1, n1)[0])
    path, link = plot_path(ctx, "sft-teaches-format")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    bars = [("before (pretrained)", k0, n0)] + [(f"after, seed {s}", k, n) for s, (k, n) in after.items()]
    _rate_bars(ax, bars, ["tab:grey"] + ["tab:blue"] * len(after))
    ax.set_ylabel("replies that end their turn")
    save_png(fig, path)
    em = {s: {g: r["after"][g].get("exact_match") for g in ("train", "test")} for s, r in runs.items()}
    return Row(value=d, low=lo, high=hi, unit="rise in the share of chat replies that end their turn",
               verdict=verdict, condition=condition, plot=link,
               measured=f"greedy chat-format replies to {n0} world questions (QA-train, QA-test, unknown people) "
                        f"from the quickstart's pretrained model and from its SFT on {SEEDS} seeds "
                        f"({_size(ctx)}): whether each ends with the end-of-turn token",
               interval=f"Newcombe's hybrid Wilson interval for a difference: before {n0} replies (the same "
                        f"for every seed), after pooled over seeds {_seed_list(ctx)} ({n1} replies)",
               details={"before": {"k": k0, "n": n0},
                        "after": {str(s): {"k": k, "n": n} for s, (k, n) in after.items()},
                        "after_exact_match": {str(s): v for s, v in em.items()},
                        "steps": runs[ctx.seed]["steps"], "wall_s": {str(s): r["wall_s"] for s, r in runs.items()}})


def _rate_bars(ax: Any, bars: list[tuple[str, int, int]], colors: list[str]) -> None:
    """Bars of rates k/n with their Wilson intervals."""
    rates = [k / n for _, k, n in bars]
    ci = [wilson(k, n) for _, k, n in bars]
    err = np.array([[r - lo for r, (lo, _) in zip(rates, ci)], [hi - r for r, (_, hi) in zip(rates, ci)]])
    ax.bar(range(len(bars)), rates, yerr=err, capsize=4, color=colors)
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([b[0] for b in bars], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)


def _size(ctx: Any) -> str:
    return "the full quickstart" if ctx.size == "full" else "tiny size: the tiny quickstart, a few steps per stage"


def _seed_list(ctx: Any) -> str:
    return ", ".join(map(str, _seeds(ctx)))


# -- claim 2: the reward model ranks answers as the truth does ---------------------------------------------

def _correct(ev: dict[str, Any]) -> tuple[int, int]:
    return round(ev["accuracy"] * ev["n"]), ev["n"]


def reward_model_ranks(ctx: Any) -> Row:
    runs = {s: _rm(ctx, s) for s in _seeds(ctx)}
    sets = {name: {s: _correct(r["heldout"][name]) for s, r in runs.items()} for name in ("heldout", "heldout_qa_test")}
    pooled = {name: (sum(k for k, _ in v.values()), sum(n for _, n in v.values())) for name, v in sets.items()}
    k, n = pooled["heldout"]
    lo, hi = wilson(k, n)
    kq, nq = pooled["heldout_qa_test"]
    path, link = plot_path(ctx, "reward-model-ranks")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
    bars = [(f"{label}, seed {s}", *sets[name][s]) for name, label in
            (("heldout", "held out"), ("heldout_qa_test", "QA-test people")) for s in runs]
    _rate_bars(ax, bars, ["tab:green"] * len(runs) + ["tab:olive"] * len(runs))
    ax.axhline(0.5, color="black", ls="--", lw=1, label="chance")
    ax.set_ylabel("pairwise accuracy")
    ax.legend(fontsize=8)
    save_png(fig, path)
    return Row(value=k / n, low=lo, high=hi, unit="held-out pairwise accuracy (true answer over a wrong one)",
               verdict="holds" if lo > 0.5 else "does not hold", plot=link,
               measured=f"the quickstart's reward model (SFT backbone + head + reply log-probability, "
                        f"{runs[ctx.seed]['steps']} steps) trained on {SEEDS} seeds ({_size(ctx)}), scored on each "
                        f"seed's held-out pairs (held-out QA-train questions and unseen unknown people); the harder "
                        f"set, people whose facts the model read only in biographies (never in QA): "
                        f"{kq / nq:.1%} {_fmt_ci(wilson(kq, nq))}",
               interval=f"Wilson 95% over {n} held-out pairs pooled over seeds {_seed_list(ctx)} (each seed's "
                        "held-out split differs; pairs counted as independent)",
               details={"value_is": "heldout (held-out QA-train questions + unseen unknown people)",
                        "heldout": {str(s): {"k": a, "n": b} for s, (a, b) in sets["heldout"].items()},
                        "heldout_qa_test": {str(s): {"k": a, "n": b} for s, (a, b) in sets["heldout_qa_test"].items()},
                        "heldout_qa_test_pooled": {"accuracy": round(kq / nq, 4),
                                                   "ci95": [round(x, 4) for x in wilson(kq, nq)]},
                        "train_accuracy": {str(s): round(r["train_accuracy"], 4) for s, r in runs.items()}})


def _fmt_ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.1%}, {ci[1]:.1%}]"


# -- claims 3 and 4: DPO and RLHF raise the reward --------------------------------------------------------

def _reward_change(ctx: Any, claim_id: str, policy: str, what: str) -> Row:
    """Gold reward and reward-model score of greedy held-out replies, SFT model (before) against `policy`."""
    seeds = _seeds(ctx)
    before = {s: _graded(ctx, s, "sft") for s in seeds}
    after = {s: _graded(ctx, s, policy) for s in seeds}
    change = {key: [float(np.mean(after[s][key]) - np.mean(before[s][key])) for s in seeds] for key in ("gold", "rm")}
    gold, rm = t_interval(change["gold"]), t_interval(change["rm"])
    verdict, condition = reward_verdict(gold[1:], rm[1:])
    link = _plot_rewards(ctx, claim_id, seeds, before, after, policy)
    fell = sum(c < 0 for c in change["gold"])
    abstain = {when: float(np.mean([np.mean(res[s]["abstain"]) for s in seeds]))
               for when, res in (("before", before), ("after", after))}
    steps = {"dpo": _dpo, "rl": _rl}[policy](ctx, seeds[0])["steps"]
    return Row(value=gold[0], low=gold[1], high=gold[2], unit="change in mean gold reward per held-out reply",
               verdict=verdict, condition=condition, plot=link,
               measured=f"{what} ({steps} steps) from the quickstart's SFT model on {SEEDS} seeds ({_size(ctx)}): "
                        f"greedy replies to {len(before[seeds[0]]['gold'])} held-out prompts per seed graded by the "
                        f"world's truth and by the seed's reward model, before and after; "
                        + _reward_sentence(rm, fell, len(seeds), abstain),
               interval=f"Student-t 95% over the per-seed changes, seeds {_seed_list(ctx)}",
               details={"gold_change": _ci_dict(gold, change["gold"], seeds),
                        "rm_score_change": _ci_dict(rm, change["rm"], seeds),
                        "gold_before": {str(s): round(float(np.mean(before[s]["gold"])), 4) for s in seeds},
                        "gold_after": {str(s): round(float(np.mean(after[s]["gold"])), 4) for s in seeds},
                        "abstain_share": {str(s): [round(float(np.mean(res[s]["abstain"])), 4)
                                                   for res in (before, after)] for s in seeds},
                        **_stage_details(ctx, policy, seeds)})


def _reward_sentence(rm: tuple[float, float, float], fell: int, seeds: int, abstain: dict[str, float]) -> str:
    """The reward model's change, how often the truth fell, the abstentions; and reward hacking when the
    proxy rose while the truth fell in most seeds (the policy learnt what the reward model likes)."""
    hacked = "; the reward model's score rose while the gold reward fell in most seeds: reward hacking" \
        if rm[1] > 0 and fell > seeds / 2 else ""
    return (f"the reward-model score changed by {rm[0]:+.3f} [{rm[1]:+.3f}, {rm[2]:+.3f}], the gold reward fell in "
            f"{fell} of {seeds} seeds, and replies that are \"{ABSTAIN}\" went from {abstain['before']:.0%} to "
            f"{abstain['after']:.0%} (mean over seeds){hacked}")


def _ci_dict(stat: tuple[float, float, float], values: list[float], seeds: list[int]) -> dict[str, Any]:
    return {"mean": round(stat[0], 4), "ci95": [round(stat[1], 4), round(stat[2], 4)],
            "per_seed": {str(s): round(v, 4) for s, v in zip(seeds, values)}}


def _stage_details(ctx: Any, policy: str, seeds: list[int]) -> dict[str, Any]:
    """What the stage's own summary says: DPO's policy report (fabrication, KL), RL's last step."""
    runs = {s: {"dpo": _dpo, "rl": _rl}[policy](ctx, s) for s in seeds}
    out: dict[str, Any] = {"wall_s": {str(s): r["wall_s"] for s, r in runs.items()}}
    if policy == "dpo":
        out["policy_report_gold_heldout"] = {str(s): [r["before"]["gold_reward"]["heldout"],
                                                      r["after"]["gold_reward"]["heldout"]] for s, r in runs.items()}
        out["qa_test_gold"] = {str(s): [r["before"]["gold_reward"]["qa_test"],
                                        r["after"]["gold_reward"]["qa_test"]] for s, r in runs.items()}
        out["unknown_fabrication"] = {str(s): [r["before"]["heldout"]["unknown_fabrication"],
                                               r["after"]["heldout"]["unknown_fabrication"]] for s, r in runs.items()}
        out["kl_k3"] = {str(s): round(r["after"]["kl"]["kl_k3"], 4) for s, r in runs.items()}
    else:
        out["last_step"] = {str(s): {k: round(r["final"][k], 4) for k in ("reward", "kl")}
                            for s, r in runs.items() if r.get("final")}
    return out


def _plot_rewards(ctx: Any, claim_id: str, seeds: list[int], before: dict, after: dict, policy: str) -> str:
    """Per seed, before/after bars of the mean gold reward and the mean reward-model score (bootstrap 95%)."""
    path, link = plot_path(ctx, claim_id)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), dpi=110)
    x = np.arange(len(seeds))
    for ax, key, label in zip(axes, ("gold", "rm"), ("gold reward (the world's truth)", "reward-model score")):
        for j, (name, res, color) in enumerate((("SFT", before, "tab:grey"), (policy.upper(), after, "tab:blue"))):
            means = [float(np.mean(res[s][key])) for s in seeds]
            cis = [bootstrap_interval(res[s][key], seed=ctx.seed) for s in seeds]
            err = np.array([[max(m - lo, 0) for m, (lo, _) in zip(means, cis)],
                            [max(hi - m, 0) for m, (_, hi) in zip(means, cis)]])
            ax.bar(x + (j - 0.5) * 0.38, means, 0.38, yerr=err, capsize=3, color=color, label=name)
        ax.set_xticks(x)
        ax.set_xticklabels([f"seed {s}" for s in seeds])
        ax.set_ylabel(label)
        ax.axhline(0, color="black", lw=0.6)
        ax.legend(fontsize=8)
    save_png(fig, path)
    return link


def dpo_raises_reward(ctx: Any) -> Row:
    return _reward_change(ctx, "dpo-raises-reward", "dpo", "DPO with the quickstart's settings (beta 1, NLL term 1)")


def rlhf_raises_reward(ctx: Any) -> Row:
    return _reward_change(ctx, "rlhf-raises-reward", "rl",
                          "GRPO against the seed's reward model (configs/rl_world.yaml: groups of 8, KL 0.05)")


# -- claim 5: post-training's share of compute ------------------------------------------------------------

STAGES = ("sft", "rm", "dpo", "rl")
PIPELINE = ("sft", "rm", "rl")
"""InstructGPT's post-training: SFT, a reward model, RL against it. DPO is the alternative to the last two
(it needs neither), so it is reported beside the value, not added into it."""


def post_training_share(ctx: Any) -> Row:
    run = ctx.quickstart_run()
    summary = json.loads((run / "summary.json").read_text())
    pre = summary["pretrain"]["train_flops"]
    seeds = _seeds(ctx)
    flops = {s: {"sft": _sft(ctx, s)["train_flops"], "rm": _rm(ctx, s)["train_flops"],
                 "dpo": _dpo(ctx, s)["train_flops"], "rl": _rl(ctx, s)["train_flops"]} for s in seeds}
    shares = [sum(f[k] for k in PIPELINE) / pre for f in flops.values()]
    dpo_shares = [(f["sft"] + f["dpo"]) / pre for f in flops.values()]
    mean, lo, hi = t_interval(shares)
    quick = sum(summary[k]["train_flops"] for k in ("sft", "rm", "dpo") if k in summary) / pre
    tokens = np.mean([_sft(ctx, s)["train_tokens"] for s in seeds]) / summary["pretrain"]["train_tokens"]
    link = _plot_share(ctx, flops, pre, quick)
    pt = summary["pretrain"]
    why = (f"; it is high because the pretraining is tiny ({pt['train_tokens']:,} tokens on a {pt['params']:,}-"
           f"parameter model) while post-training needs a fixed number of examples (SFT alone reads {tokens:.1%} as "
           f"many tokens as pretraining, and RL samples every reply it learns from)") \
        if mean > TARGET_SHARE * FACTOR else ""
    return Row(value=mean, low=lo, high=hi, unit="post-training FLOPs / pretraining FLOPs",
               verdict=share_verdict(lo, hi), plot=link,
               measured=f"training FLOPs as lmlab's stages count them (6 x matmul parameters per token plus "
                        "attention; RL's rollouts as forward passes) of InstructGPT's pipeline, SFT + reward model + "
                        f"GRPO, on {SEEDS} seeds, over the quickstart's pretraining ({pre:.3g} FLOPs, {_size(ctx)}); "
                        f"the DPO pipeline (SFT + DPO) is {np.mean(dpo_shares):.1%}, and the quickstart's own SFT + "
                        f"reward model + DPO (its summary.json) {quick:.1%}{why}",
               interval=f"Student-t 95% over seeds {_seed_list(ctx)} (the counts are exact; they vary with the "
                        "lengths of the sampled batches)",
               details={"pretrain_flops": pre,
                        "share_by_stage": {k: round(float(np.mean([f[k] for f in flops.values()])) / pre, 5)
                                           for k in STAGES},
                        "per_seed": {str(s): round(v, 5) for s, v in zip(seeds, shares)},
                        "sft_dpo_share": round(float(np.mean(dpo_shares)), 5),
                        "quickstart_summary_sft_rm_dpo": round(quick, 5),
                        "instructgpt": {"sft_pfs_days": 4.9, "ppo_ptx_pfs_days": 60, "gpt3_pfs_days": 3640,
                                        "share": round((4.9 + 60) / 3640, 4)},
                        "rule": f"holds if the interval lies within {TARGET_SHARE / FACTOR:.0%} to "
                                f"{TARGET_SHARE * FACTOR:.0%}"})


def _plot_share(ctx: Any, flops: dict[int, dict[str, float]], pre: float, quick: float) -> str:
    """Stacked bars of SFT + RM + RL per seed, the DPO pipeline, the quickstart's own SFT+RM+DPO, the 2% line."""
    path, link = plot_path(ctx, "post-training-share-of-compute")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    labels = [f"seed {s}" for s in flops]
    bottom = np.zeros(len(labels))
    for stage, color in zip(PIPELINE, ("tab:blue", "tab:green", "tab:red")):
        h = np.array([100 * f[stage] / pre for f in flops.values()])
        ax.bar(labels, h, bottom=bottom, color=color, label=stage.upper())
        bottom += h
    dpo = np.mean([100 * (f["sft"] + f["dpo"]) / pre for f in flops.values()])
    ax.bar(["SFT+DPO\n(mean)"], [dpo], color="tab:orange")
    ax.bar(["quickstart\n(SFT+RM+DPO)"], [100 * quick], color="tab:grey")
    ax.axhspan(100 * TARGET_SHARE / FACTOR, 100 * TARGET_SHARE * FACTOR, color="black", alpha=0.08,
               label=f"within x{FACTOR:g} of 2% (holds)")
    ax.axhline(100 * TARGET_SHARE, color="black", ls="--", lw=1, label="2% (InstructGPT)")
    ax.set_ylabel("% of pretraining FLOPs")
    ax.legend(fontsize=8)
    save_png(fig, path)
    return link


CLAIMS = [
    Claim("sft-teaches-format", "SFT teaches the model the conversational format.",
          "Ouyang et al. 2022 (InstructGPT); Touvron et al. 2023 (Llama 2-Chat); Zhou et al. 2023 (LIMA: "
          "'alignment is largely about learning style and format')",
          "Share of greedy chat-format replies that end their turn (post/evaluate's stop rate), the quickstart's "
          "pretrained model against its SFT on 3 seeds.", sft_teaches_format),
    Claim("reward-model-ranks", "A reward model learns to rank answers as people (here: the world's truth) would.",
          "Christiano et al. 2017; Stiennon et al. 2020; Ouyang et al. 2022 (InstructGPT's 6B reward model)",
          "Pairwise accuracy on held-out preference pairs (true answer over a plausible wrong one, abstention "
          "over a fabrication) of the quickstart's reward model trained on 3 seeds.", reward_model_ranks),
    Claim("dpo-raises-reward", "DPO raises the reward-model score and the true (gold) reward.",
          "Rafailov et al. 2023 (DPO: 'optimizes the same objective as RLHF' without a reward model or RL)",
          "Gold reward and reward-model score of greedy replies to held-out prompts, the SFT model against DPO "
          "from it, 3 seeds.", dpo_raises_reward),
    Claim("rlhf-raises-reward", "RLHF raises the reward-model score and the true (gold) reward.",
          "Stiennon et al. 2020; Ouyang et al. 2022 (InstructGPT); Gao et al. 2023 (reward-model overoptimisation)",
          "Gold reward and reward-model score of greedy replies to held-out prompts, the SFT model against GRPO "
          "from it on the reward model, 3 seeds.", rlhf_raises_reward),
    Claim("post-training-share-of-compute", "Post-training costs about 2% of pretraining compute.",
          "Ouyang et al. 2022 (InstructGPT, sec. 5.1): the 175B SFT model took 4.9 petaflop/s-days and the 175B "
          "PPO-ptx model 60, against 3,640 for GPT-3's pretraining (Brown et al. 2020): about 1.8%",
          "Training FLOPs of InstructGPT's post-training pipeline (SFT, reward model, RL: GRPO) on the quickstart's "
          "model, 3 seeds, over its pretraining FLOPs (the DPO pipeline beside it); holds within a factor of 2 of "
          "2%.", post_training_share),
]
