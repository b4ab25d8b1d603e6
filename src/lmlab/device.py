"""Device choice, shared by training and inference: 'auto' means the GPU when there is one."""

from __future__ import annotations

import torch

from lmlab.errors import LmlabError

EXPECTED = "expected 'auto', 'cpu', 'cuda' or 'cuda:N'"


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; anything else must name a device this machine has.

    Checked here because torch accepts 'cuda' on a machine without one and fails only at the first
    tensor moved, deep in loading or training.
    """
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LmlabError(f"device {str(name)!r} is not a device name; {EXPECTED}") from None
    _check_present(device)
    return device


def _check_present(device: torch.device) -> None:
    # Backends with a torch module (cuda, mps, xpu, ...) can say whether they are here and how many there are.
    backend = getattr(torch, device.type, None)
    if hasattr(backend, "is_available") and not backend.is_available():
        raise LmlabError(f"device {str(device)!r}: no {device.type} device on this machine "
                         f"(or this torch build lacks {device.type} support); use 'cpu' or 'auto'")
    count = backend.device_count() if hasattr(backend, "device_count") else None
    if device.index is not None and count is not None and device.index >= count:
        raise LmlabError(f"device {str(device)!r}: this machine has {count} {device.type} device(s), "
                         f"numbered from 0")
