"""Compute of a training run: FLOPs, Chinchilla-optimal tokens and time on one accelerator (no torch).

FLOPs per token follow `lmlab.plan.flops`; the token budget, unless given, is
Chinchilla's rule of thumb, which `lmlab scale chinchilla` (scale/laws.py)
also reads from here.
"""

from __future__ import annotations

from typing import Any

from lmlab.model.config import ModelConfig
from lmlab.plan.flops import forward_flops_per_token, matmul_params
from lmlab.plan.params import param_counts
from lmlab.plan.settings import SizeConfig

RULE_TOKENS_PER_PARAM = 20.0
"""The rule of thumb drawn from Chinchilla's Approaches 1 and 2 (Hoffmann et al. 2022): train on about 20
tokens per parameter."""


def compute(m: ModelConfig, cfg: SizeConfig, context: int) -> dict[str, Any]:
    """FLOPs per token, for a training run, and its time on one accelerator at peak_tflops x mfu."""
    counts = param_counts(m)
    fwd = forward_flops_per_token(m, context)
    train_tok = 3 * fwd  # backward costs twice the forward; recomputation (checkpointing) is not model FLOPs
    chinchilla = round(RULE_TOKENS_PER_PARAM * counts["total"])  # a whole number of tokens
    tokens = float(cfg.train_tokens) if cfg.train_tokens is not None else float(chinchilla)
    total = train_tok * tokens
    source = f"Chinchilla-optimal ({RULE_TOKENS_PER_PARAM:g} x params)"
    return {
        "forward_flops_per_token": fwd,
        "training_flops_per_token": train_tok,
        "matmul_params_active": matmul_params(m, active=True),
        "chinchilla_tokens": chinchilla,
        "train_tokens": tokens,
        "train_tokens_source": "given" if cfg.train_tokens is not None else source,
        "training_flops": total,
        "six_n_d_flops": 6 * counts["active_per_token"] * tokens,
        "time_s": total / (cfg.peak_tflops * 1e12 * cfg.mfu),
        "time_note": "on one accelerator; divide by the number of accelerators",
    }
