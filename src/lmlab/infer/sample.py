"""`lmlab sample`: greedy or temperature sampling from a checkpoint.

This is the plain loop (the whole context is recomputed for each new token,
cropped to the model's context); the KV-cache engine with every sampling
control is its own module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmlab.data.tokenizer import Tokenizer
from lmlab.errors import LmlabError
from lmlab.train.checkpoint import build_model, load_checkpoint


@dataclass
class SampleConfig:
    checkpoint: str = "runs/quickstart/checkpoint"
    """Checkpoint directory to sample from."""
    prompt: str = ""
    """Text to continue (empty = start from the beginning-of-document token)."""
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
    """Load a checkpoint and its tokenizer, return `num_samples` continuations of the prompt."""
    ck = load_checkpoint(cfg.checkpoint)
    if ck.tokenizer_path is None:
        raise LmlabError(f"checkpoint {cfg.checkpoint} has no tokenizer.json to decode with")
    tok = Tokenizer.load(ck.tokenizer_path)
    model = build_model(ck).eval()
    ids = tok.encode(cfg.prompt)
    if tok.bos_id is not None and not cfg.prompt:
        ids = [tok.bos_id]
    if not ids:
        raise LmlabError("empty prompt and the tokenizer has no bos token to start from")
    gen = torch.Generator().manual_seed(cfg.seed)
    stop = tok.eos_id if cfg.stop_at_eos else None
    outs = []
    for _ in range(cfg.num_samples):
        new = generate(model, ids, cfg.max_new_tokens, cfg.temperature, gen, stop)
        outs.append(cfg.prompt + tok.decode(new))
    return outs


def run_sample(cfg: SampleConfig) -> dict[str, Any]:
    return {"samples": sample(cfg)}
