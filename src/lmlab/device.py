"""Device choice, shared by training and inference: 'auto' means the GPU when there is one."""

from __future__ import annotations

import torch


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; anything else is passed to torch."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
