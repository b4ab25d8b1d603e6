"""`lmlab size`: parameters, memory and compute of a transformer, from its shape alone.

Pure arithmetic, no torch: a model's size follows from a dozen integers, so it
can be planned before anything is downloaded or allocated. A model is named by
a preset (lmlab's own, or a published Hugging Face config, plan/presets.py), a
Hugging Face `config.json` (or a directory holding one), an lmlab checkpoint
directory or a YAML recipe; each is read into a `ModelConfig` (plan/load.py),
the description the model itself is built from. Every figure says how it is
computed, in the docstrings of plan/params.py, plan/memory.py, plan/flops.py
and plan/compute.py, and in the table `format_table` writes. GB means 1e9
bytes throughout.

The parameter count of an lmlab `ModelConfig` reproduces
`Transformer(cfg).count_params()["total"]` exactly.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from lmlab.errors import LmlabError
from lmlab.plan.compute import compute
from lmlab.plan.load import load_model
from lmlab.plan.memory import GB, inference_memory, training_memory
from lmlab.plan.params import active_experts, param_counts
from lmlab.plan.settings import SizeConfig


def size(cfg: SizeConfig) -> dict[str, Any]:
    """Everything `lmlab size` reports, as a JSON-able dict (bytes as numbers; GB = 1e9 bytes)."""
    loaded = load_model(cfg.model)
    m = loaded.cfg
    context = cfg.context if cfg.context is not None else m.max_seq_len
    if context > m.max_seq_len:
        raise LmlabError(f"context={context} exceeds the model's maximum context of {m.max_seq_len} tokens")
    counts = param_counts(m)
    inference = inference_memory(m, cfg, context)
    moe = None
    if m.moe:
        moe = {"n_experts": m.n_experts, "experts_per_token": active_experts(m),
               "per_expert": counts["per_expert"], "total_params": counts["total"],
               "active_params": counts["active_per_token"],
               "note": "memory holds every expert (total params); compute runs only the routed ones (active)"}
    return {
        "model": {"name": loaded.name, "source": loaded.source, "family": loaded.family, "vocab": m.vocab_size,
                  "d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads, "kv_heads": m.kv_heads,
                  "head_dim": m.head_dim, "d_ff": m.ff_dim, "mlp": "swiglu" if m.mlp == "swiglu" else "gelu",
                  "norm": m.norm, "tied_embeddings": m.tie_embeddings, "max_context": m.max_seq_len,
                  "causal": m.causal},
        "settings": {**{k: v for k, v in dataclasses.asdict(cfg).items() if k != "model"}, "context": context},
        "params": counts,
        "inference": inference,
        "training": training_memory(m, cfg, context, inference["total_bytes"]),
        "compute": compute(m, cfg, context),
        "moe": moe,
    }


def _count(n: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def _bytes(n: float) -> str:
    for div, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def _duration(s: float) -> str:
    for div, unit in ((365 * 86400, "years"), (86400, "days"), (3600, "hours"), (60, "minutes")):
        if s >= div:
            return f"{s / div:.1f} {unit}"
    return f"{s:.1f} s"


def _rows(title: str, rows: list[tuple[str, str, str]]) -> list[str]:
    width = max(len(r[0]) for r in rows)
    return [title] + [f"  {k.ljust(width)}  {v.rjust(12)}  {note}".rstrip() for k, v, note in rows] + [""]


def format_table(result: dict[str, Any]) -> str:
    """The report as plain text: one section per question (how big, how much memory to serve / to train,
    how much compute), each figure with how it was obtained."""
    m, s, p = result["model"], result["settings"], result["params"]
    inf, tr, c = result["inference"], result["training"], result["compute"]
    heads = f"{m['n_heads']} heads" + (f" ({m['kv_heads']} kv)" if m["kv_heads"] != m["n_heads"] else "")
    lines = [f"{m['name']} ({m['source']}, {m['family']}): {m['n_layers']} layers, d_model {m['d_model']}, {heads},"
             f" head_dim {m['head_dim']}, d_ff {m['d_ff']} {m['mlp']}, vocab {m['vocab']}, max context "
             f"{m['max_context']}", "(GB = 1e9 bytes; a FLOP is a multiply or an add)", ""]
    rows = [("total", _count(p["total"]), f"{p['total']:,}")]
    if result["moe"]:
        rows.append(("active per token", _count(p["active_per_token"]), f"{p['active_per_token']:,}"))
    rows += [(k, _count(p[k]), f"{p[k] / p['total']:.1%}") for k in ("embedding", "attention", "mlp", "router",
                                                                      "norms", "head") if p[k]]
    if not p["head"] and m["tied_embeddings"]:
        rows.append(("head", "tied", "shares the token embedding"))
    lines += _rows("parameters", rows)
    if result["moe"]:
        moe = result["moe"]
        lines += _rows("mixture of experts", [
            ("experts", f"{moe['experts_per_token']} of {moe['n_experts']}", "routed per token"),
            ("per expert", _count(moe["per_expert"]), "all layers"),
            ("memory from", _count(moe["total_params"]), "total params: every expert is resident"),
            ("compute from", _count(moe["active_params"]), "active params: only routed experts run")])
    kv_note = (f"{inf['kv_cache_bytes_per_token']:,.0f} bytes/token ({inf['kv_precision']})" if m["causal"]
               else "encoder: no KV cache")
    lines += _rows(f"inference  ({s['precision']} weights, batch {s['batch']}, context {s['context']})", [
        ("rule of thumb", _bytes(inf["rule_of_thumb_gb"] * GB), inf["rule_of_thumb"]),
        ("weights", _bytes(inf["weights_bytes"]),
         f"incl. {_bytes(inf['quant_scales_bytes'])} of scales" if inf["quant_scales_bytes"] else ""),
        ("kv cache", _bytes(inf["kv_cache_bytes"]), kv_note),
        ("activations", _bytes(inf["activations_bytes"]), "one forward pass, incl. logits"),
        ("total", _bytes(inf["total_bytes"]), "")])
    mp = " mixed precision" if tr["master_weights_bytes"] else "" if tr["precision"] == "fp32" else ", no fp32 master"
    lines += _rows(f"training  ({tr['precision']}{mp}, {s['optimizer']}, batch {s['batch']}, context "
                   f"{s['context']}{', activation checkpointing' if s['activation_checkpointing'] else ''})", [
        ("weights", _bytes(tr["weights_bytes"]), ""),
        ("gradients", _bytes(tr["gradients_bytes"]), ""),
        ("master weights", _bytes(tr["master_weights_bytes"]), "fp32 copy" if tr["master_weights_bytes"] else ""),
        ("optimizer states", _bytes(tr["optimizer_states_bytes"]), s["optimizer"]),
        ("activations", _bytes(tr["activations_bytes"]),
         f"Korthikanti et al. 2022, sbh(34 + 5as/h) per layer; {_bytes(tr['activations_flash_bytes'])} with "
         "flash attention"),
        ("logits", _bytes(tr["logits_bytes"]), "fp32, every position"),
        ("total", _bytes(tr["total_bytes"]), f"{tr['static_bytes_per_param']:.4g} bytes/param before activations"),
        ("peak (eager)", _bytes(tr["peak_bytes"]), f"as PyTorch runs a step: grads and activations never all "
         f"coexist; peaks at {tr['peak_at']}"),
        ("training/inference", f"{tr['ratio_to_inference']:.1f}x", f"rule of thumb: {tr['rule']}")])
    lines += textwrap.wrap(f"({tr['rule_note']})", 116, initial_indent="  ", subsequent_indent="   ") + [""]
    lines += _rows("compute", [
        ("forward / token", f"{c['forward_flops_per_token']:.3g}", "FLOPs: 2 x active matmul params + attention"),
        ("training / token", f"{c['training_flops_per_token']:.3g}", "FLOPs: 3 x forward"),
        ("training tokens", _count(c["train_tokens"]), c["train_tokens_source"]),
        ("training FLOPs", f"{c['training_flops']:.3g}", f"6ND = {c['six_n_d_flops']:.3g}"),
        ("time", _duration(c["time_s"]),
         f"at {s['peak_tflops']:g} TFLOP/s x {s['mfu']:g} MFU, {c['time_note']}")])
    return "\n".join(lines).rstrip() + "\n"
