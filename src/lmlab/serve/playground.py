"""What the playground and `echo` ask of the model beyond generation: one distribution, a prompt's logprobs."""

from __future__ import annotations

from typing import Any

import torch

from lmlab.infer.sampling import SamplingParams, analytic_distribution, top_logprobs
from lmlab.model.logprobs import token_logprobs


@torch.no_grad()
def next_token_view(engine: Any, req: Any) -> dict[str, Any]:
    """The next token's distribution at each stage of the sampling pipeline, for the tokens the model
    finds most likely: the model's own, after temperature, after top-k, after top-p, after min-p.

    Each stage is the exact distribution (`analytic_distribution`) with the controls up to it switched on,
    so the last stage is the one a sample is drawn from."""
    logits = engine.next_token_logits(req.prompt)
    t = req.temperature
    stages = [("model", SamplingParams()),
              (f"temperature {t:g}", SamplingParams(temperature=t)),
              (f"top-k {req.top_k or 'off'}", SamplingParams(temperature=t, top_k=req.top_k)),
              (f"top-p {req.top_p:g}", SamplingParams(temperature=t, top_k=req.top_k, top_p=req.top_p)),
              (f"min-p {req.min_p:g}", SamplingParams(temperature=t, top_k=req.top_k, top_p=req.top_p,
                                                      min_p=req.min_p))]
    dists = [(name, analytic_distribution(logits, sp)) for name, sp in stages]
    top = torch.argsort(dists[0][1], descending=True, stable=True)[: req.show].tolist()
    out = []
    for name, d in dists:
        p = d[d > 0]
        out.append({"name": name, "probs": [float(d[i]) for i in top], "kept": int(p.numel()),
                    "entropy": float(-(p * p.log()).sum())})
    return {"candidates": [{"token_id": i, "token": engine.tok.decode([i])} for i in top], "stages": out}


@torch.no_grad()
def prompt_logprobs(engine: Any, ids: list[int], k: int) -> tuple[list[float], list[dict[int, float]]]:
    """Log-probability of each prompt token after the first, and (k > 0) the top-k alternatives at each."""
    if len(ids) < 2:
        return [], []
    x = torch.tensor([ids], device=engine.device)
    logits = engine.model(x)[0, :-1].float()
    lps = token_logprobs(logits, x[0, 1:]).tolist()
    tops: list[dict[int, float]] = []
    if k:
        vals, idx = top_logprobs(logits, k)
        tops = [{int(a): float(b) for a, b in zip(i, v)} for i, v in zip(idx.tolist(), vals.tolist())]
        for d, t, lp in zip(tops, ids[1:], lps):
            d.setdefault(t, lp)
    return lps, tops
