"""`lmlab hallucination eval`: how often a model makes things up, whether its confidence says so, and
how well two cheap signals flag a made-up answer.

Every fact of the built-in world is known, so each greedy answer is graded exactly (`answers.classify`)
as correct, wrong (a hallucination) or an abstention, in four groups: QA-train people (their QA pairs
were in pretraining), QA-test people (facts only in biographies), and the unknown people, never in any
training text, split as post-training splits them (`world_chat.unknown_split`): `unknown` is the half
no stage taught to abstain on, `unknown_taught` the half SFT and DPO trained "I don't know." on. Any
answer about an unknown person other than an abstention is a hallucination, even one that happens to
match the hidden fact: the model cannot know it.

Calibration: the confidence of an answer is exp(mean token log-probability) of the greedy reply (its
stop token included), binned against accuracy over the non-abstentions. Detectors, scored by AUROC and
average precision at flagging wrong answers among the non-abstentions: `logprob` (1 - confidence: free,
it comes with the greedy decode) and `consistency` (SelfCheckGPT's idea, Manakul et al. 2023: draw k
samples and score the share whose stated value differs from the greedy answer's; costs k more answers).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.data.chat import END_OF_TURN, render
from lmlab.data.tokenizer import Tokenizer
from lmlab.data.world import format_qa, load_world
from lmlab.data.world_chat import unknown_split
from lmlab.errors import LmlabError
from lmlab.evals.answers import LABELS, answer_key, classify
from lmlab.evals.binary import auroc, average_precision, format_rate, rate
from lmlab.evals.calibration import expected_calibration_error, plot_reliability, reliability_bins
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams
from lmlab.io import write_json, write_jsonl
from lmlab.rundir import output_dir

GROUPS = ("qa_train", "qa_test", "unknown", "unknown_taught")
OUT_FILES = ("reliability.png", "answers.jsonl", "hallucination.json")
"""What `out` receives; the last is written last and marks the directory complete."""
CHAT_STAGES = ("sft", "dpo", "rl")
"""Checkpoint stages (meta.json) trained in the chat template: the default format for them is chat."""
RATES = {"accuracy": "correct", "hallucination_rate": "wrong", "abstention_rate": "abstain"}
"""Reported rate -> the answer label it counts."""


@dataclass
class HallucinationConfig:
    model: str = "runs/quickstart/sft/checkpoint"
    """lmlab checkpoint to ask."""
    world: str = "runs/quickstart/world"
    """World directory whose questions are asked."""
    questions: int = 60
    """Questions per group (a seeded sample; fewer if the group has fewer)."""
    seed: int = 0
    """Seed of the question sample and of the consistency samples."""
    chat: bool | None = None
    """Ask in the chat template (true), in the pretraining format 'Question: ... Answer:' (false), or
    null: chat when the checkpoint was post-trained in the template (sft, dpo, rl), else the plain format."""
    samples: int = 5
    """Samples per question for the consistency detector (k >= 2)."""
    consistency: bool = True
    """Run the consistency detector (k more answers per question: most of the verb's time); false leaves
    only the free log-probability detector."""
    temperature: float = 1.0
    """Temperature of those samples."""
    max_new_tokens: int = 24
    """Longest answer, in tokens."""
    bins: int = 10
    """Equal-width confidence bins of the reliability diagram and ECE."""
    split_seed: int = 1337
    """Seed post-training split the unknown people with (SFT's and DPO's train.seed), to tell the half taught
    to abstain from the held-out half."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    out: str | None = None
    """Directory for reliability.png, answers.jsonl and hallucination.json (null: write nothing)."""
    force: bool = False
    """Write into an `out` that holds other files (they are left alone)."""

    def __post_init__(self) -> None:
        for name, lo in (("questions", 1), ("samples", 2), ("max_new_tokens", 1), ("bins", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                why = " (the consistency detector compares samples with each other)" if name == "samples" else ""
                raise LmlabError(f"{name} must be an integer >= {lo}{why}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**40:
            raise LmlabError(f"seed must be an integer in [0, 2**40), got {self.seed!r}")
        if not 0 < self.temperature:
            raise LmlabError(f"temperature must be > 0 for the consistency samples, got {self.temperature}")


def question_groups(world: dict[str, Any], cfg: HallucinationConfig) -> dict[str, list[dict[str, Any]]]:
    """A seeded sample of up to `cfg.questions` questions per group; empty groups left out."""
    _taught, heldout = unknown_split(world, cfg.split_seed)
    pool = {"qa_train": world["qa_train"], "qa_test": world["qa_test"],
            "unknown": [q for q in world["qa_unknown"] if q["person"] in heldout],
            "unknown_taught": [q for q in world["qa_unknown"] if q["person"] not in heldout]}
    rng = random.Random(cfg.seed)
    groups = {}
    for g in GROUPS:
        items = list(pool[g])
        rng.shuffle(items)
        if items:
            groups[g] = items[: cfg.questions]
    if not groups:
        raise LmlabError(f"the world in {cfg.world} has no questions to ask (qa_train, qa_test and qa_unknown "
                         "are all empty); generate one with people > 0 or unknown > 0")
    return groups


def chat_template_gap(tok: Tokenizer, meta: dict[str, Any]) -> str | None:
    """Why a checkpoint cannot be asked in the chat template, or None when it was post-trained in it (every
    lmlab tokenizer has the chat tokens, so their presence alone does not say the model learned the template)."""
    if tok.token_to_id(END_OF_TURN) is None:
        return f"its tokenizer has no {END_OF_TURN} token"
    if meta.get("stage") not in CHAT_STAGES:
        return f"it is a '{meta.get('stage')}' checkpoint, never trained on the template by {'/'.join(CHAT_STAGES)}"
    return None


def load_engine(cfg: HallucinationConfig) -> tuple[Engine, bool]:
    """The checkpoint's engine, and whether to ask in the chat template: as asked, or exactly when the
    checkpoint was post-trained in it."""
    engine = Engine.from_checkpoint(cfg.model, cfg.device)
    gap = chat_template_gap(engine.tok, engine.meta)
    if cfg.chat and gap:
        raise LmlabError(f"chat=true but the checkpoint {cfg.model} has no chat template ({gap}); pass --chat false "
                         "to ask in the pretraining format 'Question: ... Answer:'")
    return engine, gap is None if cfg.chat is None else cfg.chat


def ask(engine: Engine, questions: list[str], chat: bool, seeds: list[int] | None = None,
        **sampling: Any) -> list[list[dict[str, Any]]]:
    """Per question, its answers (`sampling` = SamplingParams fields, `seeds` one per question):
    {"text", "tokens", "confidence"}, confidence = exp of the mean token log-probability under the raw
    distribution."""
    if chat:
        prompts = [render([{"role": "user", "content": q}]) for q in questions]
        sampling.update(ignore_eos=True, stop_token_ids=[engine.tok.token_to_id(END_OF_TURN)])
    else:
        prompts = [format_qa(q) for q in questions]
        sampling.update(stop=["\n"])
    params = [SamplingParams(**sampling, logprobs=True, seed=s) for s in seeds] if seeds is not None \
        else SamplingParams(**sampling, logprobs=True)
    outs = engine.generate(prompts, params) if prompts else []
    return [[{"text": c.text.strip() if chat else c.text.split("\n")[0].strip(), "tokens": len(c.token_ids),
              "confidence": math.exp(sum(c.logprobs) / len(c.logprobs)) if c.logprobs else 0.0}
             for c in o.completions] for o in outs]


def group_rates(rows: list[dict[str, Any]], by_attribute: bool = True) -> dict[str, Any]:
    """Accuracy, hallucination and abstention rates with Wilson intervals, overall and (unless told not to)
    per attribute."""
    def rates(sub: list[dict[str, Any]]) -> dict[str, Any]:
        return {"n": len(sub), **{name: rate(sum(r["label"] == label for r in sub), len(sub))
                                  for name, label in RATES.items()}}

    if not by_attribute:
        return rates(rows)
    attrs = sorted({r["attribute"] for r in rows})
    return {**rates(rows), "by_attribute": {a: rates([r for r in rows if r["attribute"] == a]) for a in attrs}}


def detector(scores: list[float], wrong: list[bool], extra_tokens: int, greedy_tokens: int) -> dict[str, Any]:
    """A detector's AUROC and average precision at flagging wrong answers, and its cost in generated
    tokens relative to the greedy answers it judges."""
    return {"n": len(scores), "wrong": sum(wrong), "base_rate": sum(wrong) / len(wrong) if wrong else None,
            "auroc": auroc(scores, wrong), "average_precision": average_precision(scores, wrong),
            "extra_tokens": extra_tokens,
            "cost_vs_greedy": (greedy_tokens + extra_tokens) / greedy_tokens if greedy_tokens else None}


def grade(world: dict[str, Any], groups: dict[str, list[dict[str, Any]]],
          greedy: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per question: the greedy answer, its label and confidence."""
    rows = []
    items = [(g, it) for g, its in groups.items() for it in its]
    for (g, it), ans in zip(items, greedy):
        pool = world["pools"].get(it["attribute"], ())
        label = classify(ans["text"], it["answer"], it["attribute"], pool)
        if g.startswith("unknown") and label == "correct":
            label = "wrong"  # a lucky guess about someone never read about is still made up
        rows.append({"group": g, "person": it["person"], "attribute": it["attribute"], "question": it["question"],
                     "truth": it["answer"], "answer": ans["text"], "label": label,
                     "confidence": ans["confidence"], "tokens": ans["tokens"]})
    return rows


def add_consistency(world: dict[str, Any], rows: list[dict[str, Any]], samples: list[list[dict[str, Any]]]) -> None:
    """Each answered row's inconsistency: the share of its samples that claim something else."""
    for r, alts in zip(rows, samples):
        pool = world["pools"].get(r["attribute"], ())
        key = answer_key(r["answer"], r["attribute"], pool)
        r["samples"] = [a["text"] for a in alts]
        r["sample_tokens"] = sum(a["tokens"] for a in alts)
        r["inconsistency"] = sum(answer_key(a["text"], r["attribute"], pool) != key for a in alts) / len(alts)


def grade_groups(engine: Engine, world: dict[str, Any], groups: dict[str, list[dict[str, Any]]], chat: bool,
                 max_new_tokens: int) -> dict[str, Any]:
    """Greedy answers to each group's questions, graded: `group_rates` per group (empty groups left out).
    What experiments that train a model measure before and after."""
    groups = {g: its for g, its in groups.items() if its}
    questions = [q["question"] for its in groups.values() for q in its]
    greedy = [a[0] for a in ask(engine, questions, chat, temperature=0, max_new_tokens=max_new_tokens)]
    rows = grade(world, groups, greedy)
    return {g: group_rates([r for r in rows if r["group"] == g]) for g in groups}


def calibration(answered: list[dict[str, Any]], bins: int) -> dict[str, Any]:
    """Reliability bins and ECE over the answers that were not abstentions."""
    table = reliability_bins([r["confidence"] for r in answered], [r["label"] == "correct" for r in answered], bins)
    n = len(answered)
    return {"n": n, "ece": expected_calibration_error(table),
            "mean_confidence": sum(r["confidence"] for r in answered) / n if n else None,
            "accuracy": sum(r["label"] == "correct" for r in answered) / n if n else None, "bins": table}


def hallucination_eval(cfg: HallucinationConfig) -> dict[str, Any]:
    """Grade greedy answers per group and attribute, their calibration, and the two detectors."""
    world = load_world(cfg.world)
    groups = question_groups(world, cfg)
    engine, chat = load_engine(cfg)
    questions = [it["question"] for its in groups.values() for it in its]
    greedy = [a[0] for a in ask(engine, questions, chat, temperature=0, max_new_tokens=cfg.max_new_tokens)]
    rows = grade(world, groups, greedy)
    answered = [r for r in rows if r["label"] != "abstain"]
    wrong = [r["label"] == "wrong" for r in answered]
    greedy_tokens = sum(r["tokens"] for r in answered)
    detectors = {"logprob": detector([1 - r["confidence"] for r in answered], wrong, 0, greedy_tokens)}
    if cfg.consistency:
        # One seed per question, so that questions do not share their random draws.
        sampled = ask(engine, [r["question"] for r in answered], chat,
                      seeds=[cfg.seed * 1_000_003 + i for i in range(len(answered))],
                      temperature=cfg.temperature, n=cfg.samples, max_new_tokens=cfg.max_new_tokens)
        add_consistency(world, answered, sampled)
        detectors["consistency"] = detector([r["inconsistency"] for r in answered], wrong,
                                            sum(r["sample_tokens"] for r in answered), greedy_tokens)
    result: dict[str, Any] = {
        "model": cfg.model, "world": cfg.world, "format": "chat" if chat else "plain", "seed": cfg.seed,
        "questions_per_group": cfg.questions, "samples": cfg.samples, "temperature": cfg.temperature,
        "n": len(rows), "labels": list(LABELS),
        "groups": {g: group_rates([r for r in rows if r["group"] == g]) for g in groups},
        "calibration": calibration(answered, cfg.bins),
        "detectors": detectors,
        "examples": [{k: r[k] for k in ("group", "question", "truth", "answer", "label")}
                     for g in groups for r in [x for x in rows if x["group"] == g][:2]],
    }
    if cfg.out:
        result["files"] = write_outputs(cfg, rows, result)
    return result


def write_outputs(cfg: HallucinationConfig, rows: list[dict[str, Any]], result: dict[str, Any]) -> dict[str, str]:
    """The reliability diagram, every graded answer, and the result, into `cfg.out` (atomically)."""
    out = Path(str(cfg.out))
    files = {"reliability": str(out / OUT_FILES[0]), "answers": str(out / OUT_FILES[1]),
             "result": str(out / OUT_FILES[2])}
    cal = result["calibration"]
    with output_dir(out, "hallucination eval", OUT_FILES, reads=[cfg.model, cfg.world], force=cfg.force) as tmp:
        plot_reliability(cal["bins"], cal["ece"], tmp / OUT_FILES[0],
                         title=f"{Path(cfg.model).name}, {cal['n']} answers:")
        write_jsonl(tmp / OUT_FILES[1], rows)
        write_json(tmp / OUT_FILES[2], {**result, "files": files})
    return files


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def format_hallucination(res: dict[str, Any]) -> str:
    """Rates per group (95% Wilson intervals), per attribute, calibration, and the detectors."""
    lines = [f"hallucination eval of {res['model']} ({res['format']} format), seed {res['seed']}, "
             f"up to {res['questions_per_group']} questions per group, n = {res['n']}",
             f"{'group':<16}{'n':>5}  {'correct':<22}{'wrong (hallucinated)':<22}{'abstained':<22}"]
    for g, r in res["groups"].items():
        lines.append(f"{g:<16}{r['n']:>5}  " + "".join(f"{format_rate(r[k]):<22}" for k in RATES))
    lines.append("")
    lines.append(f"per attribute: correct / wrong / abstained, % ({', '.join(res['groups'])})")
    attrs = sorted({a for r in res["groups"].values() for a in r["by_attribute"]})
    for a in attrs:
        cells = []
        for r in res["groups"].values():
            sub = r["by_attribute"].get(a)
            cells.append("-" if sub is None else "/".join(f"{100 * sub[k]['rate']:.0f}" for k in RATES))
        lines.append(f"  {a:<14}" + "  ".join(f"{c:<12}" for c in cells))
    cal = res["calibration"]
    lines += ["", f"calibration over {cal['n']} answers (not abstentions): ECE {_num(cal['ece'])}, "
              f"mean confidence {_num(cal['mean_confidence'])}, accuracy {_num(cal['accuracy'])}",
              "detectors of wrong answers" + (f" ({res['samples']} samples at temperature {res['temperature']} "
                                              "for consistency):" if "consistency" in res["detectors"] else ":"),
              f"  {'detector':<13}{'AUROC':>7}{'AP':>7}{'base rate':>11}{'cost vs greedy':>16}"]
    for name, d in res["detectors"].items():
        cost = "-" if d["cost_vs_greedy"] is None else f"{d['cost_vs_greedy']:.2f}x"
        lines.append(f"  {name:<13}{_num(d['auroc']):>7}{_num(d['average_precision']):>7}"
                     f"{_num(d['base_rate']):>11}{cost:>16}")
    if "files" in res:
        lines.append(f"\nwrote {res['files']['reliability']}, {res['files']['answers']}, {res['files']['result']}")
    return "\n".join(lines)
