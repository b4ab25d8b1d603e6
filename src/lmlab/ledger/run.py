"""`lmlab ledger`: run the experiment behind each claim and write `docs/LEDGER.md` and `docs/ledger.json`.

Resumable: a claim whose code, size and seed are unchanged since its last run
is taken from the cache (`work/cache/ID.json`) instead of being run again, and
a claim that `--only` leaves out keeps its row from the ledger already written.
The budget is checked before each claim: what does not fit is left for the
next run and said so.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmlab import cbuild
from lmlab.errors import LmlabError
from lmlab.io import write_json
from lmlab.ledger import model as logits_module
from lmlab.ledger.claims import Claim
from lmlab.ledger.hallucination_claims import CLAIMS as HALLUCINATION
from lmlab.ledger.masked_claims import CLAIMS as MASKED
from lmlab.ledger.memory_claims import CLAIMS as MEMORY
from lmlab.ledger.model import LogitsSource, quickstart_run
from lmlab.ledger.moe_claims import CLAIMS as MOE
from lmlab.ledger.post_claims import CLAIMS as POST
from lmlab.ledger.sampling_claims import CLAIMS as SAMPLING
from lmlab.ledger.scale_claims import CLAIMS as SCALE
from lmlab.ledger.testtime_claims import CLAIMS as TESTTIME
from lmlab.ledger.write import update_readme, write_markdown

CLAIMS: list[Claim] = [*MASKED, *MEMORY, *MOE, *SCALE, *POST, *SAMPLING, *TESTTIME, *HALLUCINATION]


@dataclass
class LedgerConfig:
    budget: float = 60.0
    """Minutes the run may take; a claim that would start after that is left for the next run."""
    only: list[str] = field(default_factory=list)
    """Run just these claims (ids); the others keep their rows."""
    size: str = "full"
    """'full' (the quickstart's models, run first if missing) or 'tiny' (random small models, seconds: tests)."""
    out: str = "docs"
    """Where LEDGER.md, ledger.json and the plots (ledger/*.png) go."""
    work: str = "runs/ledger"
    """Cache of finished claims."""
    quickstart: str = "runs/quickstart"
    """The quickstart run whose models the full ledger measures."""
    seed: int = 0
    """Seed of every sampled thing (prompts, bootstrap resamples, random logits)."""
    force: bool = False
    """Run every selected claim again, cached or not."""
    readme: str | None = "README.md"
    """A README whose verdict table (between the ledger's markers) is rewritten; null: none."""

    def __post_init__(self) -> None:
        if self.size not in ("full", "tiny"):
            raise LmlabError(f"size must be 'full' or 'tiny', got {self.size!r}")
        if not self.budget > 0:
            raise LmlabError(f"budget must be a positive number of minutes, got {self.budget}")
        known = {c.id for c in CLAIMS}
        unknown = [c for c in self.only if c not in known]
        if unknown:
            raise LmlabError(f"unknown claim(s) {unknown}; the ledger has: {', '.join(sorted(known))}")


@dataclass
class Context:
    """What the claims share: the settings, the model's logits (computed once), the machine."""

    size: str
    seed: int
    out_dir: str
    logits_source: LogitsSource
    cpu: str = field(default_factory=lambda: cbuild.cpu_info()["model"])
    memo: dict[str, Any] = field(default_factory=dict)
    """Measurements several claims share (made by the first claim that needs them)."""
    quickstart: str = "runs/quickstart"
    work: str = "runs/ledger"
    """Where claims keep what they train (under work/<claim id>/), so an interrupted ledger can resume it."""

    def quickstart_run(self) -> Path:
        """The quickstart run (full size: the real one, run first if missing; tiny: a seconds-long one)."""
        if "quickstart_run" not in self.memo:
            self.memo["quickstart_run"] = quickstart_run(self.size, self.quickstart, self.work)
        return self.memo["quickstart_run"]

    def workdir(self, claim_id: str) -> Path:
        path = Path(self.work) / claim_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def next_token_logits(self) -> tuple[torch.Tensor, str]:
        return self.logits_source.get()


def fingerprint(claim: Claim, cfg: LedgerConfig, model_id: str) -> str:
    """What a cached row depends on: the claim's code (its whole module, and the module that makes its
    logits), the size, the seed, the model."""
    code = inspect.getsource(inspect.getmodule(claim.run)) + inspect.getsource(logits_module)
    return hashlib.sha256(json.dumps([code, cfg.size, cfg.seed, model_id]).encode()).hexdigest()[:16]


def command(claim: Claim, cfg: LedgerConfig) -> str:
    return f"lmlab ledger --only {claim.id}" + (" --size tiny" if cfg.size == "tiny" else "")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _commit(claim: Claim) -> str | None:
    """The commit the claim ran at, '+dirty' when a tracked source file it may use differs from that commit
    (None outside git). Other claims' modules do not count: their code is not this claim's."""
    head = (_git("rev-parse", "--short", "HEAD") or "").strip()
    if not head:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "src") or ""
    own = Path(inspect.getfile(claim.run)).name
    others = {Path(inspect.getfile(c.run)).name for c in CLAIMS} - {own}
    changed = [line[3:].strip() for line in status.splitlines() if line.strip()]
    return head + ("+dirty" if any(Path(f).name not in others for f in changed) else "")


def ledger(cfg: LedgerConfig) -> dict[str, Any]:
    """Test the claims (all, or `only`), merge their rows into the ledger, write it; returns what happened."""
    out = Path(cfg.out)
    (out / "ledger").mkdir(parents=True, exist_ok=True)
    cache = Path(cfg.work) / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    source = LogitsSource(cfg.size, cfg.quickstart, cfg.seed)
    ctx = Context(cfg.size, cfg.seed, str(out), source, quickstart=cfg.quickstart, work=cfg.work)
    selected = [c for c in CLAIMS if not cfg.only or c.id in cfg.only]
    start = time.perf_counter()
    if cfg.size == "full":
        ctx.quickstart_run()  # first: the rows' cache keys name its checkpoint, so it must exist before them
    rows: dict[str, dict[str, Any]] = {r["id"]: r for r in _previous(out / "ledger.json")}
    ran, cached, left, failed = [], [], [], []
    for claim in selected:
        fp = fingerprint(claim, cfg, source.model_id())
        hit = _read(cache / f"{claim.id}.json")
        if hit is not None and hit.get("fingerprint") == fp and not cfg.force:
            rows[claim.id] = hit["entry"]
            cached.append(claim.id)
            continue
        if time.perf_counter() - start > 60 * cfg.budget:
            left.append(claim.id)
            continue
        t0 = time.perf_counter()
        try:
            row = claim.run(ctx)
        except Exception as e:  # noqa: BLE001 -- one broken experiment must not cost the others' hour
            traceback.print_exc()
            failed.append(f"{claim.id}: {type(e).__name__}: {e}")
            continue
        entry = {**claim.entry(row, command(claim, cfg), time.perf_counter() - t0), "commit": _commit(claim)}
        write_json(cache / f"{claim.id}.json", {"fingerprint": fp, "entry": entry})
        rows[claim.id] = entry
        ran.append(claim.id)
    order = [c.id for c in CLAIMS]
    entries = [rows[i] for i in order if i in rows]
    meta = {"generated_by": "lmlab ledger", "commit": (_git("rev-parse", "--short", "HEAD") or "").strip() or None,
            "date": time.strftime("%Y-%m-%d %H:%M UTC",
            time.gmtime()), "machine": ctx.cpu, "cpu_flags": cbuild.cpu_info()["flags"], "size": cfg.size}
    write_json(out / "ledger.json", {**meta, "rows": entries})
    write_markdown(out / "LEDGER.md", meta, entries)
    if cfg.readme:
        update_readme(Path(cfg.readme), entries)
    if failed:
        raise LmlabError(f"{len(failed)} claim(s) failed (the ledger was written with the others; their tracebacks "
                         "are above): " + "; ".join(failed))
    return {"rows": len(entries), "ran": ran, "cached": cached, "left_for_next_run": left,
            "wall_s": round(time.perf_counter() - start, 1), "json": str(out / "ledger.json"),
            "markdown": str(out / "LEDGER.md")}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _previous(path: Path) -> list[dict[str, Any]]:
    data = _read(path)
    rows = data.get("rows") if isinstance(data, dict) else None
    return [r for r in rows if isinstance(r, dict) and "id" in r] if isinstance(rows, list) else []


def format_ledger(result: dict[str, Any]) -> str:
    lines = [f"ledger: {result['rows']} rows in {result['markdown']} and {result['json']} ({result['wall_s']} s)",
             f"  ran: {', '.join(result['ran']) or 'none'}",
             f"  from the cache (unchanged): {', '.join(result['cached']) or 'none'}"]
    if result["left_for_next_run"]:
        lines.append(f"  left for the next run (budget spent): {', '.join(result['left_for_next_run'])}")
    return "\n".join(lines) + "\n"
