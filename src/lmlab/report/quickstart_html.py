"""report.html for a quickstart run: the report card, one self-contained page.

`report.md` holds every number; this page is the one a person looks at. A
table has one row per stage (what was done, its key figure with a 95%
interval, time, training FLOPs), then the pictures: loss curves, the sampling
distributions, test-time accuracy against N and its cost, hallucination
before and after. Images are embedded as data URIs, so the file can be mailed
or opened from anywhere. Everything is read back from `summary.json` and the
stage outputs, like report.md.
"""

from __future__ import annotations

import base64
import html
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmlab.evals.binary import Z95, percent_bars, rate, wilson
from lmlab.figures import pyplot, save_png
from lmlab.io import write_text
from lmlab.summary import read_summary


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _share(p: float | None, n: int | None) -> str:
    """A share with its Wilson interval, from a rate and its count (k is rounded back from the rate)."""
    if p is None or not n:
        return "n/a"
    lo, hi = wilson(round(p * n), n)
    return f"{_pct(p)} [{100 * lo:.1f}, {100 * hi:.1f}] (n = {n})"


def _stored(r: dict[str, Any] | None) -> str:
    """A rate as the hallucination stage stores it ({k, n, rate, ci95})."""
    if not r or r.get("rate") is None:
        return "n/a"
    lo, hi = r["ci95"]
    return f"{_pct(r['rate'])} [{100 * lo:.1f}, {100 * hi:.1f}] (n = {r['n']})"


def _flops(x: float | None) -> str:
    return "" if not x else f"{x:.2e}"


def _secs(x: float | None) -> str:
    return "" if x is None else f"{x:,.1f}"


def stage_rows(s: dict[str, Any]) -> list[tuple[str, str, str, float | None, float | None]]:
    """(stage, what was done, key figure with its interval, seconds, training FLOPs) for each stage that ran."""
    rows = []
    w, tk, pt = s.get("world", {}), s.get("tokenizer", {}), s.get("pretrain", {})
    if w:
        people = w.get("people_qa_train", 0) + w.get("people_qa_test", 0)
        rows.append(("world", f"{w.get('pretrain_docs', 0):,} documents about {people:,} people, "
                     f"{w.get('people_unknown', 0):,} unknown people held back", "every fact known", w.get("wall_s"),
                     None))
    if tk:
        rows.append(("tokenizer", f"{tk.get('kind')} tokenizer, vocabulary {tk.get('vocab_size', 0):,}",
                     f"{tk.get('chars_per_token', 0):.2f} characters per token", tk.get("wall_s"), None))
    if pt:
        rows.append(("pretraining", f"{pt.get('params', 0):,}-parameter causal transformer, {pt.get('steps')} steps, "
                     f"{pt.get('train_tokens', 0):,} tokens ({pt.get('precision')})",
                     f"validation loss {pt.get('val_loss', float('nan')):.3f} nats", pt.get("wall_s"),
                     pt.get("train_flops")))
    kn = s.get("probe", {}).get("knowledge", {})
    if kn.get("test"):
        te, tr = kn["test"], kn.get("train", {})
        rows.append(("knowledge probe", "greedy answers to the world's questions, graded exactly",
                     f"facts seen only in biographies: {_share(te.get('accuracy'), te.get('n'))}; QA-train people: "
                     f"{_share(tr.get('accuracy'), tr.get('n'))}", s.get("probe", {}).get("wall_s"), None))
    rows += _masked_rows(s) + _post_rows(s) + _testtime_rows(s)
    return rows


def _masked_rows(s: dict[str, Any]) -> list[tuple[str, str, str, float | None, float | None]]:
    mlm, bi = s.get("masked_lm", {}), s.get("bidirectional", {})
    if not bi:
        return []
    n = bi.get("snippets")
    return [("masked LM", f"the same model with a bidirectional mask, {mlm.get('train_tokens', 0):,} tokens",
             f"values recovered from both sides {_share(bi['masked_right']['value_accuracy'], n)}; causal, left only: "
             f"{_share(bi['causal']['value_accuracy'], n)}", (mlm.get("wall_s") or 0) + (bi.get("wall_s") or 0), None)]


def _post_rows(s: dict[str, Any]) -> list[tuple[str, str, str, float | None, float | None]]:
    rows = []
    ft, rm, dp, h = s.get("sft", {}), s.get("rm", {}), s.get("dpo", {}), s.get("hallucination", {})
    if ft.get("after"):
        b, a = ft["before"]["test"], ft["after"]["test"]
        rows.append(("SFT", f"{ft['steps']} steps on {ft['conversations']:,} chat conversations",
                     f"replies that end their turn: {_pct(b['stop_rate'])} -> {_share(a['stop_rate'], a['n'])}",
                     ft.get("wall_s"), ft.get("train_flops")))
    if rm:
        n = rm.get("heldout", {}).get("heldout", {}).get("n")
        rows.append(("reward model", f"Bradley-Terry on {rm.get('pairs', 0):,} preference pairs",
                     f"held-out pairs ranked right: {_share(rm.get('heldout_accuracy'), n)}", rm.get("wall_s"),
                     rm.get("train_flops")))
    if dp.get("after"):
        b, a = dp["before"]["heldout"], dp["after"]["heldout"]
        rows.append(("DPO", f"{dp['steps']} steps on the same pairs from the SFT model",
                     f"held-out unknown people made up: {_pct(b['unknown_fabrication'])} -> "
                     f"{_share(a['unknown_fabrication'], a['unknown_n'])}", dp.get("wall_s"), dp.get("train_flops")))
    if h:
        rows.append(("hallucination", f"{h.get('questions')} questions per group, before and after post-training",
                     f"unknown people made up: {_stored(h.get('unknown_hallucination_rate_before'))} -> "
                     f"{_stored(h.get('unknown_hallucination_rate_after'))}", h.get("wall_s"), None))
    return rows


def _testtime_rows(s: dict[str, Any]) -> list[tuple[str, str, str, float | None, float | None]]:
    rows = []
    sv, ver, tt = s.get("solver", {}), s.get("verifier", {}), s.get("testtime", {})
    if sv:
        rows.append(("arithmetic solver", f"SFT on {sv.get('conversations', 0):,} worked solutions",
                     f"validation loss {sv.get('val_loss', float('nan')):.3f}", sv.get("wall_s"),
                     sv.get("train_flops")))
    if ver:
        rows.append(("verifier", f"reward model on {ver.get('pairs', 0):,} pairs of the solver's own samples",
                     f"held-out pairs ranked right: {_pct(ver.get('heldout_accuracy'))}", ver.get("wall_s"),
                     (ver.get("train_flops") or 0) + (ver.get("sampling_flops") or 0)))
    if tt.get("rows"):
        top = max(tt["n"])
        best = max((r for r in tt["rows"] if r["n"] == top and r["method"] != "oracle"), key=lambda r: r["accuracy"],
                   default=None)
        greedy = next((r for r in tt["rows"] if r["method"] == "greedy"), None)
        if best and greedy:
            half = Z95 * best["stderr"]
            rows.append(("test-time compute", f"{tt['problems']} held-out problems, N up to {top} samples each",
                         f"greedy {_pct(greedy['accuracy'])}; {best['method']} at N = {top}: {_pct(best['accuracy'])} "
                         f"[{100 * (best['accuracy'] - half):.1f}, {100 * (best['accuracy'] + half):.1f}] at "
                         f"{best['gen_tokens'] / max(greedy['gen_tokens'], 1):.0f}x the tokens",
                         tt.get("sampling_wall_s"), None))
    return rows


def hallucination_bars(s: dict[str, Any], out: Path) -> Path | None:
    """Before/after bars with Wilson intervals: made up, abstained (unknown people), right (known people)."""
    h = s.get("hallucination")
    if not h:
        return None
    keys = [("unknown: made up", "unknown_hallucination_rate"), ("unknown: abstained", "abstention_rate"),
            ("known: right", "known_accuracy")]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.2), dpi=110)
    for i, (when, colour) in enumerate((("before", "tab:red"), ("after", "tab:blue"))):
        ys, err = percent_bars([h.get(f"{k}_{when}") or rate(0, 0) for _, k in keys])
        ax.bar([j + 0.38 * i for j in range(len(keys))], ys, 0.38, yerr=err, capsize=3, color=colour,
               label=f"{when} post-training")
    ax.set_xticks([j + 0.19 for j in range(len(keys))])
    ax.set_xticklabels([k for k, _ in keys])
    ax.set_ylabel("% of questions (95% CI)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    path = out / "hallucination" / "before_after.png"
    save_png(fig, path)
    return path


FIGURES = (("Pretraining loss", "loss.png"), ("Masked LM loss", "mlm/loss.png"),
           ("The next token under each sampling control", "sampling.png"),
           ("Test-time compute: accuracy against N, and its cost", "testtime/testtime.png"),
           ("Hallucination before and after post-training", "hallucination/before_after.png"),
           ("Calibration before post-training", "hallucination/before/reliability.png"),
           ("Calibration after post-training", "hallucination/after/reliability.png"))

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%;font-size:14px}td,th{border-bottom:1px solid #ddd;padding:6px;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;white-space:nowrap}
figure{display:inline-block;margin:1em 1em 0 0;width:47%;vertical-align:top}
figure img{width:100%;max-height:380px;object-fit:contain}
figcaption{font-size:13px;color:#555}"""


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_html(out: Path) -> Path:
    """Write <out>/report.html from a finished (or partly finished) quickstart run; returns its path."""
    s = read_summary(out / "summary.json")
    hallucination_bars(s, out)
    esc = html.escape
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()} ({platform.processor() or platform.system()})"
    body = [f"<h1>lmlab quickstart: the report card</h1><p>{esc(when)} on {esc(machine)}, device "
            f"{esc(str(s.get('pretrain', {}).get('device')))}. Intervals are 95% (Wilson for shares). Every number is "
            "in report.md and summary.json beside this file.</p>",
            "<table><tr><th>stage</th><th>what was done</th><th>key figure [95% interval]</th><th>time (s)</th>"
            "<th>training FLOPs</th></tr>"]
    for stage, did, figure, secs, flops in stage_rows(s):
        body.append(f"<tr><td>{esc(stage)}</td><td>{esc(did)}</td><td>{esc(figure)}</td><td class=n>{_secs(secs)}</td>"
                    f"<td class=n>{_flops(flops)}</td></tr>")
    body.append("</table>")
    for caption, name in FIGURES:
        if (out / name).is_file():
            body.append(f"<figure><img src=\"{_img(out / name)}\" alt=\"{esc(caption)}\">"
                        f"<figcaption>{esc(caption)} ({esc(name)})</figcaption></figure>")
    page = ("<!doctype html><html lang=en><head><meta charset=utf-8><title>lmlab quickstart report</title>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    path = out / "report.html"
    write_text(path, page)
    return path
