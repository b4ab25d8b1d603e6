"""AdamW parameter groups and the warmup + cosine schedule (`lmlab.train.optim`)."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.model import ModelConfig, Transformer
from lmlab.train.optim import lr_at, make_adamw, param_groups

LR, MIN_LR, WARMUP, DECAY = 1e-3, 1e-4, 10, 100


def sched(step: int, warmup: int = WARMUP, decay: int = DECAY) -> float:
    return lr_at(step, LR, MIN_LR, warmup, decay)


# --- schedule -----------------------------------------------------------------------------------


def test_warmup_is_linear_and_starts_above_zero():
    values = [sched(s) for s in range(WARMUP)]
    assert values[0] > 0
    steps = [b - a for a, b in zip(values, values[1:])]
    for d in steps:
        assert d == pytest.approx(steps[0], rel=1e-9)
    assert steps[0] > 0
    # it extrapolates to 0 at step -1: lr * (s + 1) / (warmup + 1)
    assert values[0] == pytest.approx(LR / (WARMUP + 1))


def test_warmup_reaches_peak_lr():
    assert sched(WARMUP - 1) == pytest.approx(LR * WARMUP / (WARMUP + 1))
    assert sched(WARMUP - 1) >= 0.9 * LR
    assert sched(WARMUP) == pytest.approx(LR)  # first step after warmup is the peak
    assert max(sched(s) for s in range(DECAY + 10)) == pytest.approx(LR)


def test_cosine_reaches_min_lr_and_stays():
    assert sched(DECAY) == pytest.approx(MIN_LR)
    assert sched(DECAY - 1) > MIN_LR
    for s in (DECAY, DECAY + 1, 2 * DECAY, 10**6):
        assert sched(s) == MIN_LR


def test_cosine_midpoint_and_shape():
    mid = (WARMUP + DECAY) // 2
    assert sched(mid) == pytest.approx((LR + MIN_LR) / 2)
    # progress 1/4 into the decay (warmup 10, decay ends at 110): half-cosine at pi/4
    expected = MIN_LR + 0.5 * (1 + math.cos(math.pi / 4)) * (LR - MIN_LR)
    assert sched(35, decay=110) == pytest.approx(expected)


def test_monotone_decreasing_after_warmup():
    values = [sched(s) for s in range(WARMUP, DECAY + 20)]
    assert all(b <= a for a, b in zip(values, values[1:]))
    assert values[0] > values[-1]


def test_no_warmup_starts_at_peak():
    assert lr_at(0, LR, MIN_LR, 0, DECAY) == pytest.approx(LR)
    assert lr_at(DECAY, LR, MIN_LR, 0, DECAY) == pytest.approx(MIN_LR)


def test_constant_schedule_when_min_equals_peak():
    assert {lr_at(s, LR, LR, 0, DECAY) for s in range(0, DECAY + 5)} == {LR}


# --- parameter groups ---------------------------------------------------------------------------


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    base = dict(vocab_size=40, d_model=32, n_layers=2, n_heads=4, max_seq_len=16, bias=True,
                tie_embeddings=False)
    base.update(kw)
    return Transformer(ModelConfig(**base))


def group_names(model: Transformer, decay_embeddings: bool, wd: float = 0.1):
    named = list(model.named_parameters())
    groups = param_groups(named, wd, decay_embeddings)
    by_id = {id(p): n for n, p in named}
    assert [g["weight_decay"] for g in groups] == [wd, 0.0]
    decay = {by_id[id(p)] for p in groups[0]["params"]}
    no_decay = {by_id[id(p)] for p in groups[1]["params"]}
    assert decay.isdisjoint(no_decay)
    assert decay | no_decay == set(by_id.values())  # every parameter exactly once
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(named)
    return decay, no_decay


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_norms_and_biases_never_decay(decay_embeddings):
    model = tiny()
    decay, no_decay = group_names(model, decay_embeddings)
    one_d = {n for n, p in model.named_parameters() if p.dim() == 1}
    assert one_d  # layernorm weights and biases, linear biases
    assert any(n.endswith("norm1.weight") for n in one_d) and any(n.endswith("qkv.bias") for n in one_d)
    assert one_d <= no_decay
    matrices = {n for n, p in model.named_parameters() if p.dim() == 2 and "emb" not in n}
    assert "head.weight" in matrices and "blocks.0.attn.qkv.weight" in matrices
    assert matrices <= decay


def test_embeddings_decay_only_when_asked():
    model = tiny()
    decay, no_decay = group_names(model, decay_embeddings=False)
    assert {"tok_emb.weight", "pos_emb.weight"} <= no_decay
    decay, no_decay = group_names(model, decay_embeddings=True)
    assert {"tok_emb.weight", "pos_emb.weight"} <= decay


def test_rmsnorm_weights_do_not_decay():
    model = tiny(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False)
    decay, no_decay = group_names(model, decay_embeddings=True)
    assert no_decay == {n for n, p in model.named_parameters() if p.dim() == 1}
    assert all("norm" in n for n in no_decay)


# --- AdamW --------------------------------------------------------------------------------------


def test_make_adamw_on_cpu_uses_fused_and_applies_decay_per_group():
    model = tiny()
    named = list(model.named_parameters())
    before = {n: p.detach().clone() for n, p in named}
    groups = param_groups(named, 0.1, decay_embeddings=False)
    opt = make_adamw(groups, lr=0.01, betas=(0.9, 0.99), eps=1e-8, device=torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults.get("fused") or opt.defaults.get("foreach")
    if torch.__version__ >= "2.4":
        assert opt.defaults.get("fused") is True
    # With all-zero gradients Adam's update is 0, so only the decoupled weight decay moves weights.
    for _, p in named:
        p.grad = torch.zeros_like(p)
    opt.step()
    decay_ids = {id(p) for p in groups[0]["params"]}
    for n, p in named:
        if id(p) in decay_ids:
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.01 * 0.1), rtol=1e-6, atol=0)
            assert not torch.equal(p.detach(), before[n])
        else:
            assert torch.equal(p.detach(), before[n]), n


def test_make_adamw_matches_reference_adamw():
    """make_adamw's AdamW (fused on the CPU) and PyTorch's reference loop make the same updates.

    Both get the same gradients: gradients from two backward passes can differ in their last bits on some
    BLAS builds, and Adam turns a rounding-noise gradient (such as the key bias's, which is exactly 0 in
    exact arithmetic) into a step of up to lr, so comparing after backward passes tests the BLAS, not AdamW.
    """
    model_a, model_b = tiny(), tiny()
    lr, wd, steps = 3e-3, 0.1, 3
    opt_a = make_adamw(param_groups(list(model_a.named_parameters()), wd, True), lr, (0.9, 0.95), 1e-8,
                       torch.device("cpu"))
    opt_b = torch.optim.AdamW(param_groups(list(model_b.named_parameters()), wd, True), lr=lr,
                              betas=(0.9, 0.95), eps=1e-8, foreach=False, fused=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for pa, pb in zip(model_a.parameters(), model_b.parameters()):
            g = torch.randn(pa.shape, generator=gen) * 10 ** (-3 * torch.rand(1, generator=gen).item())
            pa.grad, pb.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    # Each step moves a weight by lr * m_hat / (sqrt(v_hat) + eps) (at most ~lr) plus lr * wd * w; both are
    # computed to within a few fp32 roundings (u = 2^-24) in either implementation, so after `steps` steps
    # the weights agree to steps * 16 u (lr + |w|): a bound from the arithmetic, not from one machine.
    u = 2.0 ** -24
    for (na, pa), (_, pb) in zip(model_a.named_parameters(), model_b.named_parameters()):
        bound = steps * 16 * u * (lr + pb.detach().abs().max().item())
        assert (pa.detach() - pb.detach()).abs().max().item() <= bound, na
    start = tiny().tok_emb.weight
    assert (model_a.tok_emb.weight.detach() - start).abs().max() > 1e3 * steps * 16 * u  # the weights moved
