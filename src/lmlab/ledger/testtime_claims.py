"""Claims about test-time compute, tested on the quickstart's arithmetic solver.

Design. The quickstart fine-tunes its pretrained model into an arithmetic solver (`arith/checkpoint`)
on the world's word problems with worked solutions. For each of three sampling seeds s (ctx.seed, +1,
+2), `lmlab testtime` (`run_testtime`) draws M = 16 samples at temperature 0.7 for each of the
quickstart's 150 held-out problems, and every rule is read from those samples: one sample (pass@1),
best-of-N by mean log-probability, majority vote, best-of-N by a verifier, any-of-N (pass@N, the
ceiling). Accuracy at N < M is averaged over 64 subsets of the M (`select.expected_accuracy`). The
samples are drawn once per seed and shared by the four claims (ctx.memo). Intervals: a per-problem
figure is averaged over the three seeds, then bootstrapped over problems (2,000 resamples of the
problems), so they cover which problems were asked and, pooled, which samples were drawn.

Cost. Per problem, from `run_testtime`'s rows: generated tokens (N x one sample's, by construction),
forward FLOPs (one prefill shared by the N samples, every decoded token, and for the verifier its
forward pass over each sample) and wall time (`time_problems` problems generated afresh at each N).

The verifier. The quickstart's verifier learnt from 204 pairs and is at chance on its 22 held-out pairs,
which tests nothing. Here it is retrained (`train_verifier`, Cobbe et al. 2021's recipe: the solver's
own samples of *training* problems, graded by their final answer, as right-over-wrong pairs) on 2,800
training problems (7x the quickstart's), twice the samples and pairs per problem, and 15 times the steps.
How well it ranks is measured where it is used: on the held-out problems' samples, the share of (right,
wrong) pairs of one problem it scores right above wrong (0.5 is chance). It is trained once (seed
ctx.seed): the intervals do not cover a second verifier's training.

Sizes. Full (measured as one thread's CPU time): the verifier ~5 min (sampling 22,400 solutions and 600
steps), the three seeds' sampling, timing runs and scoring ~70 s: about 6 minutes for the module, within
its 10. A smaller verifier (815 pairs, 300 steps) ranked worse, so the budget goes to the verifier. Tiny:
the tiny quickstart with N up to 4 on 5 problems (seconds); its solver is never right, so no verifier can
be trained from its samples and the tiny quickstart's reward model stands in.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.config import to_dict
from lmlab.errors import LmlabError
from lmlab.evals.bootstrap import bootstrap_interval
from lmlab.figures import pyplot, save_png
from lmlab.io import write_json
from lmlab.ledger.claims import Claim, Row, plot_path
from lmlab.post.rm import load_reward_model
from lmlab.post.stage import PostTrainConfig
from lmlab.testtime.run import TestTimeConfig, per_problem_accuracy, run_testtime
from lmlab.testtime.select import subsets
from lmlab.testtime.verifier import VerifierConfig, score_responses, train_verifier

SEEDS = 3
TEMPERATURE = 0.7
"""The quickstart's: best-of-N needs diverse samples, and at 0.7 one sample loses little to noise."""
SIZES = {"full": {"problems": 150, "n": [1, 2, 4, 8, 16], "max_tokens": 160, "time_problems": 8},
         "tiny": {"problems": 5, "n": [1, 2, 4], "max_tokens": 24, "time_problems": 1}}
VERIFIERS = {
    # 2,800 of the 3,000 training problems, 8 samples each (the quickstart: 400 x 4), up to 4 pairs each (2),
    # 600 steps of 16 pairs (40): about four passes over the ~2,300 pairs.
    "full": VerifierConfig(problems=2800, samples=8, pairs_per_problem=4, temperature=TEMPERATURE,
                           train=PostTrainConfig(steps=600, lr=1e-4, min_lr=1e-5, eval_interval=0, threads=1)),
    "tiny": VerifierConfig(problems=15, samples=2, max_tokens=24, temperature=TEMPERATURE,
                           train=PostTrainConfig(steps=4, eval_interval=0, threads=1)),
}
TRAIN_SEED = 1337
"""The post-training default, offset by the ledger's seed."""
METHODS = ["sample", "logprob", "vote", "rm", "oracle"]
LABELS = {"logprob": "best-of-N, log-probability", "vote": "majority vote", "rm": "best-of-N, verifier",
          "rm_quickstart": "best-of-N, quickstart's verifier", "oracle": "any of N right (pass@N)"}


# -- the verifier -----------------------------------------------------------------------------------------

def _verifier(ctx: Any) -> dict[str, Any]:
    """The retrained verifier (or, at tiny size where no sample is right, the quickstart's reward model)."""
    if "testtime_verifier" not in ctx.memo:
        ctx.memo["testtime_verifier"] = _train_or_reuse(ctx)
    return ctx.memo["testtime_verifier"]


def _train_or_reuse(ctx: Any) -> dict[str, Any]:
    run = ctx.quickstart_run()
    out = ctx.workdir("testtime-verifier")
    cfg = replace(VERIFIERS[ctx.size], model=str(run / "arith" / "checkpoint"), world=str(run / "world"),
                  out=str(out), device="cpu", seed=ctx.seed,
                  train=replace(VERIFIERS[ctx.size].train, seed=TRAIN_SEED + ctx.seed))
    # A finished verifier with the same settings and the same solver is reused: an interrupted ledger resumes.
    key = json.loads(json.dumps({"config": to_dict(cfg),
                                 "solver": (Path(cfg.model) / "meta.json").stat().st_mtime_ns}))
    done = out / "ledger_done.json"
    saved = json.loads(done.read_text()) if done.is_file() else {}
    if saved.get("key") == key and (Path(saved["summary"]["checkpoint"]) / "meta.json").is_file():
        return saved["summary"]
    try:
        summary = {**train_verifier(cfg), "trained": True}
    except LmlabError as e:
        if ctx.size != "tiny":
            raise
        summary = {"trained": False, "why": str(e), "checkpoint": str(run / "rm" / "checkpoint")}
    write_json(done, {"key": key, "summary": summary})
    return summary


# -- the samples, once per seed ---------------------------------------------------------------------------

def _seeds(ctx: Any) -> list[int]:
    return [ctx.seed + i for i in range(SEEDS)]


def _seed_run(ctx: Any, seed: int, rm: str) -> dict[str, Any]:
    """`lmlab testtime` for one sampling seed; its samples re-read from samples.jsonl, per problem."""
    run, size = ctx.quickstart_run(), SIZES[ctx.size]
    cfg = TestTimeConfig(world=str(run / "world"), model=str(run / "arith" / "checkpoint"), rm=rm,
                         problems=size["problems"], n=size["n"], methods=METHODS, temperature=TEMPERATURE,
                         max_tokens=size["max_tokens"], time_problems=size["time_problems"], seed=seed,
                         device="cpu", out=str(ctx.workdir("testtime-samples") / f"seed{seed}"))
    summary = run_testtime(cfg)
    recs = [json.loads(line) for line in open(Path(cfg.out) / "samples.jsonl", encoding="utf-8")]
    correct = [[s["correct"] for s in r["samples"]] for r in recs]
    answers = [[s["answer"] for s in r["samples"]] for r in recs]
    scores = {k: [[s[k] for s in r["samples"]] for r in recs] for k in ("logprob", "rm")}
    # One sample is N = 1 only (its accuracy at larger N would be pass@N), as in `lmlab testtime`'s rows.
    acc = {m: np.stack([per_problem_accuracy(m, n, correct, answers, scores, cfg)
                        for n in ([1] if m == "sample" else cfg.n)], axis=1) for m in METHODS}
    return {"summary": summary, "cfg": cfg, "recs": recs, "correct": correct, "scores": scores, "acc": acc}


def _quickstart_verifier_scores(ctx: Any, runs: list[dict[str, Any]]) -> list[list[list[float]]] | None:
    """The quickstart's own verifier's scores of every seed's samples (its curve is the reference)."""
    path = ctx.quickstart_run() / "verifier" / "checkpoint"
    if not path.is_dir():  # the tiny quickstart trains none
        return None
    model, tok = load_reward_model(path, "cpu")
    out = []
    for r in runs:
        qs = [rec["question"] for rec in r["recs"] for _ in rec["samples"]]
        flat, _ = score_responses(model, tok, qs, [s["text"] for rec in r["recs"] for s in rec["samples"]])
        M = len(r["correct"][0])
        out.append([flat[i * M:(i + 1) * M] for i in range(len(r["recs"]))])
    return out


def _measure(ctx: Any) -> dict[str, Any]:
    """Everything the four claims read, measured once: per-problem accuracy (seed-averaged), cost, rankings."""
    if "testtime" in ctx.memo:
        return ctx.memo["testtime"]
    ver = _verifier(ctx)
    runs = [_seed_run(ctx, s, ver["checkpoint"]) for s in _seeds(ctx)]
    ns = runs[0]["cfg"].n
    acc = {m: np.mean([r["acc"][m] for r in runs], axis=0) for m in METHODS}
    rank = {k: _pooled_ranking([r["correct"] for r in runs], [r["scores"][k] for r in runs]) for k in ("logprob", "rm")}
    proxy = {"rm": _pooled_proxy(runs, [r["scores"]["rm"] for r in runs], ns)}
    qs_scores = _quickstart_verifier_scores(ctx, runs)
    if qs_scores is not None:
        acc["rm_quickstart"] = np.mean([np.stack([per_problem_accuracy(
            "rm", n, r["correct"], None, {"rm": s}, r["cfg"]) for n in ns], axis=1)
            for r, s in zip(runs, qs_scores)], axis=0)
        rank["rm_quickstart"] = _pooled_ranking([r["correct"] for r in runs], qs_scores)
        proxy["rm_quickstart"] = _pooled_proxy(runs, qs_scores, ns)
    ctx.memo["testtime"] = {"ns": ns, "acc": acc, "rank": rank, "proxy": proxy, "verifier": ver,
                            "cost": _cost(runs, ns), "problems": acc["sample"].shape[0], "seeds": _seeds(ctx),
                            "unparsed": float(np.mean([r["summary"]["unparsed_share"] for r in runs]))}
    return ctx.memo["testtime"]


def _cost(runs: list[dict[str, Any]], ns: list[int]) -> dict[str, dict[str, list[float]]]:
    """Per method: tokens, FLOPs and seconds per problem at each N, averaged over the seeds."""
    out: dict[str, dict[str, list[float]]] = {}
    for m in ("logprob", "vote", "rm"):
        rows = [{r["n"]: r for r in run["summary"]["rows"] if r["method"] == m} for run in runs]
        out[m] = {k: [float(np.mean([rs[n][k] for rs in rows])) for n in ns] for k in ("gen_tokens", "flops", "wall_s")}
    return out


# -- statistics -------------------------------------------------------------------------------------------

def ranking(scores: list[float], correct: list[bool]) -> float:
    """Share of one problem's (right, wrong) sample pairs whose right sample scores higher (ties count half);
    NaN when the problem has no such pair. 0.5: the score does not rank."""
    right = [s for s, c in zip(scores, correct) if c]
    wrong = [s for s, c in zip(scores, correct) if not c]
    if not right or not wrong:
        return math.nan
    return float(np.mean([(a > b) + 0.5 * (a == b) for a in right for b in wrong]))


def _pooled_ranking(correct: list[list[list[bool]]], scores: list[list[list[float]]]) -> np.ndarray:
    """Per problem, its ranking averaged over the seeds where it has a (right, wrong) pair; problems without
    one in any seed are left out."""
    per = np.array([[ranking(s, c) for s, c in zip(ss, cc)] for ss, cc in zip(scores, correct)])
    keep = ~np.isnan(per).all(axis=0)
    return np.nanmean(per[:, keep], axis=0) if keep.any() else np.array([])


def _pooled_proxy(runs: list[dict[str, Any]], scores: list[list[list[float]]], ns: list[int]) -> list[float]:
    """The verifier's score of the sample it picks, against N (what best-of-N optimises), averaged."""
    means = []
    for n in ns:
        vals = []
        for run, ss in zip(runs, scores):
            rng = random.Random(run["cfg"].seed)
            for row in ss:
                vals.append(np.mean([max(row[i] for i in sub) for sub in subsets(len(row), n, 64, rng)]))
        means.append(round(float(np.mean(vals)), 4))
    return means


def gain(acc: np.ndarray, seed: int) -> tuple[float, float, float]:
    """Accuracy at the largest N minus at N = 1 (columns: N), with its bootstrap interval over problems."""
    d = acc[:, -1] - acc[:, 0]
    lo, hi = bootstrap_interval(d, np.mean, seed=seed)
    v = float(d.mean())
    return v, min(lo, v), max(hi, v)


def drop_from_peak(acc: np.ndarray, seed: int) -> tuple[float, float, float]:
    """Accuracy at the largest N minus the peak over N (<= 0), the peak re-found in every bootstrap resample
    of the problems (so choosing the peak on the same data does not fake a fall)."""
    def stat(x: np.ndarray) -> float:
        m = x.mean(axis=0)
        return float(m[-1] - m.max())

    lo, hi = bootstrap_interval(acc, stat, seed=seed)
    v = stat(acc)
    return v, min(lo, v), max(hi, v)


def gain_verdict(low: float) -> str:
    """More samples help if the whole interval of the gain is above zero."""
    return "holds" if low > 0 else "does not hold"


def verifier_verdict(rank_low: float, gain_lows: list[float], ns: list[int]) -> tuple[str, str]:
    """(verdict, condition). A verifier that does not rank right above wrong better than chance cannot make the
    claim hold. Otherwise it holds if the gain at the largest N is surely positive, holds only at the N whose
    gain is surely positive if some are, and does not hold if none is."""
    if rank_low <= 0.5:
        return "does not hold", ""
    if gain_lows[-1] > 0:
        return "holds", ""
    good = [n for n, lo in zip(ns, gain_lows) if lo > 0]
    if not good:
        return "does not hold", ""
    return "holds only", f"at N = {', '.join(map(str, good))}, not at N = {ns[-1]}"


def gains(acc: np.ndarray, seed: int) -> list[tuple[float, float, float]]:
    """The gain over one sample at every N (columns), each with its bootstrap interval."""
    return [gain(acc[:, [0, j]], seed) for j in range(acc.shape[1])]


def overopt_verdict(high: float) -> str:
    """Over-optimisation holds if accuracy at the largest N is surely below the peak."""
    return "holds" if high < 0 else "does not hold"


# -- rows and plots ---------------------------------------------------------------------------------------

def _ci(acc: np.ndarray, seed: int) -> list[list[float]]:
    """Per N: the mean and its bootstrap interval over problems."""
    return [[float(acc[:, j].mean()), *bootstrap_interval(acc[:, j], np.mean, seed=seed)] for j in range(acc.shape[1])]


def _curves(meas: dict[str, Any], methods: list[str], seed: int) -> dict[str, Any]:
    return {m: [[round(x, 4) for x in c] for c in _ci(meas["acc"][m], seed)] for m in methods if m in meas["acc"]}


def _plot(ctx: Any, claim_id: str, meas: dict[str, Any], methods: list[str], cost_of: str,
          extra: Callable[[Any], None] | None = None, ceiling: bool = True) -> str:
    """Left: accuracy against N with 95% bootstrap intervals, one sample and pass@N for reference. Right: the
    cost of `cost_of` relative to one sample, against the line 'N times'."""
    ns, path_link = meas["ns"], plot_path(ctx, claim_id)
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for m in methods + (["oracle"] if ceiling else []):
        if m not in meas["acc"]:
            continue
        c = np.array(_ci(meas["acc"][m], ctx.seed))
        ax.errorbar(ns, c[:, 0], yerr=[c[:, 0] - c[:, 1], c[:, 2] - c[:, 0]], marker="o", capsize=3,
                    label=LABELS[m], linestyle=":" if m == "oracle" else "-")
    ax.axhline(meas["acc"]["sample"][:, 0].mean(), color="grey", ls="--", lw=1, label="one sample")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (samples per problem)")
    ax.set_ylabel("accuracy (held-out problems)")
    ax.legend(fontsize=7)
    if extra is not None:
        extra(ax)
    cost = meas["cost"][cost_of]
    for k, label in (("gen_tokens", "generated tokens"), ("flops", "forward FLOPs"), ("wall_s", "wall time")):
        bx.plot(ns, [v / cost[k][0] for v in cost[k]], marker="o", label=label)
    bx.plot(ns, ns, color="grey", ls="--", lw=1, label="N x")
    bx.set_xscale("log", base=2)
    bx.set_yscale("log", base=2)
    bx.set_xlabel("N")
    bx.set_ylabel(f"cost per problem / cost at N=1 ({cost_of})")
    bx.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path_link[0])
    return path_link[1]


def _ratios(meas: dict[str, Any], method: str) -> dict[str, float]:
    c = meas["cost"][method]
    return {k: round(c[k][-1] / c[k][0], 2) for k in ("gen_tokens", "flops", "wall_s")}


def _size_note(ctx: Any) -> str:
    return " (tiny size: the tiny quickstart's untrained solver, values meaningless)" if ctx.size == "tiny" else ""


def _where(meas: dict[str, Any]) -> str:
    seeds = ", ".join(map(str, meas["seeds"]))
    return (f"{meas['problems']} held-out arithmetic problems of the quickstart's solver, {max(meas['ns'])} samples "
            f"each at T = {TEMPERATURE}, sampling seeds {seeds}")


def _interval_text(ctx: Any, meas: dict[str, Any]) -> str:
    return (f"bootstrap over problems (2,000 resamples, seed {ctx.seed}) of the per-problem figure averaged over "
            f"sampling seeds {', '.join(map(str, meas['seeds']))}")


def _scaling_row(ctx: Any, claim_id: str, method: str) -> Row:
    meas = _measure(ctx)
    ns, acc = meas["ns"], meas["acc"][method]
    v, lo, hi = gain(acc, ctx.seed)
    ratios = _ratios(meas, method)
    link = _plot(ctx, claim_id, meas, [method], method)
    return Row(value=v, low=lo, high=hi, unit=f"accuracy at N={max(ns)} minus one sample's", verdict=gain_verdict(lo),
               measured=f"{LABELS[method]} against N on {_where(meas)}; at N={max(ns)} it costs "
                        f"{ratios['gen_tokens']}x the generated tokens, {ratios['flops']}x the FLOPs and "
                        f"{ratios['wall_s']}x the wall time of one sample{_size_note(ctx)}",
               interval=_interval_text(ctx, meas), plot=link,
               details={"n": ns, "accuracy_ci": _curves(meas, ["sample", method, "oracle"], ctx.seed),
                        "cost_per_problem": {k: [round(x, 4) if k == "wall_s" else round(x, 1) for x in vals]
                                             for k, vals in meas["cost"][method].items()},
                        "cost_ratio_at_max_n": ratios, "unparsed_share": round(meas["unparsed"], 4)})


def best_of_n_logprob(ctx: Any) -> Row:
    return _scaling_row(ctx, "best-of-n-logprob", "logprob")


def majority_vote(ctx: Any) -> Row:
    return _scaling_row(ctx, "majority-vote", "vote")


def _rank_ci(meas: dict[str, Any], key: str, seed: int) -> list[Any]:
    """[mean, low, high, problems]; None where no problem had both a right and a wrong sample."""
    r = meas["rank"][key]
    if not len(r):
        return [None, None, None, 0]
    return [round(float(r.mean()), 4), *(round(x, 4) for x in bootstrap_interval(r, np.mean, seed=seed)),
            int(len(r))]


def _rank_text(meas: dict[str, Any], seed: int) -> str:
    rank, low, high, n = _rank_ci(meas, "rm", seed)
    if rank is None:
        return "no held-out problem had both a right and a wrong sample, so the verifier's ranking is unmeasured"
    above = "above" if low > 0.5 else "not above"
    return (f"the verifier scores a right sample above a wrong one of the same problem {rank:.1%} of the time "
            f"[{low:.1%}, {high:.1%}] over {n} problems, {above} chance (50%)")


def _verifier_details(ctx: Any, meas: dict[str, Any]) -> dict[str, Any]:
    ver = meas["verifier"]
    keep = ("trained", "why", "problems", "n_samples", "sample_accuracy", "pairs", "train_accuracy",
            "heldout_accuracy", "sampling_s", "train_flops", "wall_s")
    return {"verifier": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in ver.items() if k in keep},
            "ranking_on_test_samples": {k: _rank_ci(meas, k, ctx.seed) for k in meas["rank"]},
            "ranking_format": "[mean, low, high, problems with a right and a wrong sample]"}


def best_of_n_reward_model(ctx: Any) -> Row:
    meas = _measure(ctx)
    ns, acc = meas["ns"], meas["acc"]["rm"]
    by_n = gains(acc, ctx.seed)
    v, lo, hi = by_n[-1]
    rank_low = _rank_ci(meas, "rm", ctx.seed)[1]
    verdict, condition = verifier_verdict(-1.0 if rank_low is None else rank_low, [g[1] for g in by_n], ns)
    link = _plot(ctx, "best-of-n-reward-model", meas, ["rm", "rm_quickstart", "logprob"], "rm")
    what = _rank_text(meas, ctx.seed)
    if rank_low is None or rank_low <= 0.5:
        what += ": it does not rank, so best-of-N by it cannot raise accuracy but by chance"
    best = int(np.argmax([g[0] for g in by_n]))
    what += (f"; gain over one sample at N={ns[best]} (the best N) {by_n[best][0]:+.1%} "
             f"[{by_n[best][1]:+.1%}, {by_n[best][2]:+.1%}]")
    ver = meas["verifier"]
    trained = (f"a verifier retrained on {ver['n_samples']:,} samples of {ver['problems']:,} training problems "
               f"({ver['pairs']:,} pairs)") if ver.get("trained") else "the tiny quickstart's reward model"
    return Row(value=v, low=lo, high=hi, unit=f"accuracy at N={max(ns)} minus one sample's", verdict=verdict,
               condition=condition, measured=f"best-of-N by {trained} on {_where(meas)}; {what}{_size_note(ctx)}",
               interval=_interval_text(ctx, meas) + "; the verifier is trained once (seed "
                        f"{ctx.seed}), so the interval does not cover retraining it", plot=link,
               details={"n": ns, "accuracy_ci": _curves(meas, ["sample", "rm", "rm_quickstart", "logprob", "oracle"],
                                                        ctx.seed),
                        "gain_ci_by_n": [[round(x, 4) for x in g] for g in by_n],
                        "cost_ratio_at_max_n": _ratios(meas, "rm"), **_verifier_details(ctx, meas)})


def reward_over_optimisation(ctx: Any) -> Row:
    meas = _measure(ctx)
    ns, acc = meas["ns"], meas["acc"]["rm"]
    v, lo, hi = drop_from_peak(acc, ctx.seed)
    mean = acc.mean(axis=0)
    peak = ns[int(np.argmax(mean))]

    def proxy(ax: Any) -> None:  # what best-of-N optimises: the verifier's score of its pick, on a second axis
        tx = ax.twinx()
        tx.plot(ns, meas["proxy"]["rm"], color="tab:red", ls="-.", marker="x", label="verifier score of the pick")
        tx.set_ylabel("verifier score of the pick (proxy)", color="tab:red")

    link = _plot(ctx, "reward-over-optimisation", meas, ["rm", "rm_quickstart"], "rm", extra=proxy, ceiling=False)
    return Row(value=v, low=lo, high=hi, unit=f"accuracy at N={max(ns)} minus the peak over N",
               verdict=overopt_verdict(hi),
               measured=f"accuracy of best-of-N by the verifier of best-of-n-reward-model against N on "
                        f"{_where(meas)}; peak at N={peak}; {_rank_text(meas, ctx.seed)}{_size_note(ctx)}",
               interval=_interval_text(ctx, meas) + "; the peak is re-found in every resample", plot=link,
               details={"n": ns, "peak_n": peak, "accuracy_ci": _curves(meas, ["sample", "rm", "rm_quickstart"],
                                                                         ctx.seed),
                        "verifier_score_of_pick": meas["proxy"],
                        "quickstart_verifier_drop_from_peak": _maybe_drop(meas, ctx.seed)})


def _maybe_drop(meas: dict[str, Any], seed: int) -> list[float] | None:
    if "rm_quickstart" not in meas["acc"]:
        return None
    return [round(x, 4) for x in drop_from_peak(meas["acc"]["rm_quickstart"], seed)]


CLAIMS = [
    Claim("best-of-n-logprob", "Best-of-N chosen by the model's own log-probability raises accuracy, at N times "
          "the cost.", "Common practice (e.g. 'sample-and-rank' in Adiwardana et al. 2020); test-time compute "
          "surveys (Snell et al. 2024)",
          "16 samples per held-out arithmetic problem from the quickstart's solver, 3 sampling seeds; the sample "
          "with the highest mean token log-probability among N, against one sample; cost in tokens, FLOPs, "
          "seconds.", best_of_n_logprob),
    Claim("majority-vote", "Majority vote (self-consistency) raises accuracy, at N times the cost.",
          "Wang et al. 2022, 'Self-Consistency Improves Chain of Thought Reasoning in Language Models'",
          "The most frequent final answer among N samples, against one sample, on the same samples as "
          "best-of-n-logprob.", majority_vote),
    Claim("best-of-n-reward-model", "Best-of-N by a reward model (verifier) raises accuracy.",
          "Cobbe et al. 2021, 'Training Verifiers to Solve Math Word Problems'",
          "A verifier retrained on the solver's own graded samples of 2,800 training problems picks one of N "
          "samples of each held-out problem; its ranking of right over wrong samples is measured first.",
          best_of_n_reward_model),
    Claim("reward-over-optimisation", "Optimising too hard against an imperfect reward model lowers true "
          "quality (over-optimisation).", "Gao et al. 2022, 'Scaling Laws for Reward Model Overoptimization'",
          "Accuracy of best-of-N by the retrained verifier as N (the optimisation pressure) grows: does it fall "
          "after a peak?", reward_over_optimisation),
]
