"""The knowledge probe: batched engine answers equal one-by-one greedy answers, and grading is exact."""

from __future__ import annotations

import torch

from lmlab.data.tokenizer import Tokenizer
from lmlab.data.world import format_qa, load_world
from lmlab.evals.knowledge import answers, probe
from lmlab.infer.engine import Engine
from lmlab.infer.reference import generate
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer


def test_probe_matches_plain_greedy_and_grades_exactly(tiny_data):
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    world = load_world(tiny_data.parent / "world")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=64))
    engine = Engine(model, tok)
    items = world["qa_test"][:6]
    batched = answers(engine, [it["question"] for it in items])
    for it, got in zip(items, batched):
        new = generate(model, tok.encode(format_qa(it["question"])), 16, 0.0, stop_id=tok.eos_id)
        assert got == tok.decode(new).split("\n")[0].strip()
    res = probe(engine, world, per_group=5)
    assert res["train"]["n"] == res["test"]["n"] == 5 and 0 <= res["test"]["accuracy"] <= 1
    # grading is exact match: feeding the truth back as the "model" answer scores 100%
    world_copy = {**world, "qa_test": [{**it, "answer": a} for it, a in zip(items, batched)]}
    assert probe(engine, world_copy, per_group=6)["test"]["accuracy"] == 1.0
