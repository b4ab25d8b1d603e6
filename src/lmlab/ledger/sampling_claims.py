"""Claims about sampling controls, tested on a trained model's next-token distributions.

Temperature and top-k/top-p are usually explained with one hand-drawn
distribution. Here each claim is measured over many prompts (the quickstart
world's questions, where the model is sometimes sure and sometimes not), with
the pipeline lmlab's engine samples from (`analytic_distribution`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from lmlab.evals.binary import wilson
from lmlab.evals.bootstrap import bootstrap_interval
from lmlab.figures import pyplot, save_png
from lmlab.infer.sampling import SamplingParams, analytic_distribution, entropy, nucleus_size
from lmlab.ledger.claims import Claim, Row, plot_path

TEMPERATURES = (0.25, 0.5, 1.0, 2.0)
TOP_KS = (1, 5, 20)
TOP_P = 0.9


def _share(k: int, n: int, unit: str, holds: bool, **kw: Any) -> Row:
    lo, hi = wilson(k, n)
    return Row(value=k / n, low=lo, high=hi, unit=unit, verdict="holds" if holds else "does not hold",
               interval=f"Wilson 95% over {n} prompts", **kw)


def _boxes(ax, data: list, labels: list[str]) -> None:
    """Box plots with their labels (matplotlib renamed boxplot's `labels` in 3.9: set the ticks instead)."""
    ax.boxplot(data)
    ax.set_xticks(range(1, len(labels) + 1))
    ax.set_xticklabels(labels)


def temperature_entropy(ctx: Any) -> Row:
    logits, source = ctx.next_token_logits()
    H = torch.stack([entropy(logits / t) for t in TEMPERATURES])  # (T, prompts)
    # Never falling (not strictly rising): a flat distribution, or one already certain, keeps its entropy.
    rising = int((H[1:] >= H[:-1] - 1e-6).all(dim=0).sum())
    n = H.shape[1]
    path, link = plot_path(ctx, "temperature-entropy")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(TEMPERATURES, H.numpy(), color="tab:blue", alpha=0.08)
    ax.plot(TEMPERATURES, H.mean(1).numpy(), color="black", lw=2, label="mean over prompts")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("temperature")
    ax.set_ylabel("next-token entropy (nats)")
    ax.legend()
    save_png(fig, path)
    return _share(rising, n, "share of prompts whose entropy never falls as T rises", rising == n,
                  measured=f"next-token entropy at T = {', '.join(map(str, TEMPERATURES))} on {source}",
                  plot=link, details={"mean_entropy": [round(float(h), 4) for h in H.mean(1)]})


def temperature_zero_is_greedy(ctx: Any) -> Row:
    logits, source = ctx.next_token_logits()
    t = 0.02
    p = torch.softmax(logits.double() / t, dim=-1)
    top = logits.argmax(-1)
    mass = p[torch.arange(len(p)), top].numpy()  # probability of the argmax token at T = 0.02
    lo, hi = bootstrap_interval(mass, np.mean, seed=ctx.seed)
    path, link = plot_path(ctx, "temperature-zero-is-greedy")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.hist(mass, bins=np.linspace(0, 1, 41), color="tab:green")
    ax.set_xlabel(f"probability of the argmax token at T = {t}")
    ax.set_ylabel("prompts")
    save_png(fig, path)
    value = float(mass.mean())
    return Row(value=value, low=min(lo, value), high=max(hi, value), unit="mean probability of the argmax at T=0.02",
               verdict="holds" if lo > 0.95 else "holds only",
               condition="" if lo > 0.95 else "when no two tokens are within a few percent of each other's logit",
               measured=f"the argmax's probability after dividing the logits by {t}, on {source}",
               interval=f"bootstrap over prompts (2000 resamples, seed {ctx.seed})", plot=link,
               details={"prompts_below_0.99": int((mass < 0.99).sum())})


def smaller_k_is_more_predictable(ctx: Any) -> Row:
    logits, source = ctx.next_token_logits()
    V = logits.shape[-1]
    ks = [k for k in sorted(TOP_KS) if k < V] + [V]
    Hs = []
    for k in ks:  # ascending
        d = torch.stack([analytic_distribution(row, SamplingParams(top_k=k)) for row in logits])
        Hs.append(-(torch.where(d > 0, d * d.log(), torch.zeros_like(d))).sum(-1))
    H = torch.stack(Hs)  # (k, prompts)
    falling = int((H[1:] >= H[:-1] - 1e-12).all(dim=0).sum())  # entropy grows with k: shrinks as k does
    n = H.shape[1]
    path, link = plot_path(ctx, "smaller-k-more-predictable")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    _boxes(ax, [h.numpy() for h in H], [str(k) if k != V else f"all ({V})" for k in ks])
    ax.set_xlabel("top-k")
    ax.set_ylabel("entropy of the sampled distribution (nats)")
    save_png(fig, path)
    return _share(falling, n, "share of prompts whose entropy never rises as k shrinks", falling == n,
                  measured=f"entropy of the top-k distribution at k = {', '.join(map(str, ks))} on {source}",
                  plot=link, details={"mean_entropy_by_k": {str(k): round(float(h.mean()), 4) for k, h in zip(ks, H)}})


def top_p_adapts(ctx: Any) -> Row:
    logits, source = ctx.next_token_logits()
    sizes = nucleus_size(logits, TOP_P).numpy().astype(float)

    def spread(x: np.ndarray) -> float:
        lo, hi = np.percentile(x, [10, 90])
        return float(hi / max(lo, 1.0))

    value = spread(sizes)
    lo, hi = bootstrap_interval(sizes, spread, seed=ctx.seed)
    path, link = plot_path(ctx, "top-p-adapts")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.hist(sizes, bins=min(40, int(sizes.max())), color="tab:purple")
    ax.set_xlabel(f"tokens kept by top-p = {TOP_P}")
    ax.set_ylabel("prompts")
    save_png(fig, path)
    return Row(value=value, low=min(lo, value), high=max(hi, value), unit="90th / 10th percentile of nucleus size",
               verdict="holds" if lo > 2 else "does not hold",
               measured=f"the number of tokens top-p = {TOP_P} keeps, per prompt, on {source}",
               interval=f"bootstrap over prompts (2000 resamples, seed {ctx.seed})", plot=link,
               details={"median": float(np.median(sizes)), "min": float(sizes.min()), "max": float(sizes.max())})


def top_k_saves_softmax_cost(ctx: Any) -> Row:
    """A full softmax against top-k then a softmax over the k, timed on random logits on this CPU."""
    vocabs = (1024, 32768, 262144) if ctx.size == "full" else (1024, 8192)
    batch, k, repeats = 64, 50, (30 if ctx.size == "full" else 5)
    gen = torch.Generator().manual_seed(ctx.seed)
    ratios: dict[int, list[float]] = {}
    for V in vocabs:
        x = torch.randn(batch, V, generator=gen)
        ratios[V] = []
        for _ in range(repeats):  # alternate the two, so drift in the machine hits both alike
            t0 = time.perf_counter()
            torch.softmax(x, dim=-1)
            full = time.perf_counter() - t0
            t0 = time.perf_counter()
            vals, _ = torch.topk(x, k, dim=-1)
            torch.softmax(vals, dim=-1)
            ratios[V].append((time.perf_counter() - t0) / full)
    typical = vocabs[len(vocabs) // 2]  # 32,768 at full size: Llama 2's and Mistral's vocabulary
    medians = {V: float(np.median(r)) for V, r in ratios.items()}
    value = medians[typical]
    lo, hi = bootstrap_interval(np.array(ratios[typical]), np.median, seed=ctx.seed)
    faster = [V for V in vocabs if medians[V] < 1]
    verdict = "holds" if len(faster) == len(vocabs) else "does not hold" if not faster else "holds only"
    condition = f"for vocabularies of {min(faster):,} tokens and more (batch {batch}, k = {k})" if faster else ""
    path, link = plot_path(ctx, "top-k-softmax-cost")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    _boxes(ax, [ratios[V] for V in vocabs], [f"{V:,}" for V in vocabs])
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set_xlabel("vocabulary")
    ax.set_ylabel("top-k + softmax time / full softmax")
    save_png(fig, path)
    return Row(value=value, low=min(lo, value), high=max(hi, value),
               unit=f"x the full softmax's time, vocabulary {typical:,}", verdict=verdict, condition=condition,
               measured=f"time of torch.topk(k={k}) + softmax over the k against a full softmax, batch {batch}, "
                        f"vocabularies {', '.join(f'{V:,}' for V in vocabs)}, {repeats} alternating repeats on "
                        f"{ctx.cpu}",
               interval=f"bootstrap of the median over repeats (seed {ctx.seed})", plot=link,
               details={str(V): round(m, 3) for V, m in medians.items()})


CLAIMS = [
    Claim("temperature-entropy", "Lowering the temperature lowers the entropy of the next-token distribution.",
          "Hinton et al. 2015 (softmax temperature); every sampling tutorial",
          "Entropy of softmax(logits / T) at four temperatures for every prompt.", temperature_entropy),
    Claim("temperature-zero-is-greedy", "As the temperature goes to 0, sampling becomes greedy decoding.",
          "Sampling tutorials; OpenAI's API reference (temperature 0: 'more deterministic')",
          "The probability the argmax token gets at T = 0.02, over prompts.", temperature_zero_is_greedy),
    Claim("smaller-k-more-predictable", "A smaller top-k makes the next token more predictable.",
          "Fan et al. 2018 (top-k sampling); sampling tutorials",
          "Entropy of the top-k distribution as k shrinks, for every prompt.", smaller_k_is_more_predictable),
    Claim("top-p-adapts", "Top-p adapts the candidate set to the input: few tokens where the model is sure, "
          "many where it is not.", "Holtzman et al. 2020, 'The Curious Case of Neural Text Degeneration'",
          "How many tokens top-p = 0.9 keeps, across prompts: the spread of that number.", top_p_adapts),
    Claim("top-k-saves-softmax", "Top-k saves the cost of a full softmax over the vocabulary.",
          "A common explanation of top-k in blog posts and courses",
          "Time a full softmax against top-k then a softmax over the k, vocabularies up to 256k.",
          top_k_saves_softmax_cost),
]
