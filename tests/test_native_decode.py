"""The native (C) decode step: held to the PyTorch forward, and out of the way where it does not apply."""

from __future__ import annotations

import copy

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.infer import native
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams
from lmlab.model.config import ModelConfig, preset
from lmlab.model.kv_cache import KVCache
from lmlab.model.transformer import Transformer

CONFIGS = {
    "gpt2-bias": dict(bias=True),
    "llama-gqa-rope-swiglu": dict(norm="rmsnorm", positions="rope", mlp="swiglu", n_kv_heads=2,
                                  tie_embeddings=False),
    "gelu-tanh": dict(mlp="gelu_tanh", qkv_bias=True),
    "mup-wide": dict(parametrization="mup", d_model=64, mup_base_width=32),
    "odd-sizes": dict(d_model=36, n_heads=3, d_ff=100, vocab_size=71, bias=True),  # no multiple of 8 anywhere
}


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=48), **kw})
    model = Transformer(cfg).eval()
    with torch.no_grad():  # move off the init (unit norms, zero biases) so every parameter matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def lib():
    lib = native.load()
    if lib is None:
        pytest.skip(f"no native decode step here: {native.load_error()}")
    return lib


def _check_against_recomputation(model, decoder, ref_model):
    """Rows of different lengths, every decode step compared with the logits of a fresh full forward pass of
    `ref_model` over the whole sequence."""
    g = torch.Generator().manual_seed(1)
    lengths = [5, 1, 9, 3, 7, 2, 4, 8, 6]
    seqs = [torch.randint(0, model.cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
    cache = KVCache.for_model(model.cfg, len(seqs))
    x = torch.zeros(len(seqs), max(lengths), dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
    with torch.no_grad():
        ref_model(x, cache=cache)
        cache.advance(torch.tensor(lengths))
        nxt = torch.randint(0, model.cfg.vocab_size, (len(seqs),), generator=g)
        for _ in range(12):
            got = decoder.step(nxt, cache)
            cache.advance(1)
            for i, s in enumerate(seqs):
                s.append(int(nxt[i]))
                ref = ref_model(torch.tensor([s]))[0, -1]
                assert torch.allclose(got[i], ref, atol=1e-4, rtol=0), (i, (got[i] - ref).abs().max())
            nxt = got.argmax(-1)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_native_step_matches_full_recomputation(lib, monkeypatch, name, threads):
    """9 rows of different lengths; with several threads every phase of the step is split between them."""
    monkeypatch.setattr(native, "MIN_MACS_PER_THREAD", 0)
    model = _model(**CONFIGS[name])
    assert native.unsupported(model) is None
    decoder = native.NativeDecoder(model, lib)
    decoder.threads = threads
    _check_against_recomputation(model, decoder, model)


def test_native_step_with_bf16_weights(lib, monkeypatch):
    """bf16 weights, fp32 activations and cache: exactly an fp32 model holding the bf16-rounded weights."""
    monkeypatch.setattr(native, "MIN_MACS_PER_THREAD", 0)
    for name in ("gpt2-bias", "llama-gqa-rope-swiglu"):
        model = _model(**CONFIGS[name]).to(torch.bfloat16)
        assert native.unsupported(model) is None
        decoder = native.NativeDecoder(model, lib)
        decoder.threads = 2
        _check_against_recomputation(model, decoder, copy.deepcopy(model).float())


def test_engine_native_and_torch_agree(lib, tiny_data):
    from lmlab.data.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    model = _model(vocab_size=tok.vocab_size, bias=True)
    fast, ref = Engine(model, tok, backend="native"), Engine(model, tok, backend="torch")
    prompts = ["Question: Where was", "The answer is", "A"]
    for params in (SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True, logprobs=True),
                   SamplingParams(temperature=0.9, top_p=0.95, n=3, seed=5, max_new_tokens=20, ignore_eos=True,
                                  logprobs=True, repetition_penalty=1.2)):
        a, b = fast.generate(prompts, params), ref.generate(prompts, params)
        for oa, ob in zip(a, b):
            for ca, cb in zip(oa.completions, ob.completions):
                assert ca.token_ids == cb.token_ids
                assert max(abs(x - y) for x, y in zip(ca.logprobs, cb.logprobs)) < 1e-4


def test_threads_are_given_back(lib, tiny_data):
    from lmlab.data.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    before = torch.get_num_threads()
    eng = Engine(_model(vocab_size=tok.vocab_size), tok, backend="native")
    for _ in eng.stream(["A"] * 8, SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True)):
        pass
    assert torch.get_num_threads() == before


def test_unsupported_models_keep_the_torch_path(lib, tiny_data):
    from lmlab.data.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    moe = Transformer(preset("moe-tiny", vocab_size=tok.vocab_size, max_seq_len=32))
    assert "dense" in native.unsupported(moe)
    with pytest.raises(LmlabError, match="backend 'native' is not available.*dense"):
        Engine(moe, tok, backend="native")
    out = Engine(moe, tok).generate("A", SamplingParams(temperature=0, max_new_tokens=3, ignore_eos=True))
    assert len(out[0].completions[0].token_ids) == 3  # auto falls back to torch
    strided = _model(vocab_size=tok.vocab_size)
    w = strided.blocks[0].attn.qkv.weight
    w.data = w.data.t().contiguous().t()  # same values, column-major
    assert native.unsupported(strided) == "needs contiguous parameters"
    int8 = Engine(_model(vocab_size=tok.vocab_size), tok, weights="int8")
    assert int8._native() is None and "int8" in native.unsupported(int8.model)
    with pytest.raises(LmlabError, match="backend must be"):
        Engine(_model(vocab_size=tok.vocab_size), tok, backend="fast")


def test_position_past_the_cache_is_an_error(lib):
    model = _model()
    cache = KVCache.for_model(model.cfg, 1, max_len=4)
    cache.lengths[:] = 4
    with pytest.raises(ValueError, match="KV cache holds 4 positions"):
        native.NativeDecoder(model, lib).step(torch.tensor([1]), cache)


def test_no_compiler_means_torch_with_a_warning(monkeypatch, tmp_path, tiny_data):
    from lmlab.data.tokenizer import Tokenizer

    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_lib_error", None)
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.delenv("LMLAB_NATIVE", raising=False)  # the suite also runs with the native paths off
    with pytest.warns(UserWarning, match="native decode step is unavailable"):
        assert native.load() is None
    assert not list(tmp_path.rglob("*.so"))
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    out = Engine(_model(vocab_size=tok.vocab_size), tok).generate(
        "A", SamplingParams(temperature=0, max_new_tokens=3, ignore_eos=True))
    assert len(out[0].completions[0].token_ids) == 3
    with pytest.raises(LmlabError, match="no-such-cc"):
        Engine(_model(vocab_size=tok.vocab_size), tok, backend="native")


def test_build_is_cached_and_atomic(lib, monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_lib_error", None)
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    assert native.load() is not None
    built = list((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temporary files left behind
