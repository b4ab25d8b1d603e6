"""`lmlab hallucination unknown-sft`: does fine-tuning on facts the model does not know teach it to make
things up? (Hypothesis 2, knowledge mismatch; the experiment of Gekhman et al. 2024, "Does Fine-Tuning
LLMs on New Knowledge Encourage Hallucinations?".)

1. The pretrained model answers every question about the known people in the pretraining format. A fact
   it gets right is Known, one it gets wrong is Unknown (Gekhman's split, with one greedy answer).
2. The QA-test people are split in two. One half, with all the QA-train people, gives the fine-tuning
   pools; the other half is held out.
3. Each mix holds the same number N of answered examples, a share p of them Unknown facts with their
   true answers (p = 0, 25, 50, 75, 100% by default), the rest Known facts. With `abstain`, every mix
   also holds the same "I don't know." examples for the half of the unknown people post-training teaches
   to abstain on, so the model has an abstention to choose instead of a guess.
4. SFT from the pretrained model on each mix, evaluated at every `train.eval_interval` steps: accuracy on
   the held-out people's Known facts, hallucination and abstention on the held-out unknown people (never
   in any training text), and how much of its own training mix the model fits. "Early stopping" is the
   evaluation with the lowest validation loss on the mix's own held-out examples (a dev set drawn from
   the training distribution: no test figure picks it); "converged" is the last.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.config import check_int, check_numbers, check_open_share
from lmlab.data.chat import END_OF_TURN
from lmlab.data.tokenizer import Tokenizer
from lmlab.data.world import load_world
from lmlab.data.world_chat import ABSTAIN, heldout_people, unknown_split
from lmlab.errors import LmlabError
from lmlab.evals.binary import format_rate, percent_bars, rate
from lmlab.evals.hallucination import CHAT_STAGES, ask, grade, grade_groups
from lmlab.figures import percent_axes, pyplot, save_png
from lmlab.infer.engine import Engine
from lmlab.io import write_json, write_jsonl
from lmlab.post.sft import SFTConfig, sft
from lmlab.post.stage import PostTrainConfig
from lmlab.rundir import DEFAULT_CHECKPOINT, locked_run

EVAL_GROUPS = ("heldout_known", "unknown", "fit_known", "fit_unknown")
"""Held-out people's Known facts; held-out unknown people; samples of the mix's own Known and Unknown
examples (how well it fits what it was taught)."""


def _post_train() -> PostTrainConfig:
    # 800 steps of 16: about 35 passes over a mix of the quickstart world, far past the lowest validation
    # loss, with 8 evaluations on the way. lr 3e-4, not SFT's 1e-3: at 1e-3 the chat-format model kept a
    # third as many of the held-out Known facts (docs/benchmarks.md).
    return PostTrainConfig(steps=800, lr=3e-4, min_lr=3e-5, eval_interval=100)


@dataclass
class UnknownSFTConfig:
    model: str = DEFAULT_CHECKPOINT
    """Pretrained (not yet post-trained) checkpoint: what it knows is read from its own answers."""
    world: str = "runs/quickstart/world"
    """The world it was pretrained on."""
    out: str = "runs/hallucination/unknown_sft"
    """Run directory: one SFT run per share (share_000, share_025, ...), unknown_sft.json, unknown_sft.png."""
    shares: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """Shares of Unknown examples among the answered ones, each in [0, 1]."""
    examples: int | None = None
    """Answered examples per mix (None: as many as the smaller of the Known and Unknown pools allows)."""
    abstain: bool = True
    """Add "I don't know." for the taught half of the unknown people to every mix."""
    heldout_fraction: float = 0.5
    """Share of the QA-test people held out of every mix, whose Known facts measure accuracy."""
    eval_questions: int = 400
    """Most questions per evaluation group (a seeded sample)."""
    max_new_tokens: int = 24
    """Longest answer, in tokens."""
    seed: int = 0
    """Seed of the people split and the mixes (SFT's own seed is train.seed)."""
    train: PostTrainConfig = field(default_factory=_post_train)
    """SFT settings, the same for every share."""

    def __post_init__(self) -> None:
        check_numbers("shares", self.shares, 0, 1)
        if self.examples is not None:
            check_int("examples", self.examples)
        check_open_share("heldout_fraction", self.heldout_fraction)
        check_int("eval_questions", self.eval_questions)
        check_int("max_new_tokens", self.max_new_tokens)


def pretrained_engine(cfg: UnknownSFTConfig) -> tuple[Engine, Tokenizer]:
    """The starting model; it must be a pretrained one whose tokenizer has the chat tokens SFT trains."""
    engine = Engine.from_checkpoint(cfg.model, cfg.train.device)
    if engine.meta.get("stage") in CHAT_STAGES:
        raise LmlabError(f"{cfg.model} is a '{engine.meta['stage']}' checkpoint; unknown-sft starts from a "
                         "pretrained one, whose knowledge is read from its answers in the pretraining format")
    if engine.tok.token_to_id(END_OF_TURN) is None:
        raise LmlabError(f"the tokenizer of {cfg.model} has no {END_OF_TURN} token, which the chat-format "
                         "evaluation during SFT needs")
    return engine, engine.tok


def known_facts(world: dict[str, Any], engine: Engine, max_new_tokens: int) -> list[dict[str, Any]]:
    """Every known person's question with `known`: whether the pretrained model answers it right."""
    items = world["qa_train"] + world["qa_test"]
    greedy = [a[0] for a in ask(engine, [q["question"] for q in items], False, temperature=0,
                                max_new_tokens=max_new_tokens)]
    rows = grade(world, {"known": items}, greedy)
    return [{**q, "known": r["label"] == "correct"} for q, r in zip(items, rows)]


def split_pools(world: dict[str, Any], facts: list[dict[str, Any]], cfg: UnknownSFTConfig) -> dict[str, list]:
    """{"known", "unknown"}: the fine-tuning pools; {"heldout_known", "heldout_unknown_facts"}: the held-out
    people's facts; {"abstain", "unknown_people"}: the taught and held-out halves of the unknown people's
    questions."""
    heldout = heldout_people(world, cfg.heldout_fraction, cfg.seed)
    taught, held_unknown = unknown_split(world, cfg.train.seed)
    side = [q for q in facts if q["person"] not in heldout]
    return {"known": [q for q in side if q["known"]], "unknown": [q for q in side if not q["known"]],
            "heldout_known": [q for q in facts if q["person"] in heldout and q["known"]],
            "heldout_unknown_facts": [q for q in facts if q["person"] in heldout and not q["known"]],
            "abstain": [q for q in world["qa_unknown"] if q["person"] in taught],
            "unknown_people": [q for q in world["qa_unknown"] if q["person"] in held_unknown]}


def mixes(pools: dict[str, list], cfg: UnknownSFTConfig) -> tuple[int, dict[float, list[dict[str, Any]]]]:
    """(N, share -> the answered examples of its mix). Nested: a larger share swaps more Known examples
    for Unknown ones, so mixes differ only in what the issue varies."""
    n = min(len(pools["known"]), len(pools["unknown"]))
    if cfg.examples is not None:
        if cfg.examples > n:
            raise LmlabError(f"examples={cfg.examples} is more than the {n} the pools allow "
                             f"({len(pools['known'])} Known, {len(pools['unknown'])} Unknown facts)")
        n = cfg.examples
    if n < 1:
        raise LmlabError(f"no mix possible: the model knows {len(pools['known'])} and does not know "
                         f"{len(pools['unknown'])} of the facts on the fine-tuning side")
    rng = random.Random(cfg.seed + 1)
    known, unknown = rng.sample(pools["known"], n), rng.sample(pools["unknown"], n)
    out = {}
    for share in cfg.shares:
        k = round(share * n)
        out[share] = unknown[:k] + known[k:]
    return n, out


def conversations(answered: list[dict[str, Any]], abstain: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The mix as SFT's {"prompt", "response"} rows."""
    return [{"prompt": q["question"], "response": q["answer"]} for q in answered] + \
        [{"prompt": q["question"], "response": ABSTAIN} for q in abstain]


def sample(items: list[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:k]


def run_share(cfg: UnknownSFTConfig, share: float, mix: list[dict[str, Any]], pools: dict[str, list],
              world: dict[str, Any], tok: Tokenizer) -> dict[str, Any]:
    """SFT on one mix, evaluated along the way; the trajectory, early-stopping and converged points."""
    out = Path(cfg.out) / f"share_{round(100 * share):03d}"
    data = Path(cfg.out) / "mixes" / f"share_{round(100 * share):03d}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    abstain = pools["abstain"] if cfg.abstain else []
    write_jsonl(data, conversations(mix, abstain))
    k = cfg.eval_questions
    groups = {"heldout_known": sample(pools["heldout_known"], k, cfg.seed),
              "unknown": sample(pools["unknown_people"], k, cfg.seed),
              "fit_known": sample([q for q in mix if q["known"]], k, cfg.seed),
              "fit_unknown": sample([q for q in mix if not q["known"]], k, cfg.seed)}
    trajectory: list[dict[str, Any]] = []

    def on_eval(step: int, model: Any, val_loss: float | None) -> None:
        engine = Engine(model, tok, cfg.train.device)
        trajectory.append({"step": step, "val_loss": val_loss,
                           **grade_groups(engine, world, groups, True, cfg.max_new_tokens)})

    run = sft(SFTConfig(init=cfg.model, data=str(data), out=str(out), val_fraction=0.1, eval_questions=0,
                        train=cfg.train), on_eval=on_eval)
    scored = [t for t in trajectory if t["val_loss"] is not None]
    early = min(scored, key=lambda t: t["val_loss"]) if scored else trajectory[-1]
    return {"share": share, "unknown_examples": sum(not q["known"] for q in mix), "answered": len(mix),
            "abstain_examples": len(abstain), "wall_s": run["wall_s"], "early": early, "converged": trajectory[-1],
            "trajectory": trajectory}


@locked_run
def unknown_sft(cfg: UnknownSFTConfig) -> dict[str, Any]:
    """The whole experiment: what the model knows, the mixes, one SFT per share, the table and the plot."""
    world = load_world(cfg.world)
    engine, tok = pretrained_engine(cfg)
    facts = known_facts(world, engine, cfg.max_new_tokens)
    pools = split_pools(world, facts, cfg)
    n, by_share = mixes(pools, cfg)
    del engine
    runs = [run_share(cfg, share, mix, pools, world, tok) for share, mix in by_share.items()]
    result = {"model": cfg.model, "world": cfg.world, "seed": cfg.seed, "train_seed": cfg.train.seed,
              "steps": cfg.train.steps, "eval_interval": cfg.train.eval_interval, "answered_per_mix": n,
              "abstain": cfg.abstain,
              "pools": {k: len(v) for k, v in pools.items()},
              "pretrained_known_share": sum(q["known"] for q in facts) / len(facts), "runs": runs}
    out = Path(cfg.out)
    result["files"] = {"plot": str(out / "unknown_sft.png"), "result": str(out / "unknown_sft.json")}
    plot_shares(runs, out / "unknown_sft.png")
    write_json(out / "unknown_sft.json", result)
    return result


HEADLINE = (("heldout_known", "accuracy", "Known right", "held-out Known facts right"),
            ("unknown", "hallucination_rate", "unknown: made up", "held-out unknown people: hallucinated"),
            ("fit_unknown", "accuracy", "Unknown fitted", "Unknown training examples fitted"))
"""The panels of the plot and the columns of the table: (group, rate, column, what it says)."""


def plot_shares(runs: list[dict[str, Any]], path: Path) -> Path:
    """One panel per headline rate against the Unknown share, early stopping and converged, 95% intervals."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(4.2 * len(HEADLINE), 3.6))
    xs = [100 * r["share"] for r in runs]
    for ax, (group, name, _col, title) in zip(axes, HEADLINE):
        for point, style in (("early", "o-"), ("converged", "s--")):
            ys, err = percent_bars([r[point].get(group, {}).get(name) for r in runs])
            ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=point.replace("early", "early stopping"))
        ax.set_title(title, fontsize=9)
        percent_axes(ax, "Unknown examples in the SFT mix (%)")
    axes[0].legend(fontsize=8)
    return save_png(fig, path)


def format_unknown_sft(res: dict[str, Any]) -> str:
    """The table: per share, early stopping and converged, the headline rates with intervals."""
    p = res["pools"]
    lines = [f"unknown-sft on {res['model']}: the pretrained model knew {res['pretrained_known_share']:.1%} of the "
             f"known people's facts; pools {p['known']} Known / {p['unknown']} Unknown; {res['answered_per_mix']} "
             f"answered examples per mix" + (f" + {p['abstain']} abstentions" if res["abstain"] else "")
             + f"; {res['steps']} steps, seed {res['seed']}",
             f"{'Unknown share':<14}{'point':<11}{'step':>5}{'val loss':>9}  "
             + "".join(f"{col:<24}" for _, _, col, _ in HEADLINE)]
    for r in res["runs"]:
        for point in ("early", "converged"):
            t = r[point]
            vl = "-" if t["val_loss"] is None else f"{t['val_loss']:.3f}"
            cells = [format_rate(t[g][name]) if g in t else "-" for g, name, _, _ in HEADLINE]
            lines.append(f"{100 * r['share']:>5.0f}%{'':<8}{point:<11}{t['step']:>5}{vl:>9}  "
                         + "".join(f"{c:<24}" for c in cells))
    lines.append("columns: " + "; ".join(f"{col} = {about}" for _, _, col, about in HEADLINE))
    if "files" in res:
        lines.append(f"wrote {res['files']['plot']}, {res['files']['result']}")
    return "\n".join(lines)


def pool_seeds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of the same shares under several seeds, their counts added per (share, point, headline rate).

    Each seed holds out other people, so pooling reads more people; the interval still treats every
    answer as independent, which a person's six questions are not quite."""
    shares = [r["share"] for r in results[0]["runs"]]
    if any([r["share"] for r in res["runs"]] != shares for res in results):
        raise LmlabError("pool_seeds needs runs over the same shares")
    table = []
    for i, share in enumerate(shares):
        row: dict[str, Any] = {"share": share}
        for point in ("early", "converged"):
            cells = {}
            for group, name, col, _ in HEADLINE:
                got = [res["runs"][i][point].get(group, {}).get(name) for res in results]
                got = [c for c in got if c and c["n"]]
                cells[col] = rate(sum(c["k"] for c in got), sum(c["n"] for c in got))
            row[point] = cells
        table.append(row)
    return {"seeds": [res["seed"] for res in results], "table": table}


def format_pooled(pooled: dict[str, Any]) -> str:
    lines = [f"pooled over seeds {', '.join(map(str, pooled['seeds']))} (counts added; 95% Wilson intervals)",
             f"{'Unknown share':<14}{'point':<11}" + "".join(f"{col:<24}" for _, _, col, _ in HEADLINE)]
    for row in pooled["table"]:
        for point in ("early", "converged"):
            lines.append(f"{100 * row['share']:>5.0f}%{'':<8}{point:<11}"
                         + "".join(f"{format_rate(row[point][col]):<24}" for _, _, col, _ in HEADLINE))
    return "\n".join(lines)
