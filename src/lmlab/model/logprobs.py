"""Log-probabilities of given tokens: the one computation DPO, the reward model, RL, the evaluations and
the engine's scoring all share.

The log-softmax runs in fp32 whatever the logits' dtype: under bf16 autocast, sums over a reply's tokens
would be too coarse to tell two replies apart. Positions whose target is `ignore_index` (a prompt token, padding)
read token 0 and come out 0, so that summing a row gives the log-probability of its response alone.
"""

from __future__ import annotations

import torch

from lmlab.data.conversations import IGNORE


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the last dimension, in fp32."""
    return torch.log_softmax(logits.float(), dim=-1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """log p(target) at each position of (..., V) logits and (...) targets; 0 where target == ignore_index."""
    return gather_logprobs(log_probs(logits), targets, ignore_index)


def gather_logprobs(logp: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """`token_logprobs` from log-probabilities already computed, for a caller that also needs the whole
    distribution (an entropy)."""
    if ignore_index is None:
        return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    keep = targets != ignore_index
    picked = logp.gather(-1, targets.masked_fill(~keep, 0).unsqueeze(-1)).squeeze(-1)
    return picked * keep


def batch_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                   device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of each next token, 0 outside the labelled tokens; mask of the labelled tokens), both (B, T-1),
    for a batch from `lmlab.data.conversations.pad_batch` (ids, labels, mask, positions)."""
    logits = model(batch["ids"].to(device), attn_mask=batch["mask"].to(device), positions=batch["positions"].to(device))
    target = batch["labels"][:, 1:].to(device)
    return token_logprobs(logits[:, :-1], target, IGNORE), target != IGNORE


def sequence_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                      device: torch.device | str) -> torch.Tensor:
    """Sum over each row's labelled tokens of log p(token | everything before it)."""
    return batch_logprobs(model, batch, device)[0].sum(dim=1)
