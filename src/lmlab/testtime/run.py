"""`lmlab testtime`: accuracy against N for each way of choosing among N samples, with the cost.

Methods: `greedy` (one temperature-0 answer), `sample` (one sample at the temperature: the N = 1
baseline), best-of-N by `logprob` (mean or total token log-probability), by `rm` (a reward model's score)
or by `scorer` (a Python function), `vote` (majority over extracted answers) and `oracle` (pass@N: right
if any sample is, the ceiling). M = max(N) samples are drawn once per problem and every N is read from
them (see `select`). Cost per problem: generated tokens, FLOPs (prefill once, since the N samples share
it, plus every decoded token, plus the reward model's forward passes) and wall time, measured by
generating `time_problems` problems afresh at each N. With `greedy` among the methods, every row also
has its difference from greedy on the same problems, with the paired standard error.

Draw more samples than the largest N you report (M = 32 for N <= 16): accuracy at N is then averaged
over many subsets of the M, not read off the one set of N, which is far noisier.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lmlab.device import pick_device
from lmlab.errors import LmlabError
from lmlab.figures import pyplot, save_png
from lmlab.io import atomic_path, write_jsonl
from lmlab.plan.flops import forward_flops_per_token
from lmlab.post.rm import load_reward_model
from lmlab.summary import update_summary
from lmlab.testtime.generators import Generation, LocalGenerator, OpenAIGenerator, Request
from lmlab.testtime.select import expected_accuracy, pass_at, pick_best, pick_vote
from lmlab.testtime.tasks import Task, import_function, load_task
from lmlab.testtime.verifier import score_responses
from lmlab.usercode import call_user

METHODS = ("greedy", "sample", "logprob", "rm", "vote", "scorer", "oracle")


@dataclass
class TestTimeConfig:
    task: str = "world-arith"
    """'world-arith' (the world's arithmetic word problems), 'world-qa' (questions about QA-test people) or a
    JSONL file of {"prompt", "answer"} records."""
    world: str = "runs/quickstart/world"
    """World directory for the world tasks."""
    split: str = "test"
    """Which problems of a world task: 'test' (held out) or 'train'."""
    problems: int = 200
    """Problems to evaluate (the first ones)."""
    model: str = "runs/quickstart/arith/checkpoint"
    """lmlab checkpoint to sample from (ignored when `endpoint` is set)."""
    endpoint: str | None = None
    """Base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) to sample from instead."""
    endpoint_model: str | None = None
    """Model name to ask the endpoint for (default: the first model its /v1/models lists)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (unset: no key)."""
    chat: bool = True
    """Send each problem as a chat turn (chat template / chat completions); false: plain text completion
    in the format the model was pretrained on."""
    n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    """Numbers of samples per problem to evaluate."""
    methods: list[str] = field(default_factory=lambda: ["greedy", "sample", "logprob", "rm", "vote", "oracle"])
    """Any of greedy, sample, logprob, rm, vote, scorer, oracle."""
    temperature: float = 1.0
    """Sampling temperature of the N samples."""
    top_p: float = 1.0
    """Nucleus sampling threshold of the N samples (1 = off)."""
    max_tokens: int = 160
    """Longest response."""
    logprob: str = "mean"
    """Best-of-N by log-probability scores a sample by its 'mean' or 'total' token log-probability."""
    rm: str | None = "runs/quickstart/verifier/checkpoint"
    """Reward model checkpoint for the 'rm' method (from `lmlab rm` or `lmlab testtime verifier`)."""
    scorer: str | None = None
    """'module:function' taking (question, response) and returning a score, for the 'scorer' method."""
    answer_regex: str | None = None
    """Regex that extracts the answer from a response (its first group, or the whole match)."""
    extractor: str | None = None
    """Instead of answer_regex: 'module:function' mapping a response to its answer (None = no answer)."""
    prompt_template: str = "{prompt}"
    """For a JSONL task without chat: how a prompt is written for completion."""
    draws: int = 64
    """Random subsets per N when 1 < N < max(N)."""
    time_problems: int = 8
    """Problems re-generated at each N to measure wall time (0 = skip)."""
    seed: int = 0
    """Sampling seed."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda' (local model and reward model)."""
    out: str = "runs/testtime"
    """Output directory: testtime.csv, testtime.png, samples.jsonl, summary.json."""
    CODE_KEYS: ClassVar[dict[str, str]] = {"scorer": "", "extractor": ""}
    """Fields whose value names a Python function to import and run: refused from a recipe without --allow-code."""

    def __post_init__(self) -> None:
        if not self.n:
            raise LmlabError("n must list at least one number of samples, e.g. 1,4,16")
        for v in self.n:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise LmlabError(f"every N must be an integer >= 1, got {v!r} in n={self.n}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise LmlabError(f"unknown method(s) {bad or '(none given)'}; choose from {', '.join(METHODS)}")
        if self.logprob not in ("mean", "total"):
            raise LmlabError(f"logprob must be 'mean' or 'total', got {self.logprob!r}")
        if "scorer" in self.methods and not self.scorer:
            raise LmlabError("method 'scorer' needs --scorer module:function")
        if "rm" in self.methods and not self.rm:
            raise LmlabError("method 'rm' needs --rm PATH (a reward model checkpoint)")
        if self.split not in ("test", "train"):
            raise LmlabError(f"split must be 'test' or 'train', got {self.split!r}")
        if self.problems < 1:
            raise LmlabError(f"problems must be >= 1, got {self.problems}")
        if self.draws < 1:
            raise LmlabError(f"draws must be >= 1, got {self.draws}")


def make_generator(cfg: TestTimeConfig):
    import os

    if cfg.endpoint:
        return OpenAIGenerator(cfg.endpoint, cfg.endpoint_model, cfg.chat, os.environ.get(cfg.api_key_env))
    return LocalGenerator(cfg.model, chat=cfg.chat, device=cfg.device)


def _warn_unparsed(task: Task, answers: list[list[str | None]]) -> float:
    total = sum(map(len, answers))
    missing = sum(a is None for row in answers for a in row)
    share = missing / max(total, 1)
    if missing:
        how = f"the extractor ({task.extractor_name})" if task.extractor_name else "the extractor"
        never = " It never matched: check the regex against a sample." if missing == total else ""
        msg = (f"{how} found no answer in {missing} of {total} samples ({share:.1%}); those count as "
               f"wrong.{never}")
        print(f"warning: {msg}", file=sys.stderr)
    return share


def _plot(rows: list[dict[str, Any]], out: Path, title: str) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        style = {"marker": "o"} if len(rs) > 1 else {"marker": "*", "markersize": 12, "linestyle": "none"}
        for ax, xkey in zip(axes, ("n", "gen_tokens")):
            ax.errorbar([r[xkey] for r in rs], [r["accuracy"] for r in rs], yerr=[r["stderr"] for r in rs],
                        label=method, capsize=2, **style)
    greedy = next((r["accuracy"] for r in rows if r["method"] == "greedy"), None)
    if greedy is not None:  # the line every sampling method has to beat
        for ax in axes:
            ax.axhline(greedy, color="C0", linestyle="--", linewidth=0.8, alpha=0.6)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("N (samples per problem)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("generated tokens per problem (cost)")
    for ax in axes:
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_png(fig, out)


def _wall_per_problem(gen, prompts: list[str], base: Request, ns: list[int], k: int,
                      greedy: bool) -> dict[int | str, float]:
    """Seconds per problem to generate N samples (and, with `greedy`, one greedy answer), measured afresh
    on the first k prompts, so every method's time comes from batches of the same size."""
    if k <= 0:
        return {}
    sub = prompts[:k]
    gen.generate(sub[:1], Request(n=1, temperature=base.temperature, max_tokens=8, stop=base.stop))  # warm-up
    walls: dict[int | str, float] = {n: gen.generate(sub, Request(
        n=n, temperature=base.temperature, top_p=base.top_p, max_tokens=base.max_tokens, stop=base.stop,
        seed=base.seed + 1)).wall_s / len(sub) for n in ns}
    if greedy:
        walls["greedy"] = gen.generate(sub, Request(n=1, temperature=0.0, max_tokens=base.max_tokens,
                                                    stop=base.stop)).wall_s / len(sub)
    return walls


class _Flops:
    """Forward FLOPs of generation on a local model (NaN for a remote one, whose shape is unknown)."""

    def __init__(self, model_cfg) -> None:
        self.cfg = model_cfg

    def _per_token(self, context: int) -> float:
        return forward_flops_per_token(self.cfg, max(1, context))

    def prefill(self, prompt_tokens: int) -> float:
        return float("nan") if self.cfg is None else prompt_tokens * self._per_token(prompt_tokens // 2)

    def decode(self, prompt_tokens: int, new_tokens: int) -> float:
        return float("nan") if self.cfg is None else new_tokens * self._per_token(prompt_tokens + new_tokens // 2)


def _greedy_row(gen, task: Task, prompts: list[str], cfg: TestTimeConfig, stop: list[str], fl: _Flops
                ) -> tuple[dict[str, Any], np.ndarray]:
    g = gen.generate(prompts, Request(n=1, temperature=0.0, max_tokens=cfg.max_tokens, stop=stop))
    ok = np.array([task.correct(i, task.answer_of(row[0].text)) for i, row in enumerate(g.samples)], dtype=float)
    P = len(prompts)
    return {"method": "greedy", "n": 1, "accuracy": float(ok.mean()), "stderr": float(ok.std() / math.sqrt(P)),
            "vs_greedy": 0.0, "vs_greedy_stderr": 0.0,
            "gen_tokens": float(np.mean([row[0].tokens for row in g.samples])),
            "flops": float(np.mean([fl.prefill(p) + fl.decode(p, row[0].tokens)
                                    for p, row in zip(g.prompt_tokens, g.samples)])),
            "wall_s": g.wall_s / P}, ok


def _scores(cfg: TestTimeConfig, task: Task, g: Generation, methods: list[str]
            ) -> tuple[dict[str, list[list[float]]], dict[str, float], dict[str, float]]:
    """Per-sample scores of the score-based methods, and each one's extra FLOPs and seconds per sample."""
    P, M = len(g.samples), len(g.samples[0])
    lp = [[(s.mean_logprob if cfg.logprob == "mean" else s.total_logprob) for s in row] for row in g.samples]
    if "logprob" in methods and all(math.isnan(x) for row in lp for x in row):
        raise LmlabError("the backend returned no token log-probabilities, so best-of-N by logprob is impossible")
    scores, extra_flops, extra_wall = {"logprob": lp}, dict.fromkeys(METHODS, 0.0), dict.fromkeys(METHODS, 0.0)
    if "rm" in methods:
        t = time.perf_counter()
        rm, rtok = load_reward_model(cfg.rm, pick_device(cfg.device))
        flat, rm_flops = score_responses(rm, rtok, [task.questions[i] for i in range(P) for _ in range(M)],
                                         [s.text for row in g.samples for s in row])
        scores["rm"] = [flat[i * M:(i + 1) * M] for i in range(P)]
        extra_wall["rm"], extra_flops["rm"] = (time.perf_counter() - t) / (P * M), rm_flops / (P * M)
    if "scorer" in methods:
        fn = import_function(cfg.scorer, "scorer")
        t = time.perf_counter()
        label, as_float = f"scorer {cfg.scorer!r}", lambda q, r: float(fn(q, r))  # a non-number is the user's error
        scores["scorer"] = [[call_user(as_float, label, task.questions[i], s.text) for s in row]
                            for i, row in enumerate(g.samples)]
        extra_wall["scorer"] = (time.perf_counter() - t) / (P * M)
    return scores, extra_flops, extra_wall


def per_problem_accuracy(method: str, n: int, correct, answers, scores, cfg: TestTimeConfig) -> np.ndarray:
    """Per-problem expected accuracy of one method at N = n."""
    M = len(correct[0])
    per = []
    for i in range(len(correct)):
        if method in ("sample", "oracle"):  # one sample is pass@1; the oracle is pass@n
            per.append(pass_at(M, sum(correct[i]), n))
        elif method == "vote":
            per.append(expected_accuracy(correct[i], pick_vote(answers[i], scores["logprob"][i]), n, cfg.draws,
                                         cfg.seed + i))
        else:
            per.append(expected_accuracy(correct[i], pick_best(scores[method][i]), n, cfg.draws, cfg.seed + i))
    return np.array(per)


def run_testtime(cfg: TestTimeConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    task = load_task(cfg.task, cfg.world, cfg.problems, cfg.split, cfg.answer_regex, cfg.extractor,
                     cfg.prompt_template)
    gen = make_generator(cfg)
    prompts = task.prompts(gen.chat)
    stop = [] if gen.chat else task.stop
    P, M, ns = len(prompts), max(cfg.n), sorted(set(cfg.n))
    out = Path(cfg.out)
    fl = _Flops(getattr(getattr(gen, "engine", None), "cfg", None))
    rows: list[dict[str, Any]] = []
    greedy_ok = None
    summary: dict[str, Any] = {"task": task.name, "problems": P, "generator": gen.name, "chat": gen.chat,
                               "temperature": cfg.temperature, "top_p": cfg.top_p, "n": ns}
    if "greedy" in cfg.methods:
        row, greedy_ok = _greedy_row(gen, task, prompts, cfg, stop, fl)
        rows.append(row)
        summary["greedy_accuracy"] = row["accuracy"]
    sampled = [m for m in cfg.methods if m != "greedy"]
    if sampled:
        base = Request(n=M, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, stop=stop,
                       seed=cfg.seed)
        g = gen.generate(prompts, base)
        answers = [[task.answer_of(s.text) for s in row] for row in g.samples]
        correct = [[task.correct(i, a) for a in row] for i, row in enumerate(answers)]
        summary["unparsed_share"] = _warn_unparsed(task, answers)
        summary["sampling_wall_s"] = round(g.wall_s, 2)
        scores, extra_flops, extra_wall = _scores(cfg, task, g, sampled)
        walls = _wall_per_problem(gen, prompts, base, ns, min(cfg.time_problems, P), greedy_ok is not None)
        if "greedy" in walls:
            rows[0]["wall_s"] = walls["greedy"]
        tokens = np.mean([[s.tokens for s in row] for row in g.samples])
        pre = np.array([fl.prefill(p) for p in g.prompt_tokens])
        dec = np.array([np.mean([fl.decode(p, s.tokens) for s in row]) for p, row in zip(g.prompt_tokens, g.samples)])
        for method in sampled:
            for n in ([1] if method == "sample" else ns):
                per = per_problem_accuracy(method, n, correct, answers, scores, cfg)
                # Paired with greedy on the same problems: the difference and its standard error.
                diff = None if greedy_ok is None else per - greedy_ok
                rows.append({"method": method, "n": n, "accuracy": float(per.mean()),
                             "stderr": float(per.std() / math.sqrt(P)),
                             "vs_greedy": None if diff is None else float(diff.mean()),
                             "vs_greedy_stderr": None if diff is None else float(diff.std() / math.sqrt(P)),
                             "gen_tokens": float(n * tokens),
                             "flops": float(np.mean(pre + n * (dec + extra_flops[method]))),
                             "wall_s": walls.get(n, g.wall_s / P * n / M) + n * extra_wall[method]})
        _write_samples(out / "samples.jsonl", task, g, answers, correct, scores)
    for r in rows:
        summary.setdefault(r["method"], {})[str(r["n"])] = round(r["accuracy"], 4)
        if math.isnan(r["flops"]):  # unknown FLOPs (a remote model) are left empty, not written as NaN
            r["flops"] = None
    summary["sample_accuracy"] = next((r["accuracy"] for r in rows if r["method"] == "sample"), None)
    _write_csv(out / "testtime.csv", rows)
    png = _plot(rows, out / "testtime.png", f"{task.name}: {P} problems, {gen.name}, T={cfg.temperature}")
    summary.update({"rows": rows, "csv": str(out / "testtime.csv"), "png": str(png),
                    "wall_s": round(time.perf_counter() - t0, 2)})
    update_summary(out / "summary.json", "testtime", summary)
    return summary


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "n", "accuracy", "stderr", "vs_greedy", "vs_greedy_stderr",
                                          "gen_tokens", "flops", "wall_s"])
        w.writeheader()
        w.writerows(rows)


def _write_samples(path: Path, task: Task, g: Generation, answers, correct, scores) -> None:
    recs = []
    for i, row in enumerate(g.samples):
        recs.append({"question": task.questions[i], "answer": task.answers[i],
                     "samples": [{"text": s.text, "answer": answers[i][j], "correct": correct[i][j],
                                  "tokens": s.tokens, **{k: v[i][j] for k, v in scores.items()}}
                                 for j, s in enumerate(row)]})
    write_jsonl(path, recs)


def format_testtime(summary: dict[str, Any]) -> str:
    """One row per (method, N): accuracy with its error, the difference from greedy, and the cost; then the files."""
    lines = [f"{'method':<8} {'N':>3} {'accuracy':>9} {'+-':>6} {'vs greedy':>14} {'tokens':>7} {'GFLOPs':>7} "
             f"{'wall s':>7}"]
    for r in summary["rows"]:
        fl = "" if r["flops"] is None else f"{r['flops'] / 1e9:7.2f}"
        vs = "" if r["vs_greedy"] is None else f"{r['vs_greedy']:+.1%} +-{r['vs_greedy_stderr']:.1%}"
        lines.append(f"{r['method']:<8} {r['n']:>3} {r['accuracy']:>9.1%} {r['stderr']:>6.1%} {vs:>14} "
                     f"{r['gen_tokens']:>7.0f} {fl:>7} {r['wall_s']:>7.3f}")
    lines.append(f"{summary['csv']}, {summary['png']}")
    return "\n".join(lines) + "\n"
