"""`lmlab sample`: greedy or temperature samples from a checkpoint, and the plain decoding loop.

`generate` is the textbook loop (the whole context recomputed for every new
token): the engine's KV-cache decoding is tested against it. The verb itself
runs on the engine; `lmlab generate` exposes every sampling control.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams
from lmlab.rundir import DEFAULT_CHECKPOINT


@dataclass
class SampleConfig:
    checkpoint: str = DEFAULT_CHECKPOINT
    """Checkpoint directory to sample from."""
    prompt: str = ""
    """Text to continue (empty = start a new document)."""
    max_new_tokens: int = 100
    """Tokens to generate per sample."""
    temperature: float = 0.0
    """0 = greedy (argmax); otherwise softmax(logits / temperature) is sampled."""
    num_samples: int = 1
    """Independent samples to draw."""
    seed: int = 0
    """Seed for sampling."""
    stop_at_eos: bool = True
    """Stop a sample at the end-of-document token."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise LmlabError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_new_tokens < 0:
            raise LmlabError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.num_samples < 1:
            raise LmlabError(f"num_samples must be >= 1, got {self.num_samples}")


@torch.no_grad()
def generate(model: torch.nn.Module, ids: list[int], max_new_tokens: int, temperature: float = 0.0,
             generator: torch.Generator | None = None, stop_id: int | None = None) -> list[int]:
    """Continue `ids` one token at a time; returns only the new tokens."""
    ctx = model.cfg.max_seq_len
    x = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(x[:, -ctx:])[0, -1].float()
        if temperature == 0:
            nxt = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        if stop_id is not None and nxt == stop_id:
            break
        new.append(nxt)
        x = torch.cat([x, x.new_tensor([[nxt]])], dim=1)
    return new


def sample(cfg: SampleConfig) -> list[str]:
    """`num_samples` continuations of the prompt (through the engine, with its KV cache)."""
    engine = Engine.from_checkpoint(cfg.checkpoint)
    params = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, n=cfg.num_samples,
                            seed=cfg.seed, ignore_eos=not cfg.stop_at_eos)
    return [cfg.prompt + c.text for c in engine.generate([cfg.prompt], params)[0].completions]


def run_sample(cfg: SampleConfig) -> dict[str, Any]:
    return {"samples": sample(cfg)}


def format_samples(result: dict[str, Any]) -> str:
    """Each sample under a numbered rule, so where one ends and the next starts stays plain."""
    return "".join(f"--- sample {i} ---\n{s}\n" for i, s in enumerate(result["samples"]))
