"""Continuous batching: rows that join a running batch, or leave it, get exactly what they get alone."""

from __future__ import annotations

import pytest
import torch

from lmlab.data.tokenizer import Tokenizer
from lmlab.infer.batch import Batch
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer


@pytest.fixture(scope="module")
def model_and_tok(tiny_data):
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=64)
    model = Transformer(cfg)
    with torch.no_grad():
        model.head.weight.mul_(8)
    return model, tok


def _alone(eng: Engine, prompt: str, p: SamplingParams) -> list[list[int]]:
    return [c.token_ids for c in eng.generate([prompt], p)[0].completions]


REQUESTS = [("Question: Where was", SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True)),
            ("The answer is", SamplingParams(temperature=1.0, top_p=0.9, n=3, max_new_tokens=15, seed=5,
                                             ignore_eos=True)),
            ("A", SamplingParams(temperature=0.7, top_k=8, max_new_tokens=9, seed=2, ignore_eos=True,
                                 repetition_penalty=1.3)),
            ("B", SamplingParams(temperature=1.0, max_new_tokens=30, seed=11, ignore_eos=True, stop=["e"])),
            ("Where", SamplingParams(temperature=0, max_new_tokens=0))]


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_requests_joining_at_different_steps_match_each_alone(model_and_tok, backend):
    """Request i joins after 3*i steps of the others; penalties arrive with a later request."""
    eng = Engine(*model_and_tok, backend=backend)
    batch = Batch(eng)
    joined: list[list] = []
    step = 0
    with torch.no_grad():
        while len(joined) < len(REQUESTS) or batch:
            if len(joined) < len(REQUESTS) and step == 3 * len(joined):
                prompt, p = REQUESTS[len(joined)]
                rows = eng.rows([eng.encode(prompt)], [p], streaming=True, owner=len(joined))
                batch.add([eng.encode(prompt)], rows)
                joined.append(rows)
            batch.sample()
            if batch:
                batch.forward()
            step += 1
    for (prompt, p), rows in zip(REQUESTS, joined):
        assert [r.ids for r in rows] == _alone(eng, prompt, p), prompt
        assert all(r.finish in ("length", "stop") for r in rows)


def test_cancelled_rows_leave_and_the_rest_go_on(model_and_tok):
    eng = Engine(*model_and_tok, backend="torch")
    batch = Batch(eng)
    p = SamplingParams(temperature=0, max_new_tokens=25, ignore_eos=True)
    keep = eng.rows([eng.encode("A")], [p], owner="keep")
    drop = eng.rows([eng.encode("B")], [SamplingParams(temperature=1.0, n=4, max_new_tokens=25, seed=1)],
                    owner="drop")
    with torch.no_grad():
        batch.add([eng.encode("A")], keep)
        batch.add([eng.encode("B")], drop)
        assert batch.n_live == 5
        for _ in range(4):
            batch.sample()
            batch.forward()
        assert batch.cancel("drop") == 4
        assert batch.n_live == 1 and all(r.finish == "cancelled" for r in drop)
        while batch:
            batch.sample()
            if batch:
                batch.forward()
    assert batch.cache is None and batch.slots == []  # an idle batch holds no cache
    assert keep[0].ids == _alone(eng, "A", p)[0]


def test_requests_admitted_together_share_one_prefill_and_match_each_alone(model_and_tok):
    eng = Engine(*model_and_tok, backend="torch")
    batch = Batch(eng)
    groups = []
    for i, (prompt, p) in enumerate(REQUESTS):
        ids = [eng.encode(prompt), eng.encode("The")] if i == 1 else [eng.encode(prompt)]
        groups.append((ids, eng.rows(ids, [p] * len(ids), owner=i)))
    calls = []
    real = eng._prefill
    eng._prefill = lambda prompts, cache: (calls.append(len(prompts)), real(prompts, cache))[1]
    with torch.no_grad():
        batch.add_groups(groups)
        while batch:
            batch.sample()
            if batch:
                batch.forward()
    assert calls == [6]  # one prefill for the six prompts of five requests
    for (prompt, p), (ids, rows) in zip(REQUESTS, groups):
        alone = eng.generate(ids, [p] * len(ids))
        assert [r.ids for r in rows] == [c.token_ids for o in alone for c in o.completions], prompt
