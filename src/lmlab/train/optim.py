"""AdamW with sensible parameter groups, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import inspect
import math

import torch

from lmlab.model.transformer import is_hidden_matrix


def param_groups(named_params: list[tuple[str, torch.Tensor]], weight_decay: float,
                 decay_embeddings: bool, width_mult: float = 1.0) -> list[dict]:
    """Decay matrices; never decay norms and biases (1-D); embeddings only if asked.

    Decaying a LayerNorm gain pulls it towards 0 rather than its natural 1, and
    decaying biases has no regularising benefit, hence the exclusions. Under muP
    (`width_mult` != 1) the hidden matrices get their own group: Adam's learning
    rate / width_mult (each group's `lr_scale`, applied by the schedule) and weight
    decay x width_mult, so that the decay per step, lr x wd, is the same at every width.
    """
    decay, hidden, no_decay = [], [], []
    for name, p in named_params:
        is_embedding = "emb" in name.split(".")[0]
        if p.dim() < 2 or (is_embedding and not decay_embeddings):
            no_decay.append(p)
        elif width_mult != 1.0 and is_hidden_matrix(name, p):
            hidden.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    if hidden:
        groups.append({"params": hidden, "weight_decay": weight_decay * width_mult, "lr_scale": 1 / width_mult})
    return groups


def make_adamw(groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
               device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused where PyTorch supports it on this device, else foreach."""
    kwargs: dict = {}
    sig = inspect.signature(torch.optim.AdamW).parameters
    fused_ok = device.type == "cuda" or (device.type == "cpu" and torch.__version__ >= "2.4")
    if "fused" in sig and fused_ok:
        kwargs["fused"] = True
    elif "foreach" in sig:
        kwargs["foreach"] = True
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def lr_at(step: int, lr: float, min_lr: float, warmup: int, decay_steps: int) -> float:
    """Linear warmup over `warmup` steps, cosine decay to `min_lr` at `decay_steps`, then flat."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup) / max(1, decay_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
