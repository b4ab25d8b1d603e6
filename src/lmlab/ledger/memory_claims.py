"""Claims about memory: the serving rule of thumb (params x bytes x 1.2) and "training takes 3-4x inference".

Both are tested on real model shapes, lmlab's presets gpt-tiny (0.9M parameters), llama-mini (4.9M:
RMSNorm, RoPE, SwiGLU, grouped-query attention, untied head) and gpt2-small (124M, GPT-2's published
shape), built as lmlab's `Transformer` and measured, never predicted:

  inference  weights + KV cache resident after a prefill of batch x context tokens + the prefill's own
             peak (`lmlab.train.measure.prefill_memory`), with fp32 and with bf16 weights (and cache);
  training   the peak of a training step: causal loss, backward, fused AdamW with its fp32 states, at
             the step when those states exist (`training_step_peak`), fp32 weights. Its persistent 16
             bytes per parameter (weights, gradients, m, v) are those of bf16 mixed precision too (bf16
             weights and gradients, fp32 master weights, m and v), whose activations would be half as big.

Memory comes from the profiler's allocation records, in a fresh process (the note in
`lmlab.train.measure`): one subprocess measures the whole grid, and both claims share it through
`ctx.memo`. The measurements are deterministic (tensor bytes, not timings), so there are no seeds to
repeat; an interval is the range over the models (and precisions) measured, and says so.

The grid: batch 1 to 64 at 1/8, 1/2 and all of each model's maximum context, cut where params x batch
x context passes 5e11 (gpt2-small at 4 x 1024 tokens, about 6 s of an fp32 prefill on one core);
training at batch 1, 4 and 16 at 1/8 and all of the context, cut at 1.3e11 (gpt2-small at 1 x 1024,
about 17 s). About 65 s of CPU on one core (3.5 minutes of wall time measured on a 2-core machine
that others were loading to 7), inside the four minutes these two claims may take. At tiny size, two
2-layer, 32-wide models of context 32: seconds, every code path.

Verdicts, from rules in the code (`verdict`, `largest_within`): a ratio is 'about' the claim within
RULE_BAND / TRAIN_BAND; 'holds' if every setting measured is, 'holds only' if at least batch 1 at the
shortest context is for every model (the condition then names, per model, the largest batch x context
still inside), else 'does not hold'.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median
from typing import Any

import lmlab
from lmlab.figures import pyplot, save_png
from lmlab.ledger.claims import Claim, Row, plot_path
from lmlab.model.config import ModelConfig, preset
from lmlab.plan.memory import kv_bytes_per_token, rule_of_thumb_gb
from lmlab.plan.params import param_counts
from lmlab.plan.settings import BITS

FULL_MODELS = ("gpt-tiny", "llama-mini", "gpt2-small")
TINY = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
BATCHES = {"full": (1, 2, 4, 8, 16, 32, 64), "tiny": (1, 4, 16)}
TRAIN_BATCHES = {"full": (1, 4, 16), "tiny": (1, 4)}
PREFILL_CAP, TRAIN_CAP = 5e11, 1.3e11
"""Largest params x batch x context measured (prefill, training step): what keeps gpt2-small in budget."""
RULE_BAND = (0.8, 1.2)
"""Measured / rule counted as 'about' the rule: within 20% of it, the rule's own allowance."""
TRAIN_BAND = (3 / 1.2, 4 * 1.2)
"""Training / inference counted as 'about 3-4x': 2.5 to 4.8, the same 20% slack on either end."""
PRECISIONS = ("fp32", "bf16")


def _models(size: str) -> dict[str, ModelConfig]:
    if size == "full":
        return {name: preset(name) for name in FULL_MODELS}
    return {"gpt-tiny (tiny)": preset("gpt-tiny", **TINY),
            "llama-tiny (tiny)": preset("llama-tiny", **TINY, n_kv_heads=2)}


def _contexts(cfg: ModelConfig) -> list[int]:
    top = cfg.max_seq_len
    return sorted({max(top // 8, 1), max(top // 2, 1), top})


def _jobs(cfg: ModelConfig, size: str) -> dict[str, list[list[int]]]:
    """The (batch, context) settings measured for one model: every training setting is also a prefill one,
    so the two can be divided."""
    n = param_counts(cfg)["total"]
    prefill = [[b, c] for c in _contexts(cfg) for b in BATCHES[size] if n * b * c <= PREFILL_CAP]
    train = [[b, c] for c in (_contexts(cfg)[0], cfg.max_seq_len) for b in TRAIN_BATCHES[size]
             if n * b * c <= TRAIN_CAP]
    return {"prefill": prefill, "train": train}


def _prefill_peak(model: Any, batch: int, context: int) -> int:
    """A prefill's peak bytes, for models under 10M parameters the smaller of two runs: on a loaded machine
    the profiler was seen to record up to 0.7 MB of extra allocations in some of the first bf16 prefills of
    a process, never twice in a row; 20% of the 1M-parameter model's weights, nothing for gpt2-small's."""
    from lmlab.train.measure import prefill_memory

    runs = 2 if sum(p.numel() for p in model.parameters()) < 10_000_000 else 1
    return min(prefill_memory(model, batch, context)["peak_bytes"] for _ in range(runs))


def measure_in_child() -> None:
    """The subprocess: measure every model's settings (argv[1], JSON) and print one JSON line."""
    import torch

    from lmlab.model.transformer import Transformer
    from lmlab.train.measure import training_step_peak

    spec = json.loads(sys.argv[1])
    out = {}
    for name, job in spec["models"].items():
        torch.manual_seed(spec["seed"])
        model = Transformer(ModelConfig.from_dict(job["cfg"]))
        res = {"params": model.count_params()["total"], "train": [], "prefill": {}}
        res["prefill"]["fp32"] = [[b, c, _prefill_peak(model, b, c)] for b, c in job["prefill"]]
        res["train"] = [[b, c, training_step_peak(model, b, c)["peak_bytes"]] for b, c in job["train"]]
        model.to(torch.bfloat16)  # weights, buffers and (following them) the KV cache in bf16
        res["prefill"]["bf16"] = [[b, c, _prefill_peak(model, b, c)] for b, c in job["prefill"]]
        out[name] = res
        del model
    print(json.dumps(out))


def _measure(ctx: Any) -> dict[str, Any]:
    """Both claims' measurements, made once per ledger run, in a fresh Python process."""
    if "memory" not in ctx.memo:
        models = _models(ctx.size)
        spec = {"seed": ctx.seed, "models": {k: {"cfg": m.to_dict(), **_jobs(m, ctx.size)} for k, m in models.items()}}
        src = str(Path(lmlab.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
        code = "from lmlab.ledger.memory_claims import measure_in_child; measure_in_child()"
        run = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                             env=env, timeout=1800)
        if run.returncode != 0:
            raise RuntimeError(f"memory measurement failed:\n{run.stderr[-3000:]}")
        ctx.memo["memory"] = {"models": models, "data": json.loads(run.stdout.strip().splitlines()[-1])}
    return ctx.memo["memory"]


def rule_bytes(params: int, precision: str) -> float:
    """The rule of thumb in bytes: params in billions x bits/8 x 1.2 GB (GB = 1e9 bytes)."""
    return rule_of_thumb_gb(params, BITS[precision]) * 1e9


def largest_within(points: list[tuple[int, float]], band: tuple[float, float]) -> int | None:
    """The largest batch x context T such that every measured setting of at most T tokens has its ratio in
    `band` (None when even the smallest does not): where a rule stops holding as the workload grows."""
    best = None
    for tokens in sorted({t for t, _ in points}):
        if not all(band[0] <= r <= band[1] for t, r in points if t == tokens):
            break
        best = tokens
    return best


def verdict(smallest: list[float], everywhere: list[float], band: tuple[float, float]) -> str:
    """'holds' when every measured ratio is in `band`; 'holds only' when at least the smallest workload of
    every model (batch 1, the shortest context) is, so there is a regime where the rule works; else
    'does not hold'."""
    def inside(xs: list[float]) -> bool:
        return all(band[0] <= x <= band[1] for x in xs)
    if inside(everywhere):
        return "holds"
    return "holds only" if inside(smallest) else "does not hold"


def _inference_ratios(m: dict[str, Any]) -> dict[str, dict[str, list[list[float]]]]:
    """measured / rule for every model, precision and setting: [batch, context, ratio] rows."""
    out: dict[str, dict[str, list[list[float]]]] = {}
    for name, res in m["data"].items():
        out[name] = {p: [[b, c, peak / rule_bytes(res["params"], p)] for b, c, peak in res["prefill"][p]]
                     for p in PRECISIONS}
    return out


def _at(rows: list[list[float]], batch: int, context: int) -> float:
    return next(r for b, c, r in rows if b == batch and c == context)


def _smallest(rows: list[list[float]]) -> float:
    """The ratio at batch 1 and the shortest context measured: the lightest workload."""
    return _at(rows, 1, min(c for _, c, _ in rows))


def _limits(series: dict[str, list[tuple[int, float]]], band: tuple[float, float]) -> dict[str, dict[str, Any]]:
    """Per model: the largest batch x context still in `band`, and whether that is every setting measured."""
    return {n: {"tokens": largest_within(pts, band), "all_measured": all(band[0] <= r <= band[1] for _, r in pts)}
            for n, pts in series.items()}


def _limits_text(limits: dict[str, dict[str, Any]]) -> str:
    def one(n: str, x: dict[str, Any]) -> str:
        if x["tokens"] is None:
            return f"none for {n}"
        return f"{x['tokens']:,} tokens" + (" (all measured)" if x["all_measured"] else "") + f" for {n}"
    return ", ".join(one(n, x) for n, x in limits.items())


def _plot_lines(ax: Any, series: dict[str, dict[str, list[list[float]]]], styles: dict[str, str]) -> None:
    """One line per model and precision, value against batch x context."""
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for color, (name, by) in zip(colors, series.items()):
        for key, rows in by.items():
            pts = sorted((b * c, r) for b, c, r in rows)
            ax.plot([t for t, _ in pts], [r for _, r in pts], styles[key], color=color, ms=3,
                    label=f"{name}, {key}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch x context (tokens)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))


def _interval_text(n_models: int, what: str) -> str:
    return (f"range (min..max) over {what} of {n_models} models, not a statistical interval: memory measured "
            "as tensor bytes is deterministic, so repeats would give the same numbers")


def _rounded(ratios: dict[str, dict[str, list[list[float]]]]) -> dict[str, dict[str, list[list[float]]]]:
    return {n: {k: [[b, c, round(r, 3)] for b, c, r in rows] for k, rows in by.items()} for n, by in ratios.items()}


def _kv_share(cfg: ModelConfig, params: int, tokens: int | None) -> float | None:
    """The KV cache of `tokens` tokens as a share of the weights (the same at any precision)."""
    return None if tokens is None else round(tokens * kv_bytes_per_token(cfg, "fp32") / (4 * params), 3)


def _plot_inference(ctx: Any, ratios: dict[str, dict[str, list[list[float]]]]) -> str:
    path, link = plot_path(ctx, "inference-memory-rule")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=110)
    _plot_lines(ax, ratios, {"fp32": "o-", "bf16": "s--"})
    for y in (1.0, RULE_BAND[1]):
        ax.axhline(y, color="black", lw=0.8, ls=":" if y == 1.0 else "-")
    ax.set_yscale("log")
    ax.set_ylabel("measured / (params x bytes x 1.2)")
    save_png(fig, path)
    return link


def inference_memory_rule(ctx: Any) -> Row:
    m = _measure(ctx)
    ratios, models, params = _inference_ratios(m), m["models"], {n: r["params"] for n, r in m["data"].items()}
    full = {f"{n} {p}": _at(ratios[n][p], 1, models[n].max_seq_len) for n in ratios for p in PRECISIONS}
    everywhere = [r for by in ratios.values() for rows in by.values() for _, _, r in rows]
    smallest = [_smallest(rows) for by in ratios.values() for rows in by.values()]
    limits = _limits({n: [(b * c, r) for p in PRECISIONS for b, c, r in ratios[n][p]] for n in ratios}, RULE_BAND)
    shares = {n: _kv_share(models[n], params[n], x["tokens"]) for n, x in limits.items()}
    v = verdict(smallest, everywhere, RULE_BAND)
    known = [s for s in shares.values() if s is not None]
    kv = f" (a KV cache of {min(known):.0%}-{max(known):.0%} of the weights)" if known else ""
    condition = (f"at small batch x context: within 20% of the rule up to batch x context of {_limits_text(limits)}"
                 f"{kv}; beyond, up to {max(everywhere):.1f}x the rule") if v == "holds only" else ""
    vals = list(full.values())
    return Row(value=median(vals), low=min(vals), high=max(vals),
               unit="measured / rule-of-thumb memory, batch 1, full context", verdict=v, condition=condition,
               plot=_plot_inference(ctx, ratios),
               measured=(f"peak bytes (weights + KV cache + the prefill's working memory, profiler; under 10M "
                         f"parameters the smaller of 2 runs) of prefills on {', '.join(models)} in fp32 and bf16, "
                         f"batch 1 to {max(BATCHES[ctx.size])} and 1/8 to all of each model's context, over the "
                         "rule; the value at batch 1 and the full context"
                         + (" (tiny models)" if ctx.size == "tiny" else "")),
               interval=_interval_text(len(models), "2 precisions"),
               details={"band": list(RULE_BAND), "at_batch_1_full_context": {k: round(x, 3) for k, x in full.items()},
                        "at_batch_1_shortest_context_range": [round(min(smallest), 3), round(max(smallest), 3)],
                        "largest_tokens_within_band": limits, "kv_cache_share_of_weights_there": shares,
                        "max_ratio": round(max(everywhere), 3), "params": params, "ratios": _rounded(ratios)})


def _training_ratios(m: dict[str, Any]) -> dict[str, dict[str, list[list[float]]]]:
    """Training peak / inference peak at the same batch and context, against fp32 and bf16 serving."""
    out: dict[str, dict[str, list[list[float]]]] = {}
    for name, res in m["data"].items():
        out[name] = {f"vs {p} inference": [[b, c, peak / _at(res["prefill"][p], b, c)] for b, c, peak in res["train"]]
                     for p in PRECISIONS}
    return out


def _plot_training(ctx: Any, ratios: dict[str, dict[str, list[list[float]]]]) -> str:
    path, link = plot_path(ctx, "training-memory-3-4x")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=110)
    ax.axhspan(3, 4, color="grey", alpha=0.2, label="3-4x")
    _plot_lines(ax, ratios, {"vs fp32 inference": "o-", "vs bf16 inference": "s--"})
    ax.set_ylabel("training-step peak / inference peak")
    save_png(fig, path)
    return link


def training_memory_3_4x(ctx: Any) -> Row:
    m = _measure(ctx)
    ratios, models = _training_ratios(m), m["models"]
    full = {n: _at(ratios[n]["vs fp32 inference"], 1, models[n].max_seq_len) for n in ratios}
    everywhere = [r for by in ratios.values() for rows in by.values() for _, _, r in rows]
    smallest = [_smallest(by["vs fp32 inference"]) for by in ratios.values()]
    limits = _limits({n: [(b * c, r) for b, c, r in by["vs fp32 inference"]] for n, by in ratios.items()},
                     TRAIN_BAND)
    bf16 = [r for by in ratios.values() for _, _, r in by["vs bf16 inference"]]
    v = verdict(smallest, everywhere, TRAIN_BAND)
    condition = (f"against fp32 serving at small batch x context (2.5-4.8x up to {_limits_text(limits)}); "
                 f"against bf16 serving it is {min(bf16):.1f}-{max(bf16):.1f}x, and it grows with batch x context"
                 ) if v == "holds only" else ""
    vals = list(full.values())
    return Row(value=median(vals), low=min(vals), high=max(vals),
               unit="training / inference memory, fp32, batch 1, full context", verdict=v, condition=condition,
               plot=_plot_training(ctx, ratios),
               measured=(f"peak bytes of an fp32 training step (loss, backward, AdamW states) over a prefill's "
                         f"(weights + KV cache + working memory) at the same batch x context, on "
                         f"{', '.join(models)}, against fp32 and bf16 serving, batch 1 to "
                         f"{max(TRAIN_BATCHES[ctx.size])}" + (" (tiny models)" if ctx.size == "tiny" else "")),
               interval=_interval_text(len(models), "the batch-1 full-context ratios"),
               details={"band": [round(x, 3) for x in TRAIN_BAND],
                        "at_batch_1_full_context": {k: round(x, 3) for k, x in full.items()},
                        "largest_tokens_within_band_vs_fp32": limits,
                        "vs_bf16_range": [round(min(bf16), 3), round(max(bf16), 3)],
                        "training_peak_mb": {n: [[b, c, round(p / 1e6, 2)] for b, c, p in r["train"]]
                                             for n, r in m["data"].items()},
                        "ratios": _rounded(ratios)})


CLAIMS = [
    Claim("inference-memory-rule", "Serving a model takes about params_B x bits/8 x 1.2 GB of memory.",
          "the common rule of thumb (e.g. EleutherAI's Transformer Math 101 and Hugging Face's model-memory "
          "guides: weights plus about 20% for KV cache, activations and buffers)",
          "Peak memory of real prefills (weights, KV cache and working memory, profiler-measured) on three "
          "model shapes in fp32 and bf16 over the rule, from batch 1 up to batch x context where the KV "
          "cache outgrows the 20%.", inference_memory_rule),
    Claim("training-memory-3-4x", "Training needs about 3-4x the memory of inference.",
          "the common rule (e.g. EleutherAI's Transformer Math 101: 16-20 bytes/param for mixed-precision "
          "Adam training against 2 bytes/param to serve in 16 bits)",
          "The measured peak of an AdamW training step over the measured peak of a prefill at the same batch "
          "and context, on three model shapes, against fp32 and bf16 serving.", training_memory_3_4x),
]
