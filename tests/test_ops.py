"""The operations layer: each op chosen by measurement, the choice cached per CPU and kept only where the
kernel is faster, every call's path logged with why; the build cache keyed by the CPU, failed builds
remembered; and `lmlab doctor`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lmlab import cbuild
from lmlab.model import autotune, cpu_kernels, ops
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """Measure mode with an empty cache of choices."""
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    monkeypatch.delenv("LMLAB_NATIVE", raising=False)
    autotune.forget()
    autotune.reset()
    yield tmp_path
    autotune.forget()


@pytest.fixture
def kernels():
    if cpu_kernels.load() is None:
        pytest.skip(f"no fused CPU kernels here: {cpu_kernels._lib_error}")


def _step(model, idx):
    logits = model(idx)
    ops.cross_entropy(logits, idx).backward()
    return logits


def _model(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, d_model=64, n_layers=2, n_heads=4, max_seq_len=32, bias=False)
    return Transformer(ModelConfig(**{**cfg, **kw}))


def test_a_kernel_runs_only_where_its_measurement_says_it_wins(kernels, fresh):
    """Train a step in measure mode; every op that took the kernel has a cached measurement in which the
    kernel was faster, on this CPU, and every op whose measurement it lost took PyTorch's op."""
    idx = torch.randint(50, (4, 32), generator=torch.Generator().manual_seed(1))
    _step(_model(), idx)
    cache = json.loads((fresh / "native" / f"choices-{cbuild.cpu_key()}.json").read_text())
    assert {e["op"] for e in cache.values()} >= {"attention", "cross_entropy"}
    for entry in cache.values():
        wins = entry["native_us"] < autotune.MARGIN * entry["torch_us"]
        assert entry["impl"] == ("native" if wins else "torch"), entry
    took = {(c["op"], c["impl"]) for c in autotune.calls() if c["why"] == "measured"}
    for op in ("attention", "cross_entropy"):
        winners = {e["impl"] for e in cache.values() if e["op"] == op}
        assert {impl for o, impl in took if o == op} == winners, (op, winners, took)


def test_every_cached_choice_on_this_machine_is_a_win():
    """The real cache of this CPU (what runs here use): no kernel is chosen where it measured slower."""
    path = cbuild.cache_dir() / f"choices-{cbuild.cpu_key()}.json"
    if not path.exists():
        pytest.skip("no cached choices on this machine yet")
    for entry in json.loads(path.read_text()).values():
        if entry.get("impl") == "native":
            assert entry["native_us"] < autotune.MARGIN * entry["torch_us"], entry


def test_a_losing_kernel_is_not_used(kernels, fresh, monkeypatch):
    """Measurements that say the kernel loses keep PyTorch's op, and the model matches it exactly."""
    monkeypatch.setattr(autotune, "time_pair", lambda native, plain, **kw: (2e-3, 1e-3))
    monkeypatch.setattr(cpu_kernels, "attention", lambda *a: pytest.fail("a losing kernel ran"))
    monkeypatch.setattr(cpu_kernels, "cross_entropy", lambda *a: pytest.fail("a losing kernel ran"))
    model = _model()
    idx = torch.randint(50, (4, 32), generator=torch.Generator().manual_seed(1))
    logits = _step(model, idx)
    assert {c["impl"] for c in autotune.calls() if c["op"] in ("attention", "cross_entropy")} == {"torch"}
    assert all(e["impl"] == "torch" for e in autotune.measured())
    monkeypatch.setenv("LMLAB_NATIVE", "0")
    autotune.forget()
    torch.testing.assert_close(model(idx), logits, atol=0, rtol=0)


def test_a_winning_kernel_is_used_and_the_choice_is_cached(kernels, fresh, monkeypatch):
    monkeypatch.setattr(autotune, "time_pair", lambda native, plain, **kw: (1e-3, 2e-3))
    qkv = torch.randn(2, 16, 3 * 64, requires_grad=True)
    ops.attention(qkv, 4, 4, 0.25, True).sum().backward()
    assert [c["impl"] for c in autotune.calls() if c["op"] == "attention"] == ["native"]
    # a new process (memory forgotten) reads the choice from the cache and does not measure again
    autotune.forget()
    monkeypatch.setattr(autotune, "time_pair", lambda *a, **k: pytest.fail("measured twice"))
    ops.attention(qkv, 4, 4, 0.25, True)


def test_measuring_does_not_move_the_random_state(kernels, fresh):
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    ops.attention(torch.zeros(2, 8, 3 * 32), 2, 2, 0.25, True)  # measures (first time here)
    assert autotune.measured()
    torch.testing.assert_close(torch.rand(3), expected, atol=0, rtol=0)


def test_off_switch_and_reasons_are_logged(fresh, monkeypatch):
    monkeypatch.setenv("LMLAB_NATIVE", "0")
    idx = torch.randint(50, (2, 32))
    _model(positions="rope")(idx)
    reasons = {(c["op"], c["impl"], c["why"]) for c in autotune.calls()}
    assert ("attention", "torch", "rope, mask, cache, dropout or length") in reasons
    assert all(impl == "torch" for _, impl, _ in reasons)
    autotune.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ops.cross_entropy(torch.randn(4, 10), torch.arange(4))
    assert {c["why"] for c in autotune.calls()} <= {"autocast", "LMLAB_NATIVE=0", "kernels not built"}


def test_ops_match_pytorch_reference_whatever_is_chosen():
    """Whatever this machine chose, each op agrees with the plain PyTorch expression."""
    torch.manual_seed(4)
    x = torch.randn(3, 8, 16)
    w = torch.randn(16)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w)
    logits, labels = torch.randn(24, 11), torch.randint(11, (24,))
    torch.testing.assert_close(ops.cross_entropy(logits, labels), F.cross_entropy(logits, labels))
    up, down = torch.nn.Linear(16, 64), torch.nn.Linear(32, 16)
    h = up(x)
    gate, value = h.chunk(2, -1)
    torch.testing.assert_close(ops.mlp(x, up, down, "swiglu"), down(F.silu(gate) * value))


# ------------------------------------------------------------------------------------------- builds

def test_builds_are_keyed_by_cpu_and_target(monkeypatch, tmp_path):
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    src = cpu_kernels._SOURCE
    here = cbuild.library_path(src, ["-O2"])
    monkeypatch.setattr(cbuild, "cpu_info", lambda: {"model": "Other CPU", "machine": "x86_64", "flags": ["avx2"]})
    other = cbuild.library_path(src, ["-O2"])
    assert here != other and here.parent == other.parent
    monkeypatch.setenv("LMLAB_MARCH", "x86-64-v3")
    assert "x86-64-v3" in cbuild.library_path(src, ["-O2"]).name
    monkeypatch.setenv("LMLAB_MARCH", "native; rm -rf /")
    with pytest.raises(RuntimeError, match="not an architecture name"):
        cbuild.library_path(src, ["-O2"])


def test_a_failed_build_is_remembered(monkeypatch, tmp_path):
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.delenv("LMLAB_NATIVE", raising=False)
    src = tmp_path / "k.c"
    src.write_text("int f(void) { return 1; }\n")
    with pytest.warns(UserWarning, match="unavailable"):
        lib, why = cbuild.try_build(src, ["-shared", "-fPIC"], "k is", "fallback")
    assert lib is None and "no-such-cc" in why
    assert list((tmp_path / "native").glob("*.failed"))
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or pytest.fail("compiler retried"))
    with pytest.raises(RuntimeError, match="earlier build failed"):
        cbuild.build(src, ["-shared", "-fPIC"])
    assert not calls


def test_a_build_without_openmp_still_works(monkeypatch, tmp_path):
    """A compiler without -fopenmp (Apple clang) still builds the kernels, single-threaded."""
    if cbuild.compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    flags = [f for f in cpu_kernels._FLAGS if f != "-fopenmp"]
    lib = cbuild.build(cpu_kernels._SOURCE, flags)
    lib.lmlab_amx_ready.restype = int
    assert lib.lmlab_amx_ready() in (0, 1)


def test_parse_cpuinfo():
    text = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 fma\n\nprocessor\t: 1\n"
    assert cbuild.parse_cpuinfo(text) == ("AMD EPYC 7B13", ["avx2", "fma"])


# ------------------------------------------------------------------------------------------- doctor

def test_doctor_json(tmp_path):
    env = {"LMLAB_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "lmlab.cli", "doctor", "--json", "--peaks", "false",
                        "--threads", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["cpu"]["model"] and out["cpu"]["key"] == cbuild.cpu_key()
    assert out["torch"]["version"] == torch.__version__ and out["torch"]["threads"] == 1
    assert set(out["native"]["kernels"]) >= {"built", "march", "amx_tiles"}
    if out["native"]["kernels"]["built"]:
        ops_seen = {c["op"] for c in out["calls"]}
        assert {"attention", "cross_entropy"} <= ops_seen
        for c in out["choices"]:
            assert c["impl"] == ("native" if c["native_us"] < autotune.MARGIN * c["torch_us"] else "torch")
    assert "peaks_gflops" not in out
