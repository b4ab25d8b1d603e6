"""Weight-only int8 inference: small, measured change in outputs; the engine runs with it."""

from __future__ import annotations

import pytest
import torch

from lmlab.infer import quant
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer

pytestmark = pytest.mark.skipif(not quant.AVAILABLE, reason="no _weight_int8pack_mm in this PyTorch")


def test_int8_linear_matches_fp32_within_quantisation_error():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    q = quant.Int8Linear(lin)
    x = torch.randn(5, 7, 64)
    ref, out = lin(x), q(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.02, rel  # int8 weights + bf16 activations: about 1% relative error
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.abs().max() <= 127


def test_quantised_model_keeps_the_next_token(tiny_data):
    from lmlab.data.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, max_seq_len=48)
    model = Transformer(cfg).eval()
    x = torch.randint(0, tok.vocab_size, (4, 24))
    with torch.no_grad():
        ref = torch.log_softmax(model(x), -1)
    engine = Engine(model, tok, weights="int8")  # quantises the very model measured above
    assert not any(isinstance(m, torch.nn.Linear) for m in engine.model.modules())
    with torch.no_grad():
        out = torch.log_softmax(engine.model(x), -1)
    kl = (ref.exp() * (ref - out)).sum(-1).mean()
    assert kl < 1e-3 and (ref.argmax(-1) == out.argmax(-1)).float().mean() > 0.9
    res = engine.generate(["Question:"], SamplingParams(temperature=0, max_new_tokens=5, ignore_eos=True))
    assert len(res[0].completions[0].token_ids) == 5
