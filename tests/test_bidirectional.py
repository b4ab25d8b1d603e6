"""The causal-vs-masked probe: held-out snippets locate each fact exactly; the three readings are scored."""

from __future__ import annotations

import torch

from lmlab.data.tokenizer import Tokenizer
from lmlab.data.world import load_world
from lmlab.evals.bidirectional import _value_tokens, compare, snippets
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer


def test_snippets_hold_each_fact_at_its_span(tiny_data):
    world = load_world(tiny_data.parent / "world")
    items = snippets(world, "qa_test", limit=4)
    people = {p["name"]: p for p in world["people"]}
    assert len(items) == 4 * 6 and items == snippets(world, "qa_test", limit=4)
    for it in items:
        a, b = it["span"]
        assert it["text"][a:b] == it["value"]
        assert sum(it["value"] == people[n][it["attribute"]] for n in people if n in it["text"]) >= 1
        assert it["text"].count(". ") >= 2  # three sentences: context on both sides of the fact
    bios = {row["text"] for row in world["bios"]}
    assert not any(it["text"] in b for it in items for b in bios)


def test_value_tokens_cover_the_span(tiny_data):
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    text = "Ada was born in North Haven. She studied law."
    ids, idx = _value_tokens(tok, text, (16, 27))
    assert tok.decode([ids[i] for i in idx]).strip() == "North Haven"


def test_compare_scores_three_readings(tiny_data):
    world = load_world(tiny_data.parent / "world")
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    torch.manual_seed(0)
    cfg = dict(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=256)
    causal, masked = Transformer(ModelConfig(**cfg)), Transformer(ModelConfig(**cfg, causal=False))
    items = snippets(world, "qa_test", limit=3)
    res = compare(causal, masked, tok, items)
    assert res["snippets"] == 18
    assert res["value_tokens"] == sum(len(_value_tokens(tok, it["text"], it["span"])[1]) for it in items)
    for key in ("causal", "masked_left", "masked_right"):
        assert set(res[key]["value_accuracy_by_attribute"]) == set(world["attributes"])
        assert 0 <= res[key]["value_accuracy"] <= 1 and 0 <= res[key]["token_accuracy"] <= 1
