"""The Transformer (causal or bidirectional) and its configuration.

`lmlab.model.config` imports no torch (so `lmlab size` can use it); the
Transformer is loaded on first use.
"""

from typing import Any

from lmlab.model.config import ModelConfig, preset

__all__ = ["ModelConfig", "Transformer", "preset"]


def __getattr__(name: str) -> Any:
    if name == "Transformer":
        from lmlab.model.transformer import Transformer

        return Transformer
    raise AttributeError(name)
