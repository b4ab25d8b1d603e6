"""`lmlab sampling explain`: the next-token distribution under several sampling settings, made visible.

For one prompt: the top candidates with their probabilities at several
temperatures and under top-k / top-p / min-p, the size of the top-p nucleus
and the entropy — printed as a table and drawn as a bar chart (PNG).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.figures import pyplot, save_png
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams, analytic_distribution, entropy, nucleus_size
from lmlab.rundir import DEFAULT_CHECKPOINT


@dataclass
class ExplainConfig:
    checkpoint: str = DEFAULT_CHECKPOINT
    """Checkpoint directory."""
    prompt: str = ""
    """Text whose next token is explained."""
    temperatures: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    """Temperatures to compare."""
    top_k: int = 5
    """The top-k setting to show (at temperature 1)."""
    top_p: float = 0.9
    """The top-p setting to show (at temperature 1)."""
    min_p: float = 0.1
    """The min-p setting to show (at temperature 1)."""
    show: int = 10
    """Candidates to list."""
    out: str = "runs/explain.png"
    """Where to write the bar chart."""

    def __post_init__(self) -> None:
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise LmlabError(f"temperatures must be positive numbers, got {self.temperatures}")
        if self.show < 1:
            raise LmlabError(f"show must be >= 1, got {self.show}")
        SamplingParams(top_k=self.top_k, top_p=self.top_p, min_p=self.min_p)  # validates the ranges


def settings(cfg: ExplainConfig) -> dict[str, SamplingParams]:
    out = {f"T={t:g}": SamplingParams(temperature=t) for t in cfg.temperatures}
    out[f"top-k={cfg.top_k}"] = SamplingParams(top_k=cfg.top_k)
    out[f"top-p={cfg.top_p:g}"] = SamplingParams(top_p=cfg.top_p)
    out[f"min-p={cfg.min_p:g}"] = SamplingParams(min_p=cfg.min_p)
    return out


@torch.no_grad()
def explain_logits(logits: torch.Tensor, decode, cfg: ExplainConfig) -> dict[str, Any]:
    """Everything the explanation shows, for raw next-token logits (V,)."""
    logits = logits.float()
    dists = {name: analytic_distribution(logits, sp) for name, sp in settings(cfg).items()}
    base = torch.softmax(logits.double(), -1)
    top = torch.argsort(base, descending=True, stable=True)[: cfg.show].tolist()
    return {
        "candidates": [{"token_id": t, "token": decode([t]),
                        **{name: float(d[t]) for name, d in dists.items()}} for t in top],
        "entropy_nats": {f"T={t:g}": float(entropy((logits / t)[None])[0]) for t in cfg.temperatures},
        "nucleus_size": int(nucleus_size(logits[None], cfg.top_p)[0]),
        "kept": {name: int((d > 0).sum()) for name, d in dists.items()},
        "vocab_size": int(logits.numel()),
    }


def plot(result: dict[str, Any], prompt: str, out: str | Path) -> Path:
    plt = pyplot()
    cands = result["candidates"]
    names = [k for k in cands[0] if k not in ("token_id", "token")]
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(cands)), 4), dpi=110)
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        ax.bar([i + j * width for i in range(len(cands))], [c[name] for c in cands], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cands))])
    ax.set_xticklabels([repr(c["token"])[1:-1] or "(empty)" for c in cands], rotation=45, ha="right")
    ax.set_ylabel("probability of the next token")
    short = prompt if len(prompt) < 60 else "..." + prompt[-57:]
    ax.set_title(f"next token after {short!r} (nucleus at top-p: {result['nucleus_size']} tokens)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, out)


def run_explain(cfg: ExplainConfig) -> dict[str, Any]:
    # Checked before the model loads: otherwise the work is done and lost at the very last step.
    if Path(cfg.out).is_dir():
        raise LmlabError(f"out {cfg.out!r} is a directory; expected the path of a .png file to write, "
                         f"e.g. {str(Path(cfg.out) / 'explain.png')!r}")
    engine = Engine.from_checkpoint(cfg.checkpoint)
    result = explain_logits(engine.next_token_logits(cfg.prompt), engine.tok.decode, cfg)
    result["png"] = str(plot(result, cfg.prompt, cfg.out))
    result["top_p"] = cfg.top_p
    return result


def format_explain(result: dict[str, Any]) -> str:
    """One row per candidate token, one column per sampling setting, then entropy and the nucleus."""
    names = [k for k in result["candidates"][0] if k not in ("token_id", "token")]
    lines = ["token".ljust(14) + "".join(n.rjust(11) for n in names)]
    lines += [repr(c["token"]).ljust(14) + "".join(f"{c[n]:11.4f}" for n in names) for c in result["candidates"]]
    lines.append("entropy (nats): " + ", ".join(f"{k} {v:.3f}" for k, v in result["entropy_nats"].items()))
    lines.append(f"top-p={result['top_p']:g} nucleus: {result['nucleus_size']} of {result['vocab_size']} tokens; "
                 f"chart: {result['png']}")
    return "\n".join(lines) + "\n"
