"""The Transformer (causal or bidirectional) and its configuration."""

from lmlab.model.config import ModelConfig, preset
from lmlab.model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer", "preset"]
