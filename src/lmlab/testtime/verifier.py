"""An outcome verifier: a reward model trained on the generator's own graded samples.

Cobbe et al. 2021 ("Training Verifiers to Solve Math Word Problems"): sample several solutions to each
training problem, label each by whether its final answer is right, and train a model to tell right from
wrong. Here the labels become preference pairs (a right solution over a wrong one to the same problem)
and `lmlab rm` trains the Bradley-Terry reward model, so best-of-N "by reward model" has a reward model
that knows the task. `score_responses` is how best-of-N calls any lmlab reward model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmlab.data.preferences import pair_ids
from lmlab.errors import LmlabError
from lmlab.io import write_jsonl
from lmlab.plan.flops import forward_flops_per_token
from lmlab.post.rm import RMConfig, train_rm
from lmlab.post.stage import PostTrainConfig
from lmlab.rundir import locked_run
from lmlab.testtime.generators import LocalGenerator, Request
from lmlab.testtime.tasks import load_task


def score_responses(model, tok, questions: list[str], responses: list[str]) -> tuple[list[float], float]:
    """Reward-model scores of (question, response) chats, and the forward FLOPs of one pass per response. A
    response too long for the reward model's context is cut at its end (it is then an unfinished answer
    anyway). Identical (question, response) pairs are scored once: N samples of a confident model repeat
    themselves (the FLOPs still count every response, as a verifier without that cache would spend)."""
    cfg = model.backbone.cfg
    keys = list(zip(questions, responses))
    distinct = list(dict.fromkeys(keys))
    found = dict(zip(distinct, model.score(tok, [q for q, _ in distinct], [r for _, r in distinct], truncate=True)))
    scores = [found[k] for k in keys]
    lengths = [min(len(pair_ids(tok, {"prompt": q}, r)), cfg.max_seq_len) for q, r in zip(questions, responses)]
    return scores, float(sum(n * forward_flops_per_token(cfg, max(1, n // 2)) for n in lengths))


def labelled_pairs(questions: list[str], samples: list[list[str]], correct: list[list[bool]],
                   per_problem: int = 2) -> list[dict[str, str]]:
    """Preference pairs (right over wrong) from graded samples: up to `per_problem` per problem, each
    sample used at most once, distinct texts only. Problems with no right or no wrong sample give none."""
    pairs = []
    for q, texts, ok in zip(questions, samples, correct):
        right = list(dict.fromkeys(t for t, c in zip(texts, ok) if c and t.strip()))
        wrong = list(dict.fromkeys(t for t, c in zip(texts, ok) if not c and t.strip()))
        for good, bad in list(zip(right, wrong))[:per_problem]:
            pairs.append({"prompt": q, "chosen": good, "rejected": bad})
    return pairs


@dataclass
class VerifierConfig:
    model: str = "runs/quickstart/arith/checkpoint"
    """The generator whose samples are graded (a chat model); the verifier starts from its weights."""
    task: str = "world-arith"
    """Training problems: 'world-arith' or 'world-qa' (their training split) or a JSONL file."""
    world: str = "runs/quickstart/world"
    """World directory for the world tasks."""
    problems: int = 600
    """Training problems to sample (the first ones of the split; each gives at most pairs_per_problem pairs, and
    none when all its samples agree in being right or wrong)."""
    samples: int = 4
    """Samples per training problem."""
    temperature: float = 0.7
    """Sampling temperature: best the one best-of-N samples at, so the wrong solutions the verifier learns
    from look like the ones it will have to reject."""
    max_tokens: int = 160
    """Longest sampled solution."""
    pairs_per_problem: int = 2
    """Most (right, wrong) pairs taken from one problem."""
    logprob_feature: bool = True
    """The reward model also reads the solver's own mean log-probability of the solution (see `lmlab rm`)."""
    out: str = "runs/verifier"
    """Run directory: pairs.jsonl, and the reward model's checkpoint/, metrics.jsonl, summary.json."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    seed: int = 0
    """Sampling seed."""
    train: PostTrainConfig = field(default_factory=lambda: PostTrainConfig(steps=150, lr=1e-4, min_lr=1e-5))
    """Reward-model training (batch_size counts pairs)."""


@locked_run
def train_verifier(cfg: VerifierConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    task = load_task(cfg.task, cfg.world, cfg.problems, split="train")
    gen = LocalGenerator(cfg.model, chat=True, device=cfg.device)
    got = gen.generate(task.prompts(True), Request(n=cfg.samples, temperature=cfg.temperature,
                                                   max_tokens=cfg.max_tokens, seed=cfg.seed))
    texts = [[s.text for s in row] for row in got.samples]
    correct = [[task.correct(i, task.answer_of(t)) for t in row] for i, row in enumerate(texts)]
    # A sample cut off at the context's end is wrong, but with its end of turn it would not fit the reward
    # model's context: leave such samples out of the pairs.
    ctx, tok = gen.engine.cfg.max_seq_len, gen.engine.tok
    fits = [[len(pair_ids(tok, {"prompt": q}, t)) <= ctx for t in row] for q, row in zip(task.questions, texts)]
    pairs = labelled_pairs(task.questions, [[t for t, f in zip(row, fr) if f] for row, fr in zip(texts, fits)],
                           [[c for c, f in zip(row, fr) if f] for row, fr in zip(correct, fits)], cfg.pairs_per_problem)
    share = sum(map(sum, correct)) / max(1, sum(map(len, correct)))
    if len(pairs) < 10:
        raise LmlabError(f"only {len(pairs)} (right, wrong) pairs from {len(texts)} problems (sample accuracy "
                         f"{share:.0%}); raise problems, samples or temperature")
    out = Path(cfg.out)
    write_jsonl(out / "pairs.jsonl", pairs)
    rsum = train_rm(RMConfig(init=cfg.model, data=str(out / "pairs.jsonl"), out=str(out),
                             logprob_feature=cfg.logprob_feature,
                             train=replace(cfg.train, device=cfg.device)))
    summary = {"problems": len(texts), "n_samples": sum(map(len, texts)), "sample_accuracy": share,
               "pairs": len(pairs), "sampling_s": round(got.wall_s, 2), "sampling_flops": got.flops,
               "train_accuracy": rsum["train_accuracy"], "heldout_accuracy": rsum["heldout_accuracy"],
               "train_flops": rsum["train_flops"], "checkpoint": rsum["checkpoint"],
               "wall_s": round(time.perf_counter() - t0, 2)}
    return summary


def format_verifier(s: dict[str, Any]) -> str:
    """What the verifier learnt from: samples, how many were right, pairs; and how well it ranks held-out pairs."""
    return (f"verifier: {s['n_samples']} samples on {s['problems']} training problems ({s['sample_accuracy']:.0%} "
            f"right), {s['pairs']} pairs; pairwise accuracy held out {s['heldout_accuracy']:.1%}; "
            f"checkpoint {s['checkpoint']}\n")
