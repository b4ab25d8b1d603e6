"""What a ledger row is: a claim about language models, how it was tested, what was measured, and the verdict.

Every row is written by a measurement (`lmlab ledger`), never by hand. A row
states its value with an interval and names the command that reproduces it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

VERDICTS = ("holds", "does not hold", "holds only")


@dataclass
class Row:
    """The outcome of testing one claim."""

    value: float
    """The measured figure the verdict rests on."""
    low: float
    high: float
    """Its 95% interval."""
    unit: str
    """What `value` counts, in a few words (e.g. 'share of prompts', 'x full softmax time')."""
    verdict: str
    """'holds', 'does not hold', or 'holds only' (then `condition` says when)."""
    measured: str
    """One sentence: what was measured, on what, how many times."""
    interval: str
    """How the interval was computed (Wilson, bootstrap over prompts, ...), with the seeds."""
    condition: str = ""
    plot: str | None = None
    """The PNG it drew, relative to the ledger's directory."""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict == "holds only" and not self.condition:
            raise ValueError("a 'holds only' verdict needs its condition")
        if not self.low <= self.value <= self.high:
            raise ValueError(f"value {self.value} outside its interval [{self.low}, {self.high}]")


@dataclass
class Claim:
    """A claim, where it comes from, and the experiment that tests it."""

    id: str
    claim: str
    source: str
    test: str
    """How it is tested, in one or two sentences."""
    run: Callable[[Any], Row]
    """The experiment: given the ledger's context, measure and judge."""

    def entry(self, row: Row, command: str, seconds: float) -> dict[str, Any]:
        return {"id": self.id, "claim": self.claim, "source": self.source, "test": self.test,
                "command": command, "seconds": round(seconds, 2), **asdict(row)}


def plot_path(ctx: Any, claim_id: str) -> tuple[Path, str]:
    """Where a claim draws its PNG, and the path the ledger's markdown links it by."""
    name = f"ledger/{claim_id}.png"
    return Path(ctx.out_dir) / name, name
