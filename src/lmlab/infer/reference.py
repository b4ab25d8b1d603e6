"""The textbook decoding loop: the whole context recomputed for every new token, no cache.

It is what the engine's KV-cache decoding is tested against (tests/test_engine.py), and nothing else uses it.
"""

from __future__ import annotations

import torch


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
