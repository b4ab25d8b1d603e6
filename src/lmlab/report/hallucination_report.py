"""`lmlab hallucination report`: every hallucination result under a directory, with its plots, in one
markdown page.

Each experiment writes a JSON result whose name says what it is (`SECTIONS`); the report finds them
anywhere below `dir`, so a lab run (`benchmarks/hallucination_lab.sh`) and hand-run verbs alike are
collected. Tables are the verbs' own text formatters, so the page and the terminal never disagree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.evals.grounded import format_retrieval
from lmlab.evals.hallucination import format_hallucination
from lmlab.evals.snowball import format_snowball
from lmlab.evals.unknown_sft import format_pooled, format_unknown_sft, pool_seeds
from lmlab.evals.wrong_penalty import format_penalty
from lmlab.io import write_text

SECTIONS: tuple[tuple[str, str, Callable[[dict[str, Any]], str], tuple[str, ...], str], ...] = (
    ("hallucination.json", "Evaluation: correct, hallucinated, abstained; calibration; detectors",
     format_hallucination, ("reliability.png",),
     "Every answer graded against the world's facts; 95% Wilson intervals; detectors scored by AUROC and "
     "average precision at flagging wrong answers among the non-abstentions."),
    ("snowball.json", "Hypothesis 1: does a planted error snowball? (Zhang et al. 2023)", format_snowball, (),
     "A biography prefix with one fact replaced by another person's, against the same prefix without the error; "
     "later facts graded against the world; with --mitigate, before and after training on marked corrections."),
    ("unknown_sft.json", "Hypothesis 2: fine-tuning on facts the model does not know (Gekhman et al. 2024)",
     format_unknown_sft, ("unknown_sft.png",),
     "SFT mixes of equal size with a growing share of Unknown examples (facts the pretrained model answered "
     "wrong, given with their true answers); early stopping = lowest validation loss on the mix."),
    ("retrieval.json", "Mitigation (c): answers that cite retrieved sources", format_retrieval, (),
     "SFT with and without the top-k BM25 passages in the prompt, replies citing passage ids; ALCE citation "
     "recall and precision with the world's exact support."),
    ("penalty.json", "Mitigation (d): a reward that punishes a made-up answer more than an abstention",
     format_penalty, ("penalty.png",),
     "GRPO from the SFT model with the world's gold reward (+1 right, 0 abstained, -penalty wrong), one run "
     "per penalty; held-out people's questions graded."),
)
"""(result file, heading, formatter, its PNGs beside it, what the section measures)."""


@dataclass
class HallucinationReportConfig:
    dir: str = "runs/hallucination"
    """Directory searched (recursively) for results of the hallucination verbs."""
    out: str | None = None
    """The markdown file (null: report.md in `dir`)."""


def find_results(root: Path) -> list[tuple[int, Path]]:
    """(section index, result file) for every known result under `root`, in section order, then path."""
    found = []
    for i, (name, *_rest) in enumerate(SECTIONS):
        found += [(i, p) for p in sorted(root.rglob(name))]
    return found


def section(index: int, path: Path, page: Path) -> list[str]:
    """One result's heading, what it measures, its table and its plots (linked relative to the page)."""
    _name, heading, fmt, pngs, about = SECTIONS[index]
    res = json.loads(path.read_text(encoding="utf-8"))
    rel = lambda p: Path(os.path.relpath(p, page.parent)).as_posix()
    lines = [f"## {heading}", "", f"`{rel(path)}`. {about}", "", "```", fmt(res).rstrip(), "```", ""]
    lines += [f"![{png}]({rel(path.parent / png)})\n" for png in pngs if (path.parent / png).is_file()]
    return lines


def pooled_section(paths: list[Path]) -> list[str]:
    """With unknown-sft run under two seeds or more: their counts pooled, one table."""
    if len(paths) < 2:
        return []
    results = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    if len({r["seed"] for r in results}) < len(results):
        return []  # the same seed twice is a repeat, not more evidence
    return ["## Hypothesis 2, pooled over seeds", "", "```", format_pooled(pool_seeds(results)), "```", ""]


def hallucination_report(cfg: HallucinationReportConfig) -> dict[str, Any]:
    root = Path(cfg.dir)
    if not root.is_dir():
        raise LmlabError(f"{root} is not a directory; run the hallucination verbs with --out under it first")
    found = find_results(root)
    if not found:
        names = ", ".join(name for name, *_ in SECTIONS)
        raise LmlabError(f"no hallucination results ({names}) under {root}")
    page = Path(cfg.out) if cfg.out else root / "report.md"
    lines = ["# lmlab hallucination report", "",
             f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from {len(found)} results "
             f"under `{root}`.", ""]
    for index, path in found:
        lines += section(index, path, page)
    lines += pooled_section([p for _, p in found if p.name == "unknown_sft.json"])
    write_text(page, "\n".join(lines))
    return {"report": str(page), "results": [str(p) for _, p in found]}


def format_report(res: dict[str, Any]) -> str:
    return f"wrote {res['report']} from {len(res['results'])} results"
