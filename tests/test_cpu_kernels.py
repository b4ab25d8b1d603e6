"""The fused CPU kernels (attention, RMSNorm, linear layers, the MLP, the loss, the optimizer step) against
PyTorch's own ops and exact products, forward and backward, built for this CPU and for plain x86-64-v3
(AVX2, what most x86 machines have), and the model running through them."""

from __future__ import annotations

import copy
import platform
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from lmlab.model import autotune, cpu_kernels, ops
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer

BUILDS = ["native"] + (["x86-64-v3"] if platform.machine() in ("x86_64", "AMD64") else [])


@pytest.fixture(scope="module", params=BUILDS)
def lib(request):
    """The kernels built for this CPU (-march=native), then for plain AVX2 (x86-64-v3)."""
    if cpu_kernels.load() is None:
        pytest.skip(f"no fused CPU kernels here: {cpu_kernels._lib_error}")
    if request.param == "native":
        yield cpu_kernels._lib
        return
    try:
        with cpu_kernels.use_build(request.param) as built:
            yield built
    except RuntimeError as e:
        pytest.skip(f"no {request.param} build here: {e}")


@pytest.fixture
def forced(monkeypatch):
    """The model takes the kernels wherever they can run, whatever this CPU measured (their tests)."""
    monkeypatch.setenv("LMLAB_NATIVE", "force")
    autotune.forget()
    yield
    autotune.forget()


def _reference_attention(qkv, H, KV, D, scale, causal):
    B, T, _ = qkv.shape
    q, k, v = qkv.float().split([H * D, KV * D, KV * D], -1)
    q = q.view(B, T, H, D).transpose(1, 2)
    k = k.view(B, T, KV, D).transpose(1, 2).repeat_interleave(H // KV, 1)
    v = v.view(B, T, KV, D).transpose(1, 2).repeat_interleave(H // KV, 1)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return y.transpose(1, 2).reshape(B, T, H * D)


def _grads(fn, inputs, g):
    for t in inputs:
        t.grad = None
    (fn().float() * g.float()).sum().backward()
    return [t.grad.clone() for t in inputs]


# (batch, length, heads, kv heads, head dim, causal): lengths and head sizes off the 16-lane grid,
# grouped-query attention, and the Shakespeare benchmark's shape.
SHAPES = [(3, 17, 4, 2, 12, True), (12, 64, 4, 4, 32, True), (2, 9, 2, 2, 32, False), (2, 33, 6, 3, 20, False),
          (1, 1, 2, 1, 8, True), (2, 40, 2, 2, 64, True)]


@pytest.mark.parametrize("shape", SHAPES)
def test_attention_matches_sdpa_fp32(lib, shape):
    B, T, H, KV, D, causal = shape
    torch.manual_seed(0)
    qkv = torch.randn(B, T, (H + 2 * KV) * D, requires_grad=True)
    g = torch.randn(B, T, H * D)
    scale = D ** -0.5
    ours = cpu_kernels.attention(qkv, H, KV, D, scale, causal)
    ref = _reference_attention(qkv, H, KV, D, scale, causal)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=1e-5)
    (d_ours,) = _grads(lambda: cpu_kernels.attention(qkv, H, KV, D, scale, causal), [qkv], g)
    (d_ref,) = _grads(lambda: _reference_attention(qkv, H, KV, D, scale, causal), [qkv], g)
    torch.testing.assert_close(d_ours, d_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_attention_bf16_is_fp32_arithmetic_rounded_once(lib, shape):
    B, T, H, KV, D, causal = shape
    torch.manual_seed(1)
    qkv = torch.randn(B, T, (H + 2 * KV) * D).to(torch.bfloat16).requires_grad_()
    g = torch.randn(B, T, H * D).to(torch.bfloat16)
    ours = cpu_kernels.attention(qkv, H, KV, D, 0.3, causal)
    assert ours.dtype == torch.bfloat16
    exact = _reference_attention(qkv.detach().float(), H, KV, D, 0.3, causal)
    torch.testing.assert_close(ours.float(), exact, atol=1e-6, rtol=2 ** -8)  # within half a bf16 step
    (d_ours,) = _grads(lambda: cpu_kernels.attention(qkv, H, KV, D, 0.3, causal), [qkv], g)
    q32 = qkv.detach().float().requires_grad_()
    (d_exact,) = _grads(lambda: _reference_attention(q32, H, KV, D, 0.3, causal), [q32], g)
    torch.testing.assert_close(d_ours.float(), d_exact, atol=1e-5, rtol=2 ** -8)


def _rms_reference(x, w, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w  # lmlab's RMSNorm


def test_rms_norm_matches_torch(lib):
    torch.manual_seed(2)
    C = 131  # off the 16-lane grid
    x = (torch.randn(5, 7, C) * 3 + 1).requires_grad_()
    w = (1 + 0.1 * torch.randn(C)).requires_grad_()
    g = torch.randn(5, 7, C)
    torch.testing.assert_close(cpu_kernels.rms_norm(x, w, 1e-5), _rms_reference(x, w), atol=1e-5, rtol=1e-5)
    ours = _grads(lambda: cpu_kernels.rms_norm(x, w, 1e-5), [x, w], g)
    for a, r in zip(ours, _grads(lambda: _rms_reference(x, w), [x, w], g)):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-5)


def test_rms_norm_bf16_is_at_least_as_accurate_as_torch(lib):
    torch.manual_seed(3)
    x = torch.randn(768, 128).to(torch.bfloat16).requires_grad_()
    w = (1 + 0.1 * torch.randn(128)).to(torch.bfloat16).requires_grad_()
    g = torch.randn(768, 128).to(torch.bfloat16)
    ours = _grads(lambda: cpu_kernels.rms_norm(x, w, 1e-5), [x, w], g)
    theirs = _grads(lambda: _rms_reference(x, w), [x, w], g)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    exact = _grads(lambda: x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * w64, [x64, w64],
                   g.double())
    for o, t, e in zip(ours, theirs, exact):
        assert o.dtype == torch.bfloat16
        assert (o.double() - e).abs().max() <= (t.double() - e).abs().max()


def _model(**kw) -> Transformer:
    torch.manual_seed(5)
    cfg = dict(vocab_size=37, d_model=48, n_layers=2, n_heads=4, max_seq_len=24, bias=False, dropout=0.0)
    return Transformer(ModelConfig(**{**cfg, **kw}))


@pytest.mark.parametrize("kw", [{}, {"bias": True}, {"causal": False}, {"norm": "rmsnorm", "mlp": "swiglu"},
                                {"n_kv_heads": 2}])
def test_model_gradients_match_the_pytorch_ops(lib, forced, monkeypatch, kw):
    model = _model(**kw)
    idx = torch.randint(37, (3, 24), generator=torch.Generator().manual_seed(6))

    def run():
        model.zero_grad()
        logits = model(idx)
        F.cross_entropy(logits.view(-1, 37), idx.view(-1)).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    calls = []
    real = cpu_kernels.attention
    monkeypatch.setattr(cpu_kernels, "attention", lambda *a: calls.append(1) or real(*a))
    logits, grads = run()
    assert calls, "the fused attention kernel was not used"
    with torch.no_grad():  # evaluation: the forward without the saved statistics
        torch.testing.assert_close(model(idx), logits, atol=0, rtol=0)
    monkeypatch.setattr(cpu_kernels, "unusable_reason", lambda *t: "off")
    ref_logits, ref_grads = run()
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-5, rtol=1e-4, msg=n)


def test_attention_falls_back_where_the_kernel_does_not_apply(lib, forced, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "attention", lambda *a: pytest.fail("fused attention used"))
    idx = torch.randint(37, (2, 24))
    _model(positions="rope")(idx)  # rotary positions
    _model()(idx, attn_mask=torch.ones(2, 24, dtype=torch.bool))  # a padding mask
    drop = _model(dropout=0.1).train()
    drop(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _model()(idx)
    monkeypatch.setattr(cpu_kernels, "MAX_ATTENTION_LEN", 16)  # longer sequences: PyTorch's flash attention
    _model()(idx)
    assert not cpu_kernels.usable(torch.zeros(2, dtype=torch.float16))
    assert not cpu_kernels.usable(torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16))


def test_off_switch_and_missing_compiler(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_kernels, "_lib", None)
    monkeypatch.setattr(cpu_kernels, "_lib_error", None)
    monkeypatch.setenv("LMLAB_NATIVE", "0")
    assert cpu_kernels.load() is None and not cpu_kernels.usable(torch.zeros(2))
    monkeypatch.setattr(cpu_kernels, "_lib_error", None)
    monkeypatch.delenv("LMLAB_NATIVE")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.warns(UserWarning, match="fused CPU kernels are unavailable"):
        assert cpu_kernels.load() is None
    model = _model()  # the model still trains, through PyTorch's ops
    model(torch.randint(37, (1, 5))).sum().backward()
    with pytest.raises(RuntimeError, match="no-such-cc"):
        cpu_kernels.rms_norm(torch.zeros(3), torch.ones(3), 1e-5)


# ------------------------------------------------------------------------- the fused optimizer step

def _trained(fused: bool, steps: int, max_norm: float, accum: int = 1, state: dict | None = None):
    from lmlab.train.optim import make_adamw, param_groups
    from lmlab.train.precision import Precision

    model = _model(bias=True)
    prec = Precision(model, "bf16-master", torch.device("cpu"))
    named = list(zip([n for n, _ in model.named_parameters()], prec.master))
    opt = make_adamw(param_groups(named, 0.1, False), 3e-3, (0.9, 0.95), 1e-8, torch.device("cpu"))
    if state is not None:
        opt.load_state_dict(state)
    gen = torch.Generator().manual_seed(7)
    norms = []
    # fused=False: PyTorch's clip, AdamW and copies
    with mock.patch.object(ops, "fused_optimizer", lambda flat, opt: fused and flat.unfused_reason(opt) is None):
        for _ in range(steps):  # gradients that do not depend on the weights, so only the update is compared
            for _ in range(accum):
                for p in prec.model_params:
                    p.grad = (torch.randn(p.shape, generator=gen) * 0.1).to(p.dtype)
                prec.grads_to_master()
            norms.append(prec.step(opt, max_norm))
    return prec, opt, norms


@pytest.mark.parametrize(("max_norm", "accum"), [(0.0, 1), (0.5, 1), (1.0, 2)])
def test_fused_adamw_step_matches_pytorch(lib, max_norm, accum):
    fused, opt_f, norms_f = _trained(True, 6, max_norm, accum)
    ref, opt_r, norms_r = _trained(False, 6, max_norm, accum)
    assert norms_f == pytest.approx(norms_r, rel=1e-5)
    if max_norm:
        assert min(norms_r) > max_norm  # clipping was exercised
    torch.testing.assert_close(fused.flat_master, ref.flat_master, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused.flat_model, fused.flat_master.to(torch.bfloat16), atol=0, rtol=0)
    assert not fused.flat_grad.any()
    for p_f, p_r in zip(fused.master, ref.master):
        s_f, s_r = opt_f.state[p_f], opt_r.state[p_r]
        assert set(s_f) == set(s_r) and s_f["step"].dtype == s_r["step"].dtype
        assert float(s_f["step"]) == float(s_r["step"]) == 6
        torch.testing.assert_close(s_f["exp_avg"], s_r["exp_avg"], atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(s_f["exp_avg_sq"], s_r["exp_avg_sq"], atol=1e-9, rtol=1e-4)


def test_fused_step_state_loads_into_pytorch_and_back(lib):
    _, opt_f, _ = _trained(True, 3, 1.0)
    # a checkpoint of the fused optimizer resumes under PyTorch's AdamW, and the other way round
    ref, _, _ = _trained(False, 2, 1.0, state=copy.deepcopy(opt_f.state_dict()))  # (steps are shared otherwise)
    again, opt_a, _ = _trained(True, 2, 1.0, state=copy.deepcopy(opt_f.state_dict()))
    assert {float(st["step"]) for st in opt_a.state.values()} == {5.0}
    torch.testing.assert_close(again.flat_master, ref.flat_master, atol=1e-6, rtol=1e-5)


def test_results_do_not_depend_on_the_thread_count(lib):
    torch.manual_seed(8)
    qkv = torch.randn(5, 33, 3 * 4 * 16, requires_grad=True)
    x, w = torch.randn(300, 40, requires_grad=True), torch.randn(40, requires_grad=True)
    g_att, g_x = torch.randn(5, 33, 64), torch.randn(300, 40)
    saved = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            att = _grads(lambda: cpu_kernels.attention(qkv, 4, 4, 16, 0.25, True), [qkv], g_att)
            nrm = _grads(lambda: cpu_kernels.rms_norm(x, w, 1e-5), [x, w], g_x)
            out.append((cpu_kernels.attention(qkv, 4, 4, 16, 0.25, True), *att, *nrm))
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(out[0], out[1]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)  # the norm weight gradient: summation order
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])  # attention: bitwise


def test_rms_norm_takes_a_strided_weight(lib):
    torch.manual_seed(9)
    x, w = torch.randn(6, 40), torch.randn(40, 2)[:, 0]  # a weight view with stride 2
    assert not w.is_contiguous()
    torch.testing.assert_close(cpu_kernels.rms_norm(x, w, 1e-5), _rms_reference(x, w), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def amx(lib):
    if not cpu_kernels._amx:
        pytest.skip("this CPU (or kernel) gives no AMX tiles: the linear kernel is not built or not allowed")


def _bf16_close(ours, exact):
    """Within a couple of bf16 roundings of the exact (fp64) result, relative to its largest entry."""
    assert ours.dtype == torch.bfloat16
    err = (ours.double() - exact).abs().max() / exact.abs().max()
    assert err < 2 ** -7, float(err)


# (rows, outputs, inputs, bias): the Shakespeare model's four projections, a bias, a 96-row evaluation batch
@pytest.mark.parametrize("M,N,K,bias", [(768, 384, 128, False), (768, 128, 512, False), (96, 512, 128, True),
                                        (64, 32, 64, True), (768, 329, 128, False), (33, 17, 45, True),
                                        (1, 40, 7, False)])
def test_linear_matches_exact_products(amx, M, N, K, bias):
    torch.manual_seed(10)
    x = torch.randn(1, M, K).to(torch.bfloat16).requires_grad_()  # a 3-d input, as the model passes
    w = torch.randn(N, K).to(torch.bfloat16).requires_grad_()
    b = torch.randn(N).to(torch.bfloat16).requires_grad_() if bias else None
    y = cpu_kernels.linear(x, w, b)
    g = torch.randn_like(y)
    y.backward(g)
    xd, wd, gd = x.detach().double(), w.detach().double(), g.double()
    exact = xd @ wd.T + (b.detach().double() if bias else 0)
    _bf16_close(y, exact)
    _bf16_close(x.grad, gd @ wd)
    _bf16_close(w.grad, gd.reshape(M, N).T @ xd.reshape(M, K))
    if bias:
        _bf16_close(b.grad, gd.reshape(M, N).sum(0))
    else:  # PyTorch's bf16 matmul accumulates the same products in fp32 and rounds once: the same numbers
        assert torch.equal(y, F.linear(x.detach(), w.detach()))
    with torch.no_grad():
        assert torch.equal(cpu_kernels.linear(x, w, b), y)


def test_linear_is_used_only_where_it_applies(amx, monkeypatch):
    lin = torch.nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    x = torch.randn(2, 32, 64).to(torch.bfloat16)
    odd = x.reshape(64, 64)[:62]  # 62 rows: off the tile grid
    assert cpu_kernels.linear_usable(x, lin) and cpu_kernels.linear_usable(odd, lin)
    assert not cpu_kernels.linear_usable(x.float(), torch.nn.Linear(64, 32))  # fp32: PyTorch's (MKL) matmul
    assert not cpu_kernels.linear_usable(x.transpose(0, 1), lin)  # not contiguous
    big = torch.nn.Linear(1024, 512, bias=False).to(torch.bfloat16)  # past TILE_MAX_WEIGHT: oneDNN's blocking
    assert not cpu_kernels.linear_usable(torch.zeros(32, 1024, dtype=torch.bfloat16), big)
    many = torch.zeros(cpu_kernels.TILE_MAX_ROWS + 32, 64, dtype=torch.bfloat16)
    assert not cpu_kernels.linear_usable(many, lin)  # too many rows for its weight gradient...
    with torch.no_grad():
        assert cpu_kernels.linear_usable(many, lin)  # ...which evaluation does not need
    up, down = torch.nn.Linear(64, 256).to(torch.bfloat16), torch.nn.Linear(256, 64).to(torch.bfloat16)
    assert cpu_kernels.mlp_usable(x, up, down) and not cpu_kernels.mlp_usable(odd, up, down)
    lin.register_forward_hook(lambda *a: None)
    assert not cpu_kernels.linear_usable(x, lin)  # hooks see nn.Linear's own forward
    monkeypatch.setattr(cpu_kernels, "unusable_reason", lambda *t: "autocast")  # compile, modes, no library
    assert not cpu_kernels.linear_usable(x, torch.nn.Linear(64, 32, bias=False).to(torch.bfloat16))


def test_model_linear_layers_run_on_tiles(amx, forced, monkeypatch):
    """A bf16 model on the tile grid trains through the kernel, and its gradients are PyTorch's up to
    bf16 rounding of the products' sums."""
    torch.manual_seed(11)
    model = Transformer(ModelConfig(vocab_size=40, d_model=64, n_layers=2, n_heads=2, max_seq_len=32, bias=False,
                                    dropout=0.0)).to(torch.bfloat16)
    idx = torch.randint(40, (2, 32), generator=torch.Generator().manual_seed(12))

    def run():
        model.zero_grad()
        logits = model(idx)
        F.cross_entropy(logits.float().view(-1, 40), idx.view(-1)).backward()
        return logits.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters()}

    calls = []
    for name in ("linear", "gelu_mlp"):
        real = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    logits, grads = run()
    # per layer qkv and proj, and the MLP (up, GELU, down) in one; the head (40 tokens, padded to 64)
    assert sorted(calls) == ["gelu_mlp"] * 2 + ["linear"] * 5
    monkeypatch.setattr(cpu_kernels, "linear_reason", lambda *a: "off")
    ref_logits, ref_grads = run()
    assert (logits - ref_logits).abs().max() <= 2 ** -6 * ref_logits.abs().max()
    for n in grads:
        scale = ref_grads[n].abs().max()
        assert (grads[n] - ref_grads[n]).abs().max() <= 2 ** -5 * scale, n


@pytest.mark.parametrize("bias", [False, True])
def test_gelu_mlp_matches_exact_products(amx, bias):
    torch.manual_seed(14)
    up = torch.nn.Linear(64, 256, bias=bias).to(torch.bfloat16)
    down = torch.nn.Linear(256, 64, bias=bias).to(torch.bfloat16)
    x = (3 * torch.randn(2, 48, 64)).to(torch.bfloat16).requires_grad_()  # GELU's tails included
    y = cpu_kernels.gelu_mlp(x, up, down)
    g = torch.randn_like(y)
    y.backward(g)
    params = [up.weight, down.weight] + ([up.bias, down.bias] if bias else [])
    exact_in = [x.detach().double().requires_grad_()] + [p.detach().double().requires_grad_() for p in params]
    xd, wu, wd = exact_in[:3]
    bu, bd = exact_in[3:] if bias else (None, None)
    exact = F.linear(F.gelu(F.linear(xd, wu, bu)), wd, bd)
    exact.backward(g.double())
    _bf16_close(y, exact.detach())
    for ours, ref in zip([x, *params], exact_in):
        _bf16_close(ours.grad, ref.grad)
    # the GELU itself: the products rounded to bf16 as PyTorch's up projection does, then its erf GELU
    h = F.linear(x.detach(), up.weight, up.bias)
    with torch.no_grad():
        ours = cpu_kernels.gelu_mlp(x, up, down)
    torch.testing.assert_close(ours, F.linear(F.gelu(h), down.weight, down.bias), atol=2e-2, rtol=2e-2)


def test_linear_does_not_depend_on_the_thread_count(amx):
    torch.manual_seed(13)
    x, w = torch.randn(128, 96).to(torch.bfloat16).requires_grad_(), torch.randn(64, 96).to(torch.bfloat16)
    w.requires_grad_()
    g = torch.randn(128, 64).to(torch.bfloat16)
    saved, out = torch.get_num_threads(), []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            out.append((cpu_kernels.linear(x, w), *_grads(lambda: cpu_kernels.linear(x, w), [x, w], g)))
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(a, b) for a, b in zip(*out))  # each output block is one thread's: bitwise


def test_residual_is_added_in_the_same_pass(amx):
    """y = residual + layer(x) with one rounding; the residual's gradient is the output's."""
    torch.manual_seed(15)
    up = torch.nn.Linear(64, 256, bias=False).to(torch.bfloat16)
    down = torch.nn.Linear(256, 64, bias=False).to(torch.bfloat16)
    x = torch.randn(2, 32, 64).to(torch.bfloat16).requires_grad_()
    for fn, exact in ((lambda r: cpu_kernels.linear(x, down.weight[:, :64].contiguous(), None, r),
                       lambda r: x.double() @ down.weight[:, :64].double().T + r.double()),
                      (lambda r: cpu_kernels.gelu_mlp(x, up, down, r),
                       lambda r: F.gelu(x.double() @ up.weight.double().T) @ down.weight.double().T + r.double())):
        res = (10 * torch.randn(2, 32, 64)).to(torch.bfloat16).requires_grad_()
        y = fn(res)
        _bf16_close(y, exact(res).detach())
        g = torch.randn_like(y)
        y.backward(g)
        assert torch.equal(res.grad, g)
        with torch.no_grad():  # a residual that does not fit (another dtype): added afterwards
            torch.testing.assert_close(fn(res.float()).float(), y.detach().float(), atol=0.1, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_matches_pytorch(lib, dtype):
    torch.manual_seed(16)
    logits = (4 * torch.randn(3, 50, 329)).to(dtype).requires_grad_()
    target = torch.randint(329, (3, 50))
    target[0, :7] = -100  # ignored positions (the masked objective's unlabelled tokens)
    ours = cpu_kernels.cross_entropy(logits, target)
    g_ours, = torch.autograd.grad(ours * 3, logits)
    ref = F.cross_entropy(logits.float().view(-1, 329), target.view(-1), ignore_index=-100)
    g_ref, = torch.autograd.grad(ref * 3, logits)
    assert ours.dtype == torch.float32 and g_ours.dtype == dtype
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    # The gradient is scale * (softmax - onehot), scale = 3 / labelled rows. Each probability exp(x - lse) is
    # exact to a few fp32 roundings of its argument, whose size is up to max|x - lse|, and of exp itself
    # (both implementations' exps are within a few ulps): the bound is that, scaled, not one machine's error.
    u, scale = 2.0 ** -24, 3 / int((target != -100).sum())
    spread = float((logits.detach().float() - logits.detach().float().logsumexp(-1, keepdim=True)).abs().max())
    tol = scale * 8 * u * (spread + 4)
    if dtype == torch.bfloat16:
        tol += 2 ** -8 * g_ref.abs().max().item()  # and both round the fp32 gradient to bf16 once
    torch.testing.assert_close(g_ours.float(), g_ref.float(), atol=tol, rtol=0)
    assert tol < 1e-2 * g_ref.abs().max().item()  # the bound is still a test of the gradient
    with pytest.raises(IndexError, match="329 is out of bounds"):
        cpu_kernels.cross_entropy(logits, torch.full((3, 50), 329))
    assert torch.isnan(cpu_kernels.cross_entropy(logits, torch.full((3, 50), -100)))  # as PyTorch: 0 / 0
