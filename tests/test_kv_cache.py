"""KV-cache decoding gives the logits of full recomputation, for ragged batches, at every step."""

from __future__ import annotations

import pytest
import torch

from lmlab.model.config import ModelConfig
from lmlab.model.kv_cache import KVCache
from lmlab.model.transformer import Transformer

STYLES = {
    "gpt2": dict(norm="layernorm", positions="learned", mlp="gelu", bias=True),
    "llama-gqa": dict(norm="rmsnorm", positions="rope", mlp="swiglu", n_kv_heads=2, tie_embeddings=False),
}


@pytest.mark.parametrize("style", list(STYLES))
def test_cached_decoding_equals_full_recomputation(style):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, max_seq_len=40, **STYLES[style])
    model = Transformer(cfg).eval()
    prompts = [torch.randint(0, 61, (n,)).tolist() for n in (5, 1, 9)]
    steps = 12
    cache = KVCache.for_model(cfg, batch=len(prompts))
    lengths = torch.tensor([len(p) for p in prompts])
    padded = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = torch.tensor(p)
    seqs = [list(p) for p in prompts]
    with torch.no_grad():
        logits = model(padded, cache=cache)
        cache.advance(lengths)
        last = logits[torch.arange(len(prompts)), lengths - 1]
        for step in range(steps):
            for i, seq in enumerate(seqs):
                full = model(torch.tensor([seq]))[0, -1]
                assert torch.allclose(last[i], full, atol=1e-4), (style, step, i, (last[i] - full).abs().max())
            nxt = last.argmax(-1)
            for i, t in enumerate(nxt.tolist()):
                seqs[i].append(t)
            last = model(nxt[:, None], cache=cache)[:, 0]
            cache.advance(1)


def test_select_repeats_rows_for_n_samples():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2, max_seq_len=16)
    model = Transformer(cfg).eval()
    cache = KVCache.for_model(cfg, batch=2)
    x = torch.randint(0, 50, (2, 4))
    with torch.no_grad():
        model(x, cache=cache)
        cache.advance(4)
        cache.select(torch.tensor([0, 0, 1, 1]))
        nxt = torch.tensor([[3], [3], [7], [7]])
        out = model(nxt, cache=cache)[:, 0]
        ref0 = model(torch.cat([x[0], torch.tensor([3])])[None])[0, -1]
        ref1 = model(torch.cat([x[1], torch.tensor([7])])[None])[0, -1]
    assert torch.allclose(out[0], ref0, atol=1e-5) and torch.allclose(out[1], ref0, atol=1e-5)
    assert torch.allclose(out[2], ref1, atol=1e-5) and torch.allclose(out[3], ref1, atol=1e-5)


def test_cache_overflow_is_an_error():
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2, max_seq_len=8)
    model = Transformer(cfg).eval()
    cache = KVCache.for_model(cfg, batch=1)
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long), cache=cache)
        cache.advance(8)
        with pytest.raises(ValueError, match="positions"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
