"""FLOPs per token (`lmlab.plan.flops`) against the real model's parameters and measured FLOPs.

How the attention term is checked: `forward_flops_per_token(cfg, T)` charges every token for attending
over a full context of T (4 * L * T * d), i.e. T x T scores and T x T weighted sums per layer, with no
discount for the causal mask. PyTorch's `FlopCounterMode` counts `scaled_dot_product_attention` the same
way (full T x T, causal or not) when it can see it. On CPU, however, the default fused kernel
(`_scaled_dot_product_flash_attention_for_cpu`) has no FLOP formula registered and is counted as 0, so
the measurement below forces the MATH backend: it decomposes attention into two `bmm`s over the full
T x T score matrix (the causal mask is applied by masking, not by skipping work), which the counter
sees. With that, the model's measured forward FLOPs equal the formula exactly: `mm`/`addmm` (every
nn.Linear, head included; addmm when it has a bias) = 2 * matmul_params * T and `bmm` (attention) =
4 * L * T^2 * d.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmlab.model import ModelConfig, Transformer, preset
from lmlab.plan.flops import forward_flops_per_token, matmul_params, train_flops_per_token

CONFIGS = {
    "gpt2": dict(norm="layernorm", positions="learned", mlp="gelu", bias=True, tie_embeddings=True),
    "gpt2-untied": dict(norm="layernorm", positions="learned", mlp="gelu", tie_embeddings=False),
    "llama-gqa": dict(norm="rmsnorm", positions="rope", mlp="swiglu", tie_embeddings=False, n_kv_heads=2),
    "llama-mqa-dff": dict(norm="rmsnorm", positions="rope", mlp="swiglu", n_kv_heads=1, d_ff=40),
    "bidirectional": dict(causal=False, mlp="swiglu"),
    "moe-top2": dict(norm="rmsnorm", positions="rope", mlp="swiglu", n_experts=4, experts_per_token=2, d_ff=24),
    "moe-top1-bias": dict(mlp="gelu", bias=True, n_experts=3, experts_per_token=1, moe_renormalize=False),
}


def make(name: str, **overrides) -> Transformer:
    torch.manual_seed(0)
    kw = {**CONFIGS[name], **overrides}
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=24, **kw)
    return Transformer(cfg).eval()


def linear_weight_params(model: torch.nn.Module) -> int:
    """Weights of every nn.Linear (qkv, proj, up, down, head), counting a tied head as its own matmul."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("name", CONFIGS)
def test_matmul_params_equals_linear_weights(name):
    model = make(name)  # every expert's weights: a mixture holds all of them, a token runs through k
    assert matmul_params(model.cfg, active=False) == linear_weight_params(model)


@pytest.mark.parametrize("name", ["gpt2-small", "llama-mini"])
def test_matmul_params_on_presets_without_building(name):
    # Count the Linear weights on a meta device: no memory, exact shapes.
    cfg = preset(name)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert matmul_params(cfg) == linear_weight_params(model)


def measure(model: Transformer, t: int) -> dict[str, int]:
    x = torch.randint(0, model.cfg.vocab_size, (1, t), generator=torch.Generator().manual_seed(0))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return {str(k).split(".")[-1]: v for k, v in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("t", [1, 7, 24])
def test_measured_forward_flops_match_formula(name, t):
    model = make(name)
    cfg = model.cfg
    counts = measure(model, t)
    total = sum(counts.values())
    predicted = forward_flops_per_token(cfg, t) * t
    assert total == pytest.approx(predicted, rel=0.02)
    # The split is exact: linears vs. full-T x T attention (see module docstring).
    assert counts.get("mm", 0) + counts.get("addmm", 0) == 2 * matmul_params(cfg) * t
    assert counts.get("bmm", 0) == 4 * cfg.n_layers * t * t * cfg.d_model


def test_causal_mask_does_not_reduce_counted_flops():
    causal, bidir = make("gpt2"), make("gpt2", causal=False)
    counts = measure(causal, 16)
    assert counts == measure(bidir, 16)
    assert counts["bmm"] == 4 * causal.cfg.n_layers * 16 * 16 * causal.cfg.d_model


def test_train_flops_are_three_times_forward():
    cfg = preset("llama-tiny")
    assert train_flops_per_token(cfg, 128) == 3 * forward_flops_per_token(cfg, 128)
    # 6N + 12 L T d, the Kaplan/PaLM convention
    assert train_flops_per_token(cfg, 128) == 6 * matmul_params(cfg) + 12 * cfg.n_layers * 128 * cfg.d_model


def test_forward_flops_grow_linearly_in_context():
    cfg = preset("gpt-tiny")
    f = [forward_flops_per_token(cfg, c) for c in (0, 64, 128)]
    assert f[0] == 2 * matmul_params(cfg)
    assert f[2] - f[1] == f[1] - f[0] == 4 * cfg.n_layers * 64 * cfg.d_model
