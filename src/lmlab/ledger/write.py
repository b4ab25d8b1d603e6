"""The ledger as markdown: a table of verdicts, then each claim with how it was tested and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.io import write_text


def figure(x: float) -> str:
    """A number as a reader wants it: 3 significant figures, no scientific notation for everyday sizes."""
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{x:.2e}"


def value_text(r: dict[str, Any]) -> str:
    return f"{figure(r['value'])} [{figure(r['low'])}, {figure(r['high'])}]"


def verdict_text(r: dict[str, Any]) -> str:
    return f"holds only {r['condition']}" if r["verdict"] == "holds only" else r["verdict"]


def write_markdown(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    lines = ["# The ledger: claims about language models, tested", "",
             f"Written by `lmlab ledger` ({meta['size']} size) on {meta['date']} at commit {meta['commit']}, on "
             f"{meta['machine']} ({', '.join(meta.get('cpu_flags') or []) or 'no listed vector flags'}); "
             "each row names the commit it was measured at. Do not edit by hand: run the "
             "command in a row to reproduce it, or `lmlab ledger` for all of them. Intervals are 95%.", "",
             "| claim | verdict | measured | unit |", "|---|---|---|---|"]
    lines += [f"| [{r['claim']}](#{r['id']}) | {verdict_text(r)} | {value_text(r)} | {r['unit']} |" for r in rows]
    for r in rows:
        lines += ["", f"## {r['id']}", "", f"**Claim.** {r['claim']}", "", f"**Source.** {r['source']}", "",
                  f"**Test.** {r['test']} Measured: {r['measured']}.", "",
                  f"**Result.** {value_text(r)} ({r['unit']}); interval: {r['interval']}.", "",
                  f"**Verdict.** {verdict_text(r)}.", "",
                  f"Command: `{r['command']}` ({r['seconds']} s, at commit {r.get('commit')})."]
        if r.get("plot"):
            lines += ["", f"![{r['id']}]({r['plot']})"]
    write_text(path, "\n".join(lines) + "\n")


START, END = "<!-- ledger:start (written by lmlab ledger) -->", "<!-- ledger:end -->"


def verdict_table(rows: list[dict[str, Any]], link: str = "docs/LEDGER.md") -> str:
    """The README's table of verdicts, each claim linked to its section of the ledger."""
    lines = ["| claim | verdict | measured |", "|---|---|---|"]
    lines += [f"| [{r['claim']}]({link}#{r['id']}) | {verdict_text(r)} | {value_text(r)} {r['unit']} |" for r in rows]
    return "\n".join(lines)


def update_readme(path: Path, rows: list[dict[str, Any]]) -> bool:
    """Replace the table between the README's ledger markers; False (and nothing written) without markers."""
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    write_text(path, f"{head}{START}\n{verdict_table(rows)}\n{END}{tail}")
    return True
