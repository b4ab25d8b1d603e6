"""Claims about why language models make things up, and what stops them, tested on the quickstart's models.

Every fact of the quickstart's world is known, so each answer is graded exactly: right, made up, or "I don't
know." Two hypotheses and four mitigations, each through the verb of `lmlab hallucination` that studies it
(docs/benchmarks.md, "Why models make things up"), shrunk to fit the module's 10 minutes on 2 cores:

- Snowballing (Zhang et al. 2023): a planted wrong fact in a biography prefix against the same prefix with
  the true fact; the pretrained model continues both (`snowball`: 100 people, 2 prefix pairs per attribute,
  no QA form, which would double its time). No training, so one run; the interval is over prefixes.
- Knowledge mismatch (Gekhman et al. 2024): SFT on mixes of facts the model knew or did not know
  (`unknown_sft`'s own steps, the model's knowledge read once for all seeds), only the two ends of its sweep
  (0% and 100% Unknown), 300 steps (the Unknown examples are 90% fitted by then), 200 questions per group,
  3 seeds. The verb's five shares x 800 steps take 4-10 minutes per seed.
- Abstention training: the quickstart's own before/after figures (summary.json, "hallucination"): the
  measurement itself, free to read; one training seed, the quickstart's.
- Detection by log-probability and self-consistency: the quickstart's graded answers of its DPO model
  (hallucination/after/answers.jsonl), read again: AUROC with a bootstrap interval, and what abstaining below
  a confidence threshold does. Free.
- Retrieval with citations (`hallucination retrieval`): both arms at the verb's 400 steps, 150 questions per
  group, 3 seeds.
- A reward that punishes a wrong answer more than "I don't know." (`hallucination penalty`): GRPO at penalty
  1 only, 40 rounds instead of the verb's 100 (already most of the lab's effect), 200 questions per group,
  3 seeds of the prompts and held-out split.

Measured at full size: 346 s of CPU in all (about 40 s snowball, 80 s knowledge mismatch, 160 s retrieval,
65 s penalty, under 1 s the two that read), so about 6 minutes on a quiet machine; 14 minutes of wall time
when it shared the 2 cores with 4-7 other busy processes.

Where a figure comes from training, each of 3 seeds is kept in the claim's work directory until its row is
made (an interrupted ledger resumes at the next seed), the value pools the seeds' counts, and its interval is
the wider of Newcombe's interval on the pooled counts and Student's t over the seeds' differences: the pooled
one alone would miss seed-to-seed spread, and the t one alone can be narrow by luck with three seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.data.world import load_world
from lmlab.evals.binary import auroc, percent_bars, rate
from lmlab.evals.binary import newcombe as binary_newcombe
from lmlab.evals.bootstrap import bootstrap_interval, t_interval
from lmlab.evals.grounded import RetrievalConfig, retrieval_experiment
from lmlab.evals.snowball import SnowballConfig, snowball
from lmlab.evals.unknown_sft import UnknownSFTConfig, known_facts, mixes, pretrained_engine, run_share, split_pools
from lmlab.evals.wrong_penalty import PenaltyConfig, penalty_sweep
from lmlab.figures import percent_axes, pyplot, save_png
from lmlab.io import write_json
from lmlab.ledger.claims import Claim, Row, plot_path
from lmlab.post.stage import PostTrainConfig

SEEDS = 3
PENALTY = 1.0
"""The wrong-answer penalty tested: the policy should answer only when P(right) > 1/2."""


# ---- statistics ---------------------------------------------------------------------------------------------

def merge(*rates: dict[str, Any]) -> dict[str, Any]:
    """Several `rate`s as one (their counts added)."""
    return rate(sum(r["k"] for r in rates), sum(r["n"] for r in rates))


def newcombe(after: dict[str, Any], before: dict[str, Any]) -> tuple[float, float, float]:
    """after - before of two independent `rate`s, with Newcombe's interval (`lmlab.evals.binary.newcombe`)."""
    return binary_newcombe(after["k"], after["n"], before["k"], before["n"])


def seeds_difference(afters: list[dict[str, Any]], befores: list[dict[str, Any]]) -> dict[str, Any]:
    """after - before pooled over seeds; the interval is the wider of Newcombe's on the pooled counts and
    Student's t over the per-seed differences (the latter only with 2 or more seeds)."""
    d, lo, hi = newcombe(merge(*afters), merge(*befores))
    per_seed = [newcombe(a, b)[0] for a, b in zip(afters, befores)]
    if len(per_seed) > 1:
        mean, t_lo, _ = t_interval(per_seed)
        half = mean - t_lo
        lo, hi = min(lo, d - half), max(hi, d + half)
    return {"value": d, "low": lo, "high": hi, "per_seed": [round(x, 4) for x in per_seed]}


def auroc_np(scores: np.ndarray, wrong: np.ndarray) -> float:
    """AUROC of `scores` at flagging `wrong` (ties half), vectorised for the bootstrap; NaN without both."""
    pos, neg = np.sort(scores[wrong > 0.5]), np.sort(scores[wrong <= 0.5])
    if not len(pos) or not len(neg):
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def _r(x: dict[str, Any]) -> dict[str, Any]:
    """A `rate` rounded for details."""
    return {"k": x["k"], "n": x["n"], "rate": None if x["rate"] is None else round(x["rate"], 4),
            "ci95": None if x["ci95"] is None else [round(v, 4) for v in x["ci95"]]}


def _pts(d: dict[str, Any] | tuple) -> str:
    v, lo, hi = (d["value"], d["low"], d["high"]) if isinstance(d, dict) else d
    return f"{100 * v:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _round3(t: tuple[float, float, float]) -> list[float]:
    return [round(x, 4) for x in t]


# ---- shared machinery ---------------------------------------------------------------------------------------

def _tiny(ctx: Any) -> str:
    return " (tiny size: a seconds-long quickstart, figures meaningless)" if ctx.size == "tiny" else ""


def _stamp(path: Path) -> int:
    """When a checkpoint was written: a rerun quickstart invalidates what was measured on the old one."""
    meta = path / "meta.json"
    return meta.stat().st_mtime_ns if meta.is_file() else 0


def per_seed(ctx: Any, claim_id: str, seed: int, settings: dict[str, Any],
             run: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """One seed's result, kept in the claim's work directory under its settings, so that an interrupted
    ledger resumes at the next seed; `run(directory)` gets an empty directory to train in."""
    work = ctx.workdir(claim_id)
    kept = work / f"seed_{seed}.json"
    key = json.dumps(settings, sort_keys=True, default=str)
    try:
        got = json.loads(kept.read_text(encoding="utf-8"))
        if got.get("settings") == key:
            return got["result"]
    except (OSError, ValueError):
        pass
    out = work / f"seed_{seed}"
    shutil.rmtree(out, ignore_errors=True)
    result = run(out)
    write_json(kept, {"settings": key, "result": result})
    return result


def forgets_seeds(claim_id: str) -> Callable[[Callable[[Any], Row]], Callable[[Any], Row]]:
    """Drop a claim's kept seeds once its row is made: they are there to resume an interrupted run, and a later
    run (changed code, --force) must measure again."""
    def wrap(fn: Callable[[Any], Row]) -> Callable[[Any], Row]:
        @functools.wraps(fn)
        def run(ctx: Any) -> Row:
            row = fn(ctx)
            shutil.rmtree(ctx.workdir(claim_id), ignore_errors=True)
            return row
        return run
    return wrap


def _bars(ctx: Any, claim_id: str, cells: list[tuple[str, dict, dict]], names: tuple[str, str],
          ylabel: str = "% of graded answers") -> str:
    """Before/after bars with their Wilson intervals, one pair per (label, before rate, after rate)."""
    path, link = plot_path(ctx, claim_id)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.9 * len(cells) + 2.2, 3.6), dpi=110)
    x = np.arange(len(cells))
    for i, (name, color) in enumerate(zip(names, ("tab:grey", "tab:blue"))):
        ys, err = percent_bars([c[1 + i] for c in cells])
        ax.bar(x + (i - 0.5) * 0.38, ys, width=0.38, yerr=err, capsize=3, color=color, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels([c[0] for c in cells], fontsize=8)
    percent_axes(ax, "", ylabel)
    ax.legend(fontsize=8)
    save_png(fig, path)
    return link


def _lower_is_better(diff: dict[str, Any]) -> str:
    """A mitigation holds when the whole interval of (after - before) hallucination lies below 0."""
    return "holds" if diff["high"] < 0 else "does not hold"


def _row(diff: dict[str, Any], unit: str, verdict: str, **kw: Any) -> Row:
    return Row(value=diff["value"], low=min(diff["low"], diff["value"]), high=max(diff["high"], diff["value"]),
               unit=unit, verdict=verdict, **kw)


# ---- hypothesis 1: snowballing ------------------------------------------------------------------------------

def _snowball_counts(stage: dict[str, Any], cond: str) -> dict[str, dict[str, Any]]:
    c = stage[cond]
    dep = c["dependent"].values()  # both directions: employer -> its city, city -> employer
    return {"dependent_follows": merge(*(d["follows_error"] for d in dep)),
            "dependent_true": merge(*(d["follows_truth"] for d in dep)),
            "later_wrong": c["independent"]["wrong"], "later_donor": c["independent"]["donor"]}


def snowball_verdict(dep: tuple[float, float, float], later: tuple[float, float, float]) -> tuple[str, str]:
    """'holds' when dependent facts follow the planted error more than after the control (interval above 0);
    'holds only' when they do not but other later facts go wrong more often; else 'does not hold'."""
    if dep[1] > 0:
        return "holds", ""
    if later[1] > 0:
        return "holds only", (f"weakly: other later facts are wrong {_pts(later)} more often after a planted error, "
                              "but the fact that depends on it does not follow it")
    return "does not hold", ""


def hallucinations_snowball(ctx: Any) -> Row:
    run = ctx.quickstart_run()
    full = ctx.size == "full"
    cfg = SnowballConfig(model=str(run / "checkpoint"), world=str(run / "world"), people=100 if full else 3,
                         prefixes=2 if full else 1, qa=False, max_new_tokens=96 if full else 16, seed=ctx.seed,
                         device="cpu", train=PostTrainConfig(threads=1, device="cpu"))
    res = snowball(cfg)
    stage = res["stages"]["pretrained"]
    err, ctl = _snowball_counts(stage, "error"), _snowball_counts(stage, "control")
    dep = newcombe(err["dependent_follows"], ctl["dependent_follows"])
    later = newcombe(err["later_wrong"], ctl["later_wrong"])
    verdict, condition = snowball_verdict(dep, later)
    labels = {"dependent_follows": "dependent fact\ngoes with planted", "dependent_true": "dependent fact\ntrue",
              "later_wrong": "other later\nfacts wrong", "later_donor": "other later facts\n= donor's"}
    link = _bars(ctx, "hallucinations-snowball", [(labels[k], ctl[k], err[k]) for k in labels],
                 ("control prefix (true fact)", "error prefix (planted wrong fact)"))
    return _row({"value": dep[0], "low": dep[1], "high": dep[2]},
                "share of dependent facts going with the planted error, error - control", verdict,
                condition=condition,
                measured=f"greedy continuations of {res['prefixes']} biography prefix pairs (error / control) about "
                         f"{res['people']} QA-train people by the quickstart's pretrained model; one run, no "
                         f"training{_tiny(ctx)}",
                interval="Newcombe (Wilson hybrid) for the difference of two rates over prefixes, seed "
                         f"{ctx.seed}", plot=link,
                details={"error": {k: _r(v) for k, v in err.items()}, "control": {k: _r(v) for k, v in ctl.items()},
                         "later_wrong_difference": _round3(later),
                         "chance_donor": stage["error"]["independent"]["chance_donor"],
                         "people": res["people"], "prefix_pairs": res["prefixes"]})


# ---- hypothesis 2: knowledge mismatch -----------------------------------------------------------------------

def _facts(ctx: Any, cfg: UnknownSFTConfig, world: dict[str, Any]) -> tuple[list[dict[str, Any]], Any, str]:
    """Every known person's fact labelled Known / Unknown by the pretrained model's own answer, once for all
    seeds (the answer is greedy, so every seed would get the same). A tiny model knows nothing: then, at tiny
    size only, every other fact is called Known so that the mixes exist."""
    engine, tok = pretrained_engine(cfg)
    facts = known_facts(world, engine, cfg.max_new_tokens)
    note = ""
    if ctx.size == "tiny" and (all(q["known"] for q in facts) or not any(q["known"] for q in facts)):
        facts = [{**q, "known": i % 2 == 0} for i, q in enumerate(facts)]
        note = "tiny: Known = every other fact"
    return facts, tok, note


def _usft_cfg(ctx: Any, run: Path, seed: int, out: Path) -> UnknownSFTConfig:
    full = ctx.size == "full"
    steps = 300 if full else 3
    return UnknownSFTConfig(model=str(run / "checkpoint"), world=str(run / "world"), out=str(out),
                            shares=[0.0, 1.0], eval_questions=200 if full else 6, seed=seed,
                            train=PostTrainConfig(steps=steps, batch_size=16 if full else 4, lr=3e-4, min_lr=3e-5,
                                                  warmup_steps=20 if full else 0, eval_interval=steps,
                                                  log_interval=50 if full else 1, seed=1337 + seed, threads=1,
                                                  device="cpu"))


@forgets_seeds("unknown-facts-teach-hallucination")
def unknown_facts_teach_hallucination(ctx: Any) -> Row:
    claim_id = "unknown-facts-teach-hallucination"
    run = ctx.quickstart_run()
    world = load_world(run / "world")
    shared: dict[str, Any] = {}

    def one_seed(seed: int) -> Callable[[Path], dict[str, Any]]:
        def go(out: Path) -> dict[str, Any]:
            cfg = _usft_cfg(ctx, run, seed, out)
            if "facts" not in shared:
                shared["facts"], shared["tok"], shared["note"] = _facts(ctx, cfg, world)
            pools = split_pools(world, shared["facts"], cfg)
            n, by_share = mixes(pools, cfg)
            runs = [run_share(cfg, share, mix, pools, world, shared["tok"]) for share, mix in by_share.items()]
            return {"answered_per_mix": n, "abstain_examples": len(pools["abstain"]), "note": shared["note"],
                    "known_share": sum(q["known"] for q in shared["facts"]) / len(shared["facts"]),
                    "runs": {str(r["share"]): {k: r["converged"][k] for k in ("step", "heldout_known", "unknown",
                                                                             "fit_known", "fit_unknown")
                                               if k in r["converged"]} for r in runs}}
        return go

    results = []
    for s in range(ctx.seed, ctx.seed + SEEDS):
        settings = {**dataclasses.asdict(_usft_cfg(ctx, run, s, Path("-"))), "stamp": _stamp(run / "checkpoint")}
        results.append(per_seed(ctx, claim_id, s, settings, one_seed(s)))
    made_up = {sh: [r["runs"][sh]["unknown"]["hallucination_rate"] for r in results] for sh in ("0.0", "1.0")}
    known = {sh: [r["runs"][sh]["heldout_known"]["accuracy"] for r in results] for sh in ("0.0", "1.0")}
    diff = seeds_difference(made_up["1.0"], made_up["0.0"])
    known_diff = seeds_difference(known["1.0"], known["0.0"])
    fitted = merge(*(r["runs"]["1.0"]["fit_unknown"]["accuracy"] for r in results if "fit_unknown" in r["runs"]["1.0"]))
    link = _bars(ctx, claim_id, [("held-out unknown people:\nmade up", merge(*made_up["0.0"]), merge(*made_up["1.0"])),
                                 ("held-out Known facts:\nright", merge(*known["0.0"]), merge(*known["1.0"]))],
                 ("SFT on 0% Unknown facts", "SFT on 100% Unknown facts"))
    verdict = "holds" if diff["low"] > 0 else "does not hold"
    reading = "contradicted: fabrication falls" if diff["high"] < 0 else "not shown" if verdict != "holds" else "shown"
    return _row(diff, "share of never-seen people's questions made up, 100% - 0% Unknown SFT", verdict,
                measured=f"SFT of the quickstart's pretrained model on {results[0]['answered_per_mix']} answered "
                         f"examples (all Known or all Unknown to it) plus {results[0]['abstain_examples']} 'I don't "
                         f"know.' ones, graded on never-seen people, {SEEDS} seeds; {reading}{_tiny(ctx)}",
                interval=f"wider of Newcombe on counts pooled over seeds {ctx.seed}-{ctx.seed + SEEDS - 1} and "
                         "Student's t over the seeds' differences", plot=link,
                details={"made_up": {sh: _r(merge(*v)) for sh, v in made_up.items()},
                         "heldout_known_right": {sh: _r(merge(*v)) for sh, v in known.items()},
                         "heldout_known_difference": {k: v if k == "per_seed" else round(v, 4)
                                                      for k, v in known_diff.items()},
                         "unknown_examples_fitted_at_100": _r(fitted), "per_seed_made_up_difference": diff["per_seed"],
                         "pretrained_known_share": round(results[0]["known_share"], 4),
                         "steps": results[0]["runs"]["1.0"]["step"], "note": results[0]["note"]})


# ---- mitigation: abstention training ------------------------------------------------------------------------

def abstention_training(ctx: Any) -> Row:
    run = ctx.quickstart_run()
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    h = summary["hallucination"]
    before, after = h["unknown_hallucination_rate_before"], h["unknown_hallucination_rate_after"]
    d = newcombe(after, before)
    known = newcombe(h["known_accuracy_after"], h["known_accuracy_before"])
    diff = {"value": d[0], "low": d[1], "high": d[2]}
    link = _bars(ctx, "abstention-training", [
        ("held-out unknown people:\nmade up", before, after),
        ("held-out unknown people:\nabstained", h["abstention_rate_before"], h["abstention_rate_after"]),
        ("known people:\nright", h["known_accuracy_before"], h["known_accuracy_after"])],
        ("pretrained (plain format)", "after SFT + DPO (chat format)"))
    dpo = summary.get("dpo", {})
    return _row(diff, "share of never-seen people's questions made up, after - before",
                _lower_is_better(diff),
                measured=f"read from the quickstart's summary.json ('hallucination'): {before['n']} questions about "
                         "never-seen people no stage taught to abstain on, and "
                         f"{h['known_accuracy_before']['n']} about known people, greedy, pretrained model vs its SFT "
                         "+ DPO model (taught 'I don't know.' on the other unknown people); one training seed: the "
                         f"quickstart's own run, whose figure this is{_tiny(ctx)}",
                interval="Newcombe (Wilson hybrid) for the difference of two rates over questions, one training seed",
                plot=link,
                details={"made_up_before": _r(before), "made_up_after": _r(after),
                         "known_right_before": _r(h["known_accuracy_before"]),
                         "known_right_after": _r(h["known_accuracy_after"]), "known_right_difference": _round3(known),
                         "ece_before": h["ece_before"], "ece_after": h["ece_after"],
                         "dpo_over_sft_heldout_unknown_fabrication": [
                             dpo.get(w, {}).get("heldout", {}).get("unknown_fabrication") for w in ("before", "after")],
                         "caveat": "before is asked in the pretraining format, after in the chat template"})


# ---- mitigation: detection by log-probability and self-consistency -------------------------------------------

GRADED = ("qa_train", "qa_test", "unknown")
"""Groups whose answers count: not the unknown people post-training taught to abstain on."""


def selective_threshold(confidence: np.ndarray, correct: np.ndarray) -> float:
    """The confidence below which abstaining gains the most (right answers kept - wrong ones kept): the
    threshold a reward of +1 right, -1 wrong, 0 abstained would pick; 0 (answer everything) if none helps."""
    best, best_t = float(correct.sum() - (~correct).sum()), 0.0
    for t in np.unique(confidence):
        keep = confidence >= t
        gain = float(correct[keep].sum() - (~correct[keep]).sum())
        if gain > best:
            best, best_t = gain, float(t)
    return best_t


def _split_people(rows: list[dict[str, Any]], seed: int) -> tuple[list[dict], list[dict]]:
    """(rows of half the people, rows of the other half): the threshold is chosen on one, graded on the other."""
    people = sorted({r["person"] for r in rows})
    random.Random(seed).shuffle(people)
    fit = set(people[: len(people) // 2])
    return [r for r in rows if r["person"] in fit], [r for r in rows if r["person"] not in fit]


def _selective(rows: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Hallucination and known-answer accuracy on the graded half, before and after abstaining below the
    threshold chosen on the other half."""
    fit, graded = _split_people([r for r in rows if r["group"] in GRADED], seed)
    answered = [r for r in fit if r["label"] != "abstain"]
    t = selective_threshold(np.array([r["confidence"] for r in answered]),
                            np.array([r["label"] == "correct" for r in answered], dtype=bool)) if answered else 0.0
    after = [{**r, "label": "abstain"} if r["label"] != "abstain" and r["confidence"] < t else r for r in graded]
    known = [i for i, r in enumerate(graded) if r["group"] != "unknown"]

    def count(rs: list[dict[str, Any]], label: str, idx: list[int] | None = None) -> dict[str, Any]:
        sub = rs if idx is None else [rs[i] for i in idx]
        return rate(sum(r["label"] == label for r in sub), len(sub))

    return {"threshold": t, "made_up": (count(graded, "wrong"), count(after, "wrong")),
            "known_right": (count(graded, "correct", known), count(after, "correct", known))}


def _roc(scores: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    w = wrong[order]
    tpr = np.concatenate([[0], np.cumsum(w) / max(w.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(1 - w) / max((1 - w).sum(), 1)])
    return fpr, tpr


def _detector(scores: np.ndarray, wrong: np.ndarray, seed: int) -> tuple[float, float, float] | None:
    """AUROC with a bootstrap interval over answers; None when the answers are not both right and wrong."""
    value = auroc(scores.tolist(), wrong.astype(bool).tolist())
    if value is None:
        return None
    lo, hi = bootstrap_interval(np.stack([scores, wrong], 1), lambda a: auroc_np(a[:, 0], a[:, 1]),
                                resamples=1000, seed=seed)
    return value, lo, hi


def _plot_detection(ctx: Any, claim_id: str, answered: list[dict], sel: dict[str, Any]) -> str:
    path, link = plot_path(ctx, claim_id)
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=110)
    wrong = np.array([r["label"] == "wrong" for r in answered], dtype=float)
    for name, key in (("log-probability", "confidence"), ("self-consistency", "inconsistency")):
        if answered and all(key in r for r in answered):
            x = np.array([r[key] for r in answered], dtype=float)
            ax.plot(*_roc(1 - x if key == "confidence" else x, wrong), label=name)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlabel("right answers flagged (false positive rate)")
    ax.set_ylabel("wrong answers flagged (true positive rate)")
    ax.legend(fontsize=8)
    cells = [("made up", *sel["made_up"]), ("known people:\nright", *sel["known_right"])]
    x = np.arange(len(cells))
    for i, (name, color) in enumerate(zip(("answer all", f"abstain below {sel['threshold']:.2f}"),
                                          ("tab:grey", "tab:blue"))):
        ys, err = percent_bars([c[1 + i] for c in cells])
        bx.bar(x + (i - 0.5) * 0.38, ys, width=0.38, yerr=err, capsize=3, color=color, label=name)
    bx.set_xticks(x)
    bx.set_xticklabels([c[0] for c in cells], fontsize=8)
    percent_axes(bx, "", "% of questions (other half of the people)")
    bx.legend(fontsize=8)
    save_png(fig, path)
    return link


def confidence_detects_hallucination(ctx: Any) -> Row:
    claim_id = "confidence-detects-hallucination"
    run = ctx.quickstart_run()
    path = run / "hallucination" / "after" / "answers.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    answered = [r for r in rows if r["label"] != "abstain"]
    wrong = np.array([r["label"] == "wrong" for r in answered], dtype=float)
    logprob = _detector(np.array([1 - r["confidence"] for r in answered]), wrong, ctx.seed) if answered else None
    consistency = _detector(np.array([r["inconsistency"] for r in answered]), wrong, ctx.seed) \
        if answered and all("inconsistency" in r for r in answered) else None
    sel = _selective(rows, ctx.seed)
    link = _plot_detection(ctx, claim_id, answered, sel)
    # No AUROC without both right and wrong answers (tiny models): chance, in the widest interval.
    value, lo, hi = logprob if logprob else (0.5, 0.0, 1.0)
    made_up, known = newcombe(*reversed(sel["made_up"])), newcombe(*reversed(sel["known_right"]))
    none = "" if logprob else "; no AUROC: the answers are not both right and wrong"
    return Row(value=value, low=min(lo, value), high=max(hi, value),
               unit="AUROC of 1 - exp(mean token log-probability) at flagging wrong answers",
               verdict="holds" if logprob and lo > 0.5 else "does not hold",
               measured=f"{len(answered)} non-abstaining greedy answers of the quickstart's DPO model (its "
                        f"hallucination/after/answers.jsonl, read again){none}{_tiny(ctx)}",
               interval=f"percentile bootstrap over answers (1000 resamples, seed {ctx.seed})", plot=link,
               details={"answers": len(answered), "wrong": int(wrong.sum()),
                        "consistency_auroc": None if consistency is None else [round(x, 4) for x in consistency],
                        "abstain_below": round(sel["threshold"], 4),
                        "made_up_before_after": [_r(x) for x in sel["made_up"]],
                        "made_up_difference": _round3(made_up),
                        "known_right_before_after": [_r(x) for x in sel["known_right"]],
                        "known_right_difference": _round3(known),
                        "selective": "threshold chosen on half the people (seeded), graded on the other half"})


# ---- mitigation: retrieval with citations -------------------------------------------------------------------

def _retrieval_cfg(ctx: Any, run: Path, seed: int) -> RetrievalConfig:
    full = ctx.size == "full"
    return RetrievalConfig(model=str(run / "checkpoint"), world=str(run / "world"), questions=150 if full else 3,
                           seed=seed, device="cpu",
                           train=PostTrainConfig(steps=400 if full else 2, batch_size=16 if full else 4, lr=1e-3,
                                                 min_lr=1e-4, warmup_steps=20 if full else 0, eval_interval=0,
                                                 log_interval=50 if full else 1, seed=1337 + seed, threads=1,
                                                 device="cpu"))


@forgets_seeds("retrieval-reduces-hallucination")
def retrieval_reduces_hallucination(ctx: Any) -> Row:
    claim_id = "retrieval-reduces-hallucination"
    run = ctx.quickstart_run()

    def go(seed: int) -> Callable[[Path], dict[str, Any]]:
        def one(_out: Path) -> dict[str, Any]:
            res = retrieval_experiment(_retrieval_cfg(ctx, run, seed))
            return {"arms": {arm: {"groups": a["groups"], "citations": {k: a["citations"][k] for k in
                                                                         ("recall", "precision")},
                                   "abstains_when_nothing_found": a["abstains_when_nothing_found"]}
                             for arm, a in res["arms"].items()},
                    "recall_at_k": res["retrieval"]["recall_at_k"], "k": res["k"]}
        return one

    results = []
    for s in range(ctx.seed, ctx.seed + SEEDS):
        settings = {**dataclasses.asdict(_retrieval_cfg(ctx, run, s)), "stamp": _stamp(run / "checkpoint")}
        results.append(per_seed(ctx, claim_id, s, settings, go(s)))

    def pooled(arm: str, group: str, what: str) -> list[dict[str, Any]]:
        return [r["arms"][arm]["groups"][group][what] for r in results]

    made_up = {arm: [merge(*(r["arms"][arm]["groups"][g]["hallucination_rate"] for g in ("qa_test", "unknown")))
                     for r in results] for arm in ("plain", "retrieval")}
    diff = seeds_difference(made_up["retrieval"], made_up["plain"])
    right = {arm: merge(*pooled(arm, "qa_test", "accuracy")) for arm in ("plain", "retrieval")}
    cells = [(label, merge(*pooled("plain", g, what)), merge(*pooled("retrieval", g, what))) for g, what, label in (
        ("qa_test", "hallucination_rate", "QA-test people:\nmade up"), ("unknown", "hallucination_rate",
                                                                        "never-seen people:\nmade up"),
        ("qa_test", "accuracy", "QA-test people:\nright"),
        ("qa_test", "abstention_rate", "QA-test people:\nabstained"))]
    link = _bars(ctx, claim_id, cells, ("plain SFT", "SFT on retrieved, cited passages"))
    cite = {k: _r(merge(*(r["arms"]["retrieval"]["citations"][k] for r in results))) for k in ("recall", "precision")}
    return _row(diff, "share of held-out questions made up, retrieval - plain SFT",
                _lower_is_better(diff),
                measured=f"two SFT arms from the quickstart's pretrained model (bare questions; top-{results[0]['k']} "
                         "BM25 passages with numbered citations), graded on QA-test people and held-out unknown "
                         f"people neither saw, {SEEDS} seeds{_tiny(ctx)}",
                interval=f"wider of Newcombe on counts pooled over seeds {ctx.seed}-{ctx.seed + SEEDS - 1} and "
                         "Student's t over the seeds' differences", plot=link,
                details={"cells": {c[0].replace("\n", " "): {"plain": _r(c[1]), "retrieval": _r(c[2])} for c in cells},
                         "qa_test_right_difference": _round3(newcombe(right["retrieval"], right["plain"])),
                         "citation_recall_precision": cite,
                         "retrieval_recall_at_k": _r(merge(*(r["recall_at_k"] for r in results))),
                         "per_seed_made_up_difference": diff["per_seed"]})


# ---- mitigation: a reward that punishes wrong answers ------------------------------------------------------

def _penalty_cfg(ctx: Any, run: Path, seed: int, out: Path) -> PenaltyConfig:
    full = ctx.size == "full"
    base = PenaltyConfig().rl
    # RL's own seed stays put: it also picks which unknown people the SFT model was taught to abstain on, and
    # the held-out ones must be those it never was. The seeds vary the prompts and the held-out QA-test people.
    rl = dataclasses.replace(base, train=dataclasses.replace(base.train, steps=40 if full else 2, threads=1,
                                                             device="cpu", warmup_steps=5 if full else 0))
    if not full:
        rl = dataclasses.replace(rl, group_size=2, prompts_per_step=4, max_new_tokens=6)
    return PenaltyConfig(model=str(run / "sft" / "checkpoint"), world=str(run / "world"), out=str(out),
                         penalties=[PENALTY], eval_questions=200 if full else 4, seed=seed, rl=rl)


@forgets_seeds("wrong-answer-penalty-reduces-hallucination")
def penalty_reduces_hallucination(ctx: Any) -> Row:
    claim_id = "wrong-answer-penalty-reduces-hallucination"
    run = ctx.quickstart_run()

    def go(seed: int) -> Callable[[Path], dict[str, Any]]:
        def one(out: Path) -> dict[str, Any]:
            res = penalty_sweep(_penalty_cfg(ctx, run, seed, out))
            after = res["runs"][0]
            return {"before": res["before"], "after": after["rates"], "reward": after["final"]["reward"],
                    "kl": after["final"]["kl"], "prompts": res["prompts"], "steps": res["rl"]["steps"]}
        return one

    results = []
    for s in range(ctx.seed, ctx.seed + SEEDS):
        settings = {**dataclasses.asdict(_penalty_cfg(ctx, run, s, Path("-"))),
                    "stamp": _stamp(run / "sft" / "checkpoint")}
        results.append(per_seed(ctx, claim_id, s, settings, go(s)))

    def made_up(when: str) -> list[dict[str, Any]]:
        return [merge(*(r[when][g]["hallucination_rate"] for g in ("heldout_test", "unknown"))) for r in results]

    def pooled(when: str, group: str, what: str) -> dict[str, Any]:
        return merge(*(r[when][group][what] for r in results))

    diff = seeds_difference(made_up("after"), made_up("before"))
    cells = [(label, pooled("before", g, what), pooled("after", g, what)) for g, what, label in (
        ("heldout_test", "hallucination_rate", "QA-test people:\nmade up"), ("unknown", "hallucination_rate",
                                                                             "never-seen people:\nmade up"),
        ("heldout_test", "accuracy", "QA-test people:\nright"), ("heldout_train", "accuracy", "QA-train:\nright"))]
    link = _bars(ctx, claim_id, cells, ("SFT model", f"GRPO, wrong answer -{PENALTY:g}, abstaining 0"))
    return _row(diff, "share of held-out questions made up, after - before RL",
                _lower_is_better(diff),
                measured=f"GRPO from the quickstart's SFT model, {results[0]['steps']} rounds of 16 prompts x 8 "
                         f"replies, gold reward +1 right / 0 'I don't know.' / -{PENALTY:g} wrong, {SEEDS} seeds of "
                         "the prompts and held-out people (the never-seen people's questions are the same in each); "
                         f"no penalty-0 control run (the lab's showed RL alone does not lower it){_tiny(ctx)}",
                interval=f"wider of Newcombe on counts pooled over seeds {ctx.seed}-{ctx.seed + SEEDS - 1} and "
                         "Student's t over the seeds' differences", plot=link,
                details={"cells": {c[0].replace("\n", " "): {"before": _r(c[1]), "after": _r(c[2])} for c in cells},
                         "qa_test_right_difference": _round3(newcombe(cells[2][2], cells[2][1])),
                         "qa_train_right_difference": _round3(newcombe(cells[3][2], cells[3][1])),
                         "kl_last": [round(r["kl"], 4) for r in results],
                         "reward_last": [round(r["reward"], 4) for r in results],
                         "per_seed_made_up_difference": diff["per_seed"]})


CLAIMS = [
    Claim("hallucinations-snowball", "Once a model has made an error, it commits to it and makes more errors.",
          "Zhang et al. 2023, 'How Language Model Hallucinations Can Snowball'",
          "A biography prefix with one planted wrong fact against the same prefix with the true one, continued "
          "greedily by the pretrained model: does the fact that depends on the planted one go with the error, and "
          "are the other later facts wrong more often?", hallucinations_snowball),
    Claim("unknown-facts-teach-hallucination",
          "Fine-tuning on facts the model did not learn in pretraining teaches it to make things up.",
          "Gekhman et al. 2024, 'Does Fine-Tuning LLMs on New Knowledge Encourage Hallucinations?'; John Schulman, "
          "'Reinforcement Learning from Human Feedback: Progress and Challenges' (talk, 2023)",
          "SFT of the pretrained model on same-size mixes of facts it answered right (Known) or wrong (Unknown), "
          "0% against 100% Unknown, with the same 'I don't know.' examples; fabrication about never-seen people.",
          unknown_facts_teach_hallucination),
    Claim("abstention-training", "Training a model to say \"I don't know\" makes it make up fewer answers about what "
          "it does not know.", "Zhang et al. 2024, 'R-Tuning: Instructing Large Language Models to Say \"I Don't "
          "Know\"'; Schulman's 2023 talk",
          "The quickstart's pretrained model against its SFT + DPO model (taught to abstain on half the never-seen "
          "people), on the other half; the cost on known people's questions.", abstention_training),
    Claim("confidence-detects-hallucination", "A model's own confidence (token log-probability) or the agreement of "
          "its sampled answers flags its hallucinations.", "Kadavath et al. 2022, 'Language Models (Mostly) Know "
          "What They Know'; Manakul et al. 2023, 'SelfCheckGPT'",
          "AUROC of 1 - exp(mean token log-probability), and of disagreement among 5 samples, at flagging the DPO "
          "model's wrong answers; then abstaining below a threshold chosen on half the people.",
          confidence_detects_hallucination),
    Claim("retrieval-reduces-hallucination", "Answering from retrieved sources, with citations, reduces "
          "hallucination.", "Lewis et al. 2020 (RAG); Shuster et al. 2021, 'Retrieval Augmentation Reduces "
          "Hallucination in Conversation'; Gao et al. 2023 (ALCE)",
          "SFT of the pretrained model on the same questions, bare or after the top-2 BM25 passages with a cited "
          "answer; made-up answers about people neither arm was tuned on.", retrieval_reduces_hallucination),
    Claim("wrong-answer-penalty-reduces-hallucination", "A reward that punishes a wrong answer more than an "
          "abstention makes a model hallucinate less.", "Kalai et al. 2025, 'Why Language Models Hallucinate'; "
          "Schulman's 2023 talk",
          "GRPO from the SFT model with the gold reward +1 right, 0 'I don't know.', -1 wrong; made-up answers "
          "about held-out people before and after, and the right answers lost.", penalty_reduces_hallucination),
]
