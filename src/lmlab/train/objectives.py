"""Self-supervised objectives: what a causal and a masked language model are trained to predict.

Both read the same token windows. The causal objective predicts token t+1 from
tokens <= t (teacher forcing; the attention mask hides the future). The masked
objective (BERT, Devlin et al. 2019) corrupts a random 15% of the positions -
80% of those become the mask token, 10% a random token, 10% stay as they are -
and predicts the original token at exactly those positions, seeing the whole
window in both directions. The corruption is drawn from a generator seeded by
the step, so a resumed run sees the same masks as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError
from lmlab.model import ops

IGNORE = -100
"""Label of positions that carry no loss."""


@dataclass
class MaskingConfig:
    rate: float = 0.15
    """Share of positions chosen for prediction in the masked objective."""
    mask_fraction: float = 0.8
    """Of the chosen positions, the share replaced by the mask token."""
    random_fraction: float = 0.1
    """Of the chosen positions, the share replaced by a random token (the rest keep their token)."""

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1:
            raise LmlabError(f"mlm.rate must be in (0, 1], got {self.rate}")
        if self.mask_fraction < 0 or self.random_fraction < 0 or self.mask_fraction + self.random_fraction > 1:
            raise LmlabError(f"mlm.mask_fraction + mlm.random_fraction must lie in [0, 1] with both >= 0, got "
                             f"{self.mask_fraction} + {self.random_fraction}")


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions, always computed in fp32 (bf16 logits are upcast)."""
    return ops.cross_entropy(logits, labels, ignore_index)


def causal_lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits are upcast so the loss is always fp32."""
    return token_cross_entropy(model(x), y)


def corrupt(x: torch.Tensor, cfg: MaskingConfig, mask_id: int, vocab_size: int, seed: int,
            protected: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) for the masked objective; labels are IGNORE except at the chosen positions.

    `protected` ids (special tokens such as a document separator) are never chosen. At least one
    position per batch is chosen, so the loss is always defined.
    """
    g = torch.Generator().manual_seed(seed)
    chosen = torch.rand(x.shape, generator=g) < cfg.rate
    if protected is not None:
        chosen &= ~torch.isin(x, protected)
    if not chosen.any():
        chosen.view(-1)[int(torch.randint(x.numel(), (1,), generator=g))] = True
    how = torch.rand(x.shape, generator=g)
    random_tokens = torch.randint(vocab_size, x.shape, generator=g)
    inputs = x.clone()
    to_mask = chosen & (how < cfg.mask_fraction)
    to_random = chosen & (how >= cfg.mask_fraction) & (how < cfg.mask_fraction + cfg.random_fraction)
    inputs[to_mask] = mask_id
    inputs[to_random] = random_tokens[to_random]
    return inputs, torch.where(chosen, x, torch.full_like(x, IGNORE))


def masked_lm_loss(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the chosen positions only (fp32). The vocabulary head runs on those positions
    alone (15% of them by default): the same loss as scoring every position and ignoring the rest, for a
    seventh of the head's work."""
    hidden = model(inputs, return_hidden=True)
    chosen = labels != IGNORE
    return token_cross_entropy(model.logits(hidden[chosen]), labels[chosen])
