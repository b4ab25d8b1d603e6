"""Numeric precision modes (`lmlab.train.precision`): bf16 weights with fp32 masters, and fp32."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from lmlab import cbuild
from lmlab.model import ModelConfig, Transformer
from lmlab.train import precision as prec_mod
from lmlab.train.hardware import cpu_has_fast_bf16
from lmlab.train.precision import Precision, resolve

CPU = torch.device("cpu")


def tiny(tie: bool = True) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, max_seq_len=16, bias=True,
                      tie_embeddings=tie)
    return Transformer(cfg)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 40, (2, 16), generator=g), torch.randint(0, 40, (2, 16), generator=g)


def loss_of(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    x, y = batch(seed)
    logits = model(x)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


# --- bf16-master --------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_bf16_master_casts_model_and_keeps_exact_fp32_masters(tie):
    model = tiny(tie)
    original = [p.detach().clone() for p in model.parameters()]
    prec = Precision(model, "bf16-master", CPU)
    assert prec.mode == "bf16-master" and prec.compute_dtype == torch.bfloat16
    params = list(model.parameters())
    assert len(prec.master) == len(params) == len(original)
    for p, m, o in zip(params, prec.master, original):
        assert p.dtype == torch.bfloat16
        assert m.dtype == torch.float32
        assert torch.equal(m, o)  # exactly the original fp32 weights, not bf16-rounded
        assert m.data_ptr() != p.data_ptr()
        assert torch.equal(p, o.to(torch.bfloat16))
        assert m.grad is not None and torch.count_nonzero(m.grad) == 0
    # with randomly initialised weights, bf16 rounding really loses information
    assert any(not torch.equal(p.float(), o) for p, o in zip(params, original))
    if tie:
        assert model.head.weight is model.tok_emb.weight


def test_bf16_master_forward_runs_in_bf16():
    model = tiny()
    Precision(model, "bf16-master", CPU)
    x, _ = batch()
    with torch.no_grad():
        assert model(x).dtype == torch.bfloat16


def test_grads_to_master_accumulates_two_backward_passes():
    model = tiny()
    prec = Precision(model, "bf16-master", CPU)
    loss_of(model, seed=0).backward()
    g1 = [p.grad.float().clone() for p in prec.model_params]
    assert all(p.grad.dtype == torch.bfloat16 for p in prec.model_params)
    prec.grads_to_master()
    assert all(p.grad is None for p in prec.model_params)  # model grads handed over and cleared
    for m, g in zip(prec.master, g1):
        assert m.grad.dtype == torch.float32
        assert torch.equal(m.grad, g)

    loss_of(model, seed=1).backward()
    g2 = [p.grad.float().clone() for p in prec.model_params]
    prec.grads_to_master()
    for m, a, b in zip(prec.master, g1, g2):
        torch.testing.assert_close(m.grad, a + b, rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(g1, g2))  # different batches, different grads

    prec.zero_grad()
    assert all(torch.count_nonzero(m.grad) == 0 for m in prec.master)
    assert all(p.grad is None for p in prec.model_params)


def test_grads_to_master_with_identical_passes_doubles_exactly():
    model = tiny()
    prec = Precision(model, "bf16-master", CPU)
    loss_of(model).backward()
    first = [p.grad.float().clone() for p in prec.model_params]
    prec.grads_to_master()
    loss_of(model).backward()
    prec.grads_to_master()
    for m, g in zip(prec.master, first):
        assert torch.equal(m.grad, 2 * g)


def test_master_to_model_copies_masters_into_bf16_weights():
    model = tiny()
    prec = Precision(model, "bf16-master", CPU)
    with torch.no_grad():
        for i, m in enumerate(prec.master):
            m.add_(0.5 + i)
    prec.master_to_model()
    for p, m in zip(model.parameters(), prec.master):
        assert p.dtype == torch.bfloat16
        assert torch.equal(p, m.to(torch.bfloat16))


def test_optimizer_on_masters_then_master_to_model():
    model = tiny()
    prec = Precision(model, "bf16-master", CPU)
    opt = torch.optim.SGD(prec.master, lr=0.1)
    before = [m.clone() for m in prec.master]
    loss_of(model).backward()
    prec.grads_to_master()
    opt.step()
    prec.master_to_model()
    for p, m, b in zip(model.parameters(), prec.master, before):
        torch.testing.assert_close(m, b - 0.1 * m.grad)
        assert torch.equal(p, m.to(torch.bfloat16))


def test_named_master_pairs_names_with_fp32_masters():
    model = tiny(tie=False)
    prec = Precision(model, "bf16-master", CPU)
    named = dict(prec.named_master())
    assert list(named) == [n for n, _ in model.named_parameters()]
    assert all(t.dtype == torch.float32 for t in named.values())
    assert torch.equal(named["head.weight"].to(torch.bfloat16), model.head.weight)


# --- fp32 ---------------------------------------------------------------------------------------


def test_fp32_mode_is_a_passthrough():
    model = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    prec = Precision(model, "fp32", CPU)
    assert prec.mode == "fp32" and prec.compute_dtype == torch.float32
    params = list(model.parameters())
    assert all(m is p for m, p in zip(prec.master, params))
    assert all(p.dtype == torch.float32 for p in params)
    assert isinstance(prec.autocast(), contextlib.nullcontext)

    loss_of(model).backward()
    grads = [p.grad.clone() for p in params]
    prec.grads_to_master()  # no-op: the optimizer reads the model's own grads
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))
    prec.master_to_model()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert dict(prec.named_master()).keys() == dict(model.named_parameters()).keys()
    prec.zero_grad()
    assert all(p.grad is None for p in params)


def test_bf16_autocast_on_cpu_keeps_fp32_weights_and_autocasts():
    model = tiny()
    prec = Precision(model, "bf16-autocast", CPU)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x, _ = batch()
    with prec.autocast(), torch.no_grad():
        assert model(x).dtype == torch.bfloat16


# --- resolve ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fast", "expected"), [(True, "bf16-master"), (False, "fp32")])
def test_resolve_auto_on_cpu_follows_cpu_bf16_support(monkeypatch, fast, expected):
    monkeypatch.setattr(prec_mod, "cpu_has_fast_bf16", lambda: fast)
    assert resolve("auto", CPU) == expected
    assert Precision(tiny(), "auto", CPU).mode == expected


def test_resolve_explicit_modes_and_bad_mode():
    for mode in ("fp32", "bf16-autocast", "bf16-master"):
        assert resolve(mode, CPU) == mode
    with pytest.raises(ValueError, match="bf16-maser"):
        resolve("bf16-maser", CPU)


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        ("flags\t: fpu sse avx2 avx512f\n", False),
        ("flags\t: fpu avx512f avx512_bf16 avx2\n", True),
        ("flags\t: fpu amx_bf16 amx_tile\n", True),
        ("", False),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_cpu_has_fast_bf16_reads_cpuinfo_flags(monkeypatch, cpuinfo, expected):
    _, flags = cbuild.parse_cpuinfo(cpuinfo)
    monkeypatch.setattr(cbuild, "cpu_info", lambda: {"model": "x", "machine": "x86_64", "flags": flags})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert cpu_has_fast_bf16() is expected
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN capped below its bf16 kernels: none to use
    assert cpu_has_fast_bf16() is False
