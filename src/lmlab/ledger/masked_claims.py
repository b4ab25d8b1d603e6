"""Claims about causal and masked language models, measured on lmlab's own models.

One mask, one objective: a causal and a masked model are built from the same
`ModelConfig` through `PretrainConfig` (whose objective sets the attention
mask), so their parameters can be compared name by name, and the causal
weights run in the masked model. Given a causal mask explicitly, the masked
model is the causal one, logit for logit; under its own mask every position
changes - the last one too as soon as there are two layers, because its upper
layers read the earlier positions' states, which saw other context (only a
one-layer model keeps the last position's output). The objectives (next-token
loss on every position, BERT's corrupted 15%) come from `lmlab.train.objectives`.

Both sides of a blank: the quickstart trains its masked LM for only 500 steps
(a fifth of the causal model's tokens), and then its bidirectional probe finds
it recovers a few percent of held-out values, with or without the right-hand
context. Is that the claim failing, or an undertrained model? Here masked
models of the quickstart's size and recipe are trained on its token shards at
two lengths (the quickstart's 500 steps and 4x that; each a finished cosine
run, not a snapshot mid-schedule), 3 seeds each, and read by the probe
(`lmlab.evals.bidirectional.compare`) on every QA-test person's held-out
snippets, with the whole snippet visible and with it cut after the value.

Why these sizes: the masked model trains at ~38k tokens/s on the 2-core
machine, so 3 seeds x (500 + 2000) steps x 2,048 tokens (15.4M tokens) take
~400 s, and six probes of 600 snippets ~40 s: the module fits its 10 minutes.
A third length (1000 steps) would not. Runs are kept under the ledger's work
directory, so an interrupted ledger resumes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.config import from_dict, to_dict
from lmlab.data.world import load_world
from lmlab.evals.bidirectional import compare, snippets
from lmlab.evals.bootstrap import bootstrap_interval
from lmlab.figures import percent_axes, pyplot, save_png
from lmlab.infer.engine import Engine
from lmlab.ledger.claims import Claim, Row, plot_path
from lmlab.model.checkpoint import load_model
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.quickstart import QuickstartConfig
from lmlab.train.objectives import corrupt
from lmlab.train.trainer import PretrainConfig, TrainConfig, data_fingerprint, pretrain

ONE_MASK = "causal-vs-masked-one-mask"
BOTH_SIDES = "masked-uses-both-sides"
SEEDS = 3
LONGER = 4
"""The longer masked run: this many times the quickstart's masked steps (the brief of issue 4: 3-4x)."""
EXACT = 1e-6
"""Largest |logit difference| still called equal: fp32 rounding, never a different computation."""
READINGS = ("causal", "masked_right", "masked_left")
LABELS = {"causal": "causal, left only", "masked_right": "masked, both sides", "masked_left": "masked, left only"}


# --- one mask, one objective -------------------------------------------------------------------------------------

def _twin_configs(ctx: Any, n_layers: int | None = None) -> tuple[PretrainConfig, PretrainConfig]:
    """The quickstart's model config (full size) or a tiny one, under the causal and the masked objective."""
    base = QuickstartConfig().pretrain.model
    if ctx.size == "tiny":
        base = dataclasses.replace(base, vocab_size=96, d_model=32, n_layers=2, n_heads=2, max_seq_len=16)
    if n_layers is not None:
        base = dataclasses.replace(base, n_layers=n_layers)
    # PretrainConfig sets model.causal from the objective: give each its own copy of the one config.
    return (PretrainConfig(model=dataclasses.replace(base), objective="causal"),
            PretrainConfig(model=dataclasses.replace(base), objective="mlm"))


def _twins(ctx: Any, n_layers: int | None = None) -> tuple[Transformer, Transformer, list[str]]:
    """The two models, the masked one holding the causal one's weights, and the config fields that differ."""
    pc, pm = _twin_configs(ctx, n_layers)
    torch.manual_seed(ctx.seed)
    causal, masked = Transformer(pc.model).eval(), Transformer(pm.model).eval()
    masked.load_state_dict(causal.state_dict(), strict=True)  # strict: same names, same shapes, nothing left over
    a, b = dataclasses.asdict(pc.model), dataclasses.asdict(pm.model)
    return causal, masked, [k for k in a if a[k] != b[k]]


def _shared_fraction(causal: Transformer, masked: Transformer) -> tuple[float, int]:
    """Share of the parameters (by count) that have the same name and shape in both models, and the total."""
    c = {n: tuple(p.shape) for n, p in causal.named_parameters()}
    m = {n: tuple(p.shape) for n, p in masked.named_parameters()}
    shared = sum(int(np.prod(s)) for n, s in c.items() if m.get(n) == s)
    total = max(sum(int(np.prod(s)) for s in c.values()), sum(int(np.prod(s)) for s in m.values()))
    return shared / total, total


@torch.no_grad()
def _position_gaps(causal: Transformer, masked: Transformer, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Largest |logit difference| from the causal model at each position: the masked model open (its own
    mask) and under a lower-triangular mask (the causal one, given explicitly)."""
    T = x.shape[1]
    ref = causal(x)
    tril = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    gap = {"open": masked(x), "causal mask": masked(x, attn_mask=tril)}
    return {k: (v - ref).abs().amax(dim=(0, 2)).numpy() for k, v in gap.items()}


def _labelled_share(pm: PretrainConfig, x: torch.Tensor, seed: int) -> float:
    """Share of positions the masked objective puts a loss on (the causal one: every position)."""
    _, labels = corrupt(x, pm.mlm, mask_id=pm.model.vocab_size - 1, vocab_size=pm.model.vocab_size, seed=seed)
    return float((labels != -100).float().mean())


def one_mask_verdict(fraction: float, fields: list[str], masked_as_causal: float, earliest_gap: float) -> bool:
    """The claim holds when every parameter is shared, `causal` is the only config field that differs, the
    masked model under a causal mask is the causal model, and its own mask changes every earlier position."""
    return fraction == 1.0 and fields == ["causal"] and masked_as_causal <= EXACT and earliest_gap > EXACT


def causal_vs_masked_one_mask(ctx: Any) -> Row:
    causal, masked, fields = _twins(ctx)
    fraction, total = _shared_fraction(causal, masked)
    cfg = causal.cfg
    g = torch.Generator().manual_seed(ctx.seed)
    x = torch.randint(0, cfg.vocab_size, (4, cfg.max_seq_len), generator=g)
    gaps = _position_gaps(causal, masked, x)
    one_c, one_m, _ = _twins(ctx, n_layers=1)
    one = _position_gaps(one_c, one_m, x)
    exact, open_gap = float(gaps["causal mask"].max()), gaps["open"]
    holds = one_mask_verdict(fraction, fields, exact, float(open_gap[:-1].min()))
    share = _labelled_share(_twin_configs(ctx)[1], x, ctx.seed)
    link = _plot_gaps(ctx, gaps, one, cfg.n_layers)
    return Row(value=fraction, low=fraction, high=fraction, unit="share of parameters the two models share",
               verdict="holds" if holds else "does not hold",
               measured=(f"a causal and a masked model built from one ModelConfig ({cfg.n_layers} layers, width "
                         f"{cfg.d_model}, {total:,} parameters; {ctx.size} size): the configs differ in "
                         f"{', '.join(fields) or 'nothing'}; with the causal weights and a causal mask the masked "
                         f"model gives the causal logits (max |diff| {exact:.1e}); with its own mask every earlier "
                         f"position differs, and the last one matches only in a 1-layer model "
                         f"({float(one['open'][-1]):.1e}; {float(open_gap[-1]):.2f} in {cfg.n_layers} layers, whose "
                         f"upper layers read the earlier positions); the losses cover 100% vs {share:.0%} of "
                         "positions"),
               interval="none needed: exact parameter counts and one forward pass of 4 random windows "
                        f"(seed {ctx.seed})", plot=link,
               details={"config_fields_that_differ": fields, "parameters": total,
                        "max_abs_diff_masked_with_causal_mask": exact,
                        "max_abs_diff_open_by_position": [round(float(v), 5) for v in open_gap],
                        "last_position_diff_one_layer": float(one["open"][-1]),
                        "last_position_diff_full_depth": round(float(open_gap[-1]), 5),
                        "objective_causal": "causal_lm_loss (next token, every position)",
                        "objective_masked": "masked_lm_loss (original token at corrupted positions)",
                        "masked_labelled_share": round(share, 4)})


def _plot_gaps(ctx: Any, gaps: dict[str, np.ndarray], one: dict[str, np.ndarray], layers: int) -> str:
    path, link = plot_path(ctx, ONE_MASK)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
    pos = np.arange(len(gaps["open"]))
    ax.plot(pos, gaps["open"], color="tab:red", label=f"masked model, own mask ({layers} layers)")
    ax.plot(pos, one["open"], color="tab:orange", label="masked model, own mask (1 layer)")
    ax.plot(pos, gaps["causal mask"], color="tab:blue", lw=2, label="masked model, causal mask")
    ax.set_xlabel("position")
    ax.set_ylabel("max |logit - causal model's|")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_png(fig, path)
    return link


# --- both sides of a blank ---------------------------------------------------------------------------------------

def _masked_config(run: Path, out: Path, steps: int, seed: int) -> PretrainConfig:
    """The quickstart's masked LM stage at `steps`: the pretrained model's config and training config, with
    the quickstart's rule for a shorter masked run (a cosine over `steps`, warmup a tenth of them at most)."""
    meta = json.loads((run / "checkpoint" / "meta.json").read_text())
    model = ModelConfig.from_dict(json.loads((run / "checkpoint" / "config.json").read_text()))
    train = from_dict(TrainConfig, meta["train_config"], "the quickstart's train_config")
    train = dataclasses.replace(train, steps=steps, decay_steps=None, warmup_steps=min(train.warmup_steps, steps // 10),
                                seed=seed, progress=False)
    return PretrainConfig(data=str(run / "data"), tokenizer=str(run / "tokenizer.json"), out=str(out),
                          objective="mlm", model=model, train=train)


def _val_curve(out: Path) -> list[list[float]]:
    """(step, validation loss) at each of the run's evaluations."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [[r["step"], round(r["val_loss"], 4)] for r in rows if r.get("eval")]


def per_snippet(causal: Transformer, masked: Transformer, tok: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
    """compare()'s result, with each reading's per-snippet results as 1/0 (NaN: no value token to predict)."""
    res = compare(causal, masked, tok, items)
    for r in READINGS:
        res[r].pop("value_accuracy_by_attribute")
        res[r]["per_snippet"] = np.array([np.nan if ok is None else float(ok) for ok in res[r]["per_snippet"]])
    return res


def _train_and_probe(ctx: Any, run: Path, engine: Engine, items: list, steps: int, seed: int) -> dict[str, Any]:
    cfg = _masked_config(run, Path("."), steps, seed)
    # Named by what it was trained on and how: a rerun quickstart (new data) or recipe gets fresh runs.
    tag = hashlib.sha256(json.dumps([data_fingerprint(cfg.data), to_dict(cfg.model), to_dict(cfg.train)],
                                    sort_keys=True).encode()).hexdigest()[:10]
    out = ctx.workdir(BOTH_SIDES) / f"steps{steps}-seed{seed}-{tag}"
    summary = pretrain(dataclasses.replace(cfg, out=str(out)))  # a finished run is read back, not retrained
    res = per_snippet(engine.model, load_model(out / "checkpoint"), engine.tok, items)
    return {**res, "val_loss": summary["val_loss"], "train_tokens": summary["train_tokens"],
            "val_curve": _val_curve(out)}


def _pooled(runs: list[dict[str, Any]], reading: str, seed: int, minus: str | None = None) -> dict[str, float]:
    """Mean over snippets and seeds (of `reading`, or of `reading` minus `minus`), with a bootstrap over
    snippets that resamples a snippet's results under every seed together."""
    x = np.stack([r[reading]["per_snippet"] for r in runs], axis=1)  # (snippets, seeds)
    if minus is not None:
        x = x - np.stack([r[minus]["per_snippet"] for r in runs], axis=1)
    x = x[~np.isnan(x).any(axis=1)]
    lo, hi = bootstrap_interval(x, np.mean, seed=seed)
    m = float(x.mean())
    return {"mean": m, "low": min(lo, m), "high": max(hi, m)}


def learned_phrase(masked: float, causal: float) -> str:
    """How much of what the causal model recalls the masked one recovers (both sides), in words."""
    if masked > 0 and masked >= 0.5 * causal:
        return "learns most of the facts the causal model knows"
    if masked > 0 and masked >= 0.1 * causal:
        return "learns some of the facts"
    return "learns almost none of the facts"


def loss_trend(curve: list[list[float]], nats: float = 0.01) -> str:
    """Whether the validation loss still fell (by more than `nats`) over the run's last quarter."""
    last_step = curve[-1][0]
    before = [v for s, v in curve if s <= 0.75 * last_step]
    if not before:
        return "measured only at the end"
    return "still falling at the end" if before[-1] - curve[-1][1] > nats else "flat over the last quarter"


def _lengths(run: Path, size: str) -> tuple[int, ...]:
    base = json.loads((run / "mlm" / "checkpoint" / "meta.json").read_text())["step"]
    return (base, LONGER * base) if size == "full" else (max(2, base // 4), max(4, base // 2))


def _measure_both_sides(ctx: Any) -> dict[str, Any]:
    run = ctx.quickstart_run()
    engine = Engine.from_checkpoint(run / "checkpoint", device="cpu")
    people = 100 if ctx.size == "full" else 5  # every QA-test person of the quickstart's world
    items = snippets(load_world(run / "world"), "qa_test", people, seed=ctx.seed)
    results = {}
    for steps in _lengths(run, ctx.size):
        runs = [_train_and_probe(ctx, run, engine, items, steps, ctx.seed + i) for i in range(SEEDS)]
        results[steps] = {"runs": runs, **{r: _pooled(runs, r, ctx.seed) for r in READINGS},
                          "difference": _pooled(runs, "masked_right", ctx.seed, minus="masked_left")}
    causal_train = json.loads((run / "checkpoint" / "meta.json").read_text())["train_config"]
    return {"results": results, "snippets": len(items), "causal_steps": causal_train["steps"],
            "causal_train_tokens": _causal_tokens(run)}


def _causal_tokens(run: Path) -> int | None:
    summary = json.loads((run / "summary.json").read_text())
    return summary.get("pretrain", {}).get("train_tokens")


def masked_uses_both_sides(ctx: Any) -> Row:
    m = _measure_both_sides(ctx)
    diff = m["results"][max(m["results"])]["difference"]
    seeds = ", ".join(str(ctx.seed + i) for i in range(SEEDS))
    return Row(value=diff["mean"], low=diff["low"], high=diff["high"],
               unit="value accuracy, masked with both sides minus left only",
               verdict="holds" if diff["low"] > 0 else "does not hold", measured=_sentence(ctx, m),
               interval=(f"bootstrap over the {m['snippets']} snippets (2000 resamples, seed {ctx.seed}), each "
                         f"snippet's results under the training seeds {seeds} resampled together"),
               plot=_plot_both_sides(ctx, m), details=_details(m))


def _sentence(ctx: Any, m: dict[str, Any]) -> str:
    """What was measured, and whether the longer-trained masked model learns the facts at all."""
    res = m["results"]
    first, longest = min(res), max(res)
    top, early = res[longest], res[first]
    c, r, left = top["causal"]["mean"], top["masked_right"]["mean"], top["masked_left"]["mean"]
    tokens = ", ".join(f"{_token(top, k):.1%}" for k in ("masked_right", "masked_left", "causal"))
    return (f"the quickstart's bidirectional probe on {m['snippets']} held-out snippets, masked LMs of the "
            f"quickstart's size trained {first} and {longest} steps on its data, {SEEDS} seeds each ({ctx.size} "
            f"size): at {longest} steps the masked model recovers {r:.1%} of values with both sides and {left:.1%} "
            f"with the left only (at {first}: {early['masked_right']['mean']:.1%} and "
            f"{early['masked_left']['mean']:.1%}), so it {learned_phrase(r, c)} (the causal quickstart model, "
            f"left only: {c:.1%}; per value token: {tokens}); its masked-token validation loss went "
            f"{_mean_val(early):.3f} -> {_mean_val(top):.3f}, {loss_trend(top['runs'][0]['val_curve'])}")


def _token(entry: dict[str, Any], reading: str) -> float:
    """Token accuracy of `reading`, the mean over the seeds."""
    return float(np.mean([r[reading]["token_accuracy"] for r in entry["runs"]]))


def _mean_val(entry: dict[str, Any]) -> float:
    return float(np.mean([r["val_loss"] for r in entry["runs"]]))


def _details(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"snippets": m["snippets"], "causal_steps": m["causal_steps"],
                           "causal_train_tokens": m["causal_train_tokens"]}
    for steps, e in sorted(m["results"].items()):
        out[f"masked_{steps}_steps"] = {
            "train_tokens": e["runs"][0]["train_tokens"],
            "val_loss_by_seed": [round(r["val_loss"], 4) for r in e["runs"]],
            "val_curve_first_seed": e["runs"][0]["val_curve"],
            **{f"{r}_value_accuracy": {k: round(v, 4) for k, v in e[r].items()} for r in READINGS},
            **{f"{r}_value_accuracy_by_seed": [round(x[r]["value_accuracy"], 4) for x in e["runs"]] for r in READINGS},
            **{f"{r}_token_accuracy_by_seed": [round(x[r]["token_accuracy"], 4) for x in e["runs"]] for r in READINGS},
            "both_sides_minus_left_only": {k: round(v, 4) for k, v in e["difference"].items()}}
    return out


def _plot_both_sides(ctx: Any, m: dict[str, Any]) -> str:
    path, link = plot_path(ctx, BOTH_SIDES)
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    res = m["results"]
    steps = sorted(res)
    tokens = [res[s]["runs"][0]["train_tokens"] for s in steps]
    for reading, color in (("masked_right", "tab:orange"), ("masked_left", "tab:grey")):
        _errorbar(ax, tokens, [res[s][reading] for s in steps], color, LABELS[reading] + f" ({SEEDS} seeds)")
    c = res[steps[-1]]["causal"]
    _errorbar(ax, [m["causal_train_tokens"] or tokens[-1]], [c], "tab:blue", LABELS["causal"] + " (quickstart)")
    ax.set_xscale("log")
    percent_axes(ax, "training tokens", "held-out values recovered (%)")
    ax.legend(fontsize=8)
    for s, ls in zip(steps, ("--", "-", ":")):
        for i, r in enumerate(res[s]["runs"]):
            xs, ys = zip(*r["val_curve"])
            bx.plot(xs, ys, ls, marker=".", color="tab:orange", alpha=0.7, label=f"{s} steps" if i == 0 else None)
    bx.set_xlabel("step")
    bx.set_ylabel("masked-token validation loss (nats)")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8)
    save_png(fig, path)
    return link


def _errorbar(ax: Any, xs: list, entries: list[dict[str, float]], color: str, label: str) -> None:
    y = np.array([100 * e["mean"] for e in entries])
    err = np.array([[100 * (e["mean"] - e["low"]) for e in entries], [100 * (e["high"] - e["mean"]) for e in entries]])
    ax.errorbar(xs, y, yerr=err, color=color, marker="o", capsize=3, label=label)


CLAIMS = [
    Claim(ONE_MASK, "A causal and a masked language model differ in one attention mask and one objective.",
          "Devlin et al. 2019 (BERT) against Radford et al. 2018 (GPT); the encoder-vs-decoder explanation in "
          "tutorials and courses",
          "Both are built from one ModelConfig through the two objectives; their parameters are compared by name and "
          "shape, and the masked model runs with the causal weights under its own mask and under a causal one.",
          causal_vs_masked_one_mask),
    Claim(BOTH_SIDES, "A masked model uses context on both sides of a blank.",
          "Devlin et al. 2019 (BERT: deep bidirectional representations from the masked LM objective)",
          "Masked LMs of the quickstart's size, trained at two lengths with 3 seeds, fill held-out biography values "
          "with the whole snippet visible and with it cut after the value (lmlab.evals.bidirectional); the causal "
          "quickstart model is the reference.",
          masked_uses_both_sides),
]
