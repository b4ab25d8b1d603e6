"""The inference engine on a real (random) model: exactness, seeds, stops, streaming, logprobs, scoring."""

from __future__ import annotations

import pytest
import torch

from lmlab.data.tokenizer import Tokenizer
from lmlab.errors import LmlabError
from lmlab.infer.engine import Engine
from lmlab.infer.reference import generate as plain_generate
from lmlab.infer.sampling import SamplingParams
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer


@pytest.fixture(scope="module")
def engine(tiny_data) -> Engine:
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=64)
    model = Transformer(cfg)
    with torch.no_grad():  # sharpen the random model so greedy text is varied, not one repeated token
        model.head.weight.mul_(8)
    return Engine(model, tok)


PROMPTS = ["Question: Where was", "The answer is", "A"]


def test_greedy_batch_equals_plain_recomputation(engine):
    params = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    outs = engine.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outs):
        ids = engine.tok.encode(prompt)
        ref = plain_generate(engine.model, ids, 12, 0.0)
        assert out.completions[0].token_ids == ref
        assert out.completions[0].finish_reason == "length"


def test_same_seed_same_samples_whatever_else_is_in_the_batch(engine):
    p = SamplingParams(temperature=1.0, max_new_tokens=10, seed=7, ignore_eos=True)
    other = SamplingParams(temperature=0.8, top_k=5, max_new_tokens=6, seed=3, ignore_eos=True)
    alone = engine.generate([PROMPTS[0]], p)[0].completions[0].token_ids
    mixed = engine.generate([PROMPTS[1], PROMPTS[0], PROMPTS[2]], [other, p, other])[1].completions[0].token_ids
    assert alone == mixed
    again = engine.generate([PROMPTS[0]], p)[0].completions[0].token_ids
    assert again == alone


def test_every_seed_the_api_accepts_samples(engine):
    """A seed up to 2**63 - 1 (what the server's schema allows) seeds each sample's generator, reproducibly:
    seed x 1,000,003 + j once overflowed the generator's 64 bits."""
    p = SamplingParams(temperature=1.0, max_new_tokens=6, seed=2**63 - 1, n=2, ignore_eos=True)
    first = [c.token_ids for c in engine.generate([PROMPTS[0]], p)[0].completions]
    assert first == [c.token_ids for c in engine.generate([PROMPTS[0]], p)[0].completions]
    assert len(first) == 2 and all(len(t) == 6 for t in first)


def test_n_samples_share_a_prompt(engine):
    out = engine.generate(PROMPTS[:2], SamplingParams(temperature=1.0, n=4, max_new_tokens=8, seed=1,
                                                      ignore_eos=True))
    assert [len(o.completions) for o in out] == [4, 4]
    assert len({tuple(c.token_ids) for c in out[0].completions}) > 1  # the samples differ
    assert out[0].usage == {"prompt_tokens": len(engine.tok.encode(PROMPTS[0])), "completion_tokens": 32,
                            "total_tokens": len(engine.tok.encode(PROMPTS[0])) + 32}


def test_stop_string_across_token_boundary_and_streaming(engine):
    base = SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True)
    full = engine.generate([PROMPTS[0]], base)[0].completions[0]
    pieces = [engine.tok.decode([t]) for t in full.token_ids]
    # a stop string made of the end of one token and the start of the next
    k = next(i for i in range(1, len(pieces)) if pieces[i - 1] and pieces[i])
    stop = pieces[k - 1][-1] + pieces[k][0]
    expected = full.text[: full.text.find(stop)]
    params = SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True, stop=[stop])
    done = engine.generate([PROMPTS[0]], params)[0].completions[0]
    assert done.text == expected and done.finish_reason == "stop"
    deltas = list(engine.stream([PROMPTS[0]], params))
    assert "".join(d.text for d in deltas) == expected
    assert deltas[-1].finish_reason == "stop" and all(d.finish_reason is None for d in deltas[:-1])


def test_streaming_concatenates_to_the_completion(engine):
    params = SamplingParams(temperature=1.0, max_new_tokens=15, seed=5, ignore_eos=True)
    final = engine.generate([PROMPTS[1]], params)[0].completions[0]
    streamed = list(engine.stream([PROMPTS[1]], params))
    assert "".join(d.text for d in streamed) == final.text
    assert [d.token_id for d in streamed] == final.token_ids


def test_logprobs_raw_and_processed(engine):
    params = SamplingParams(temperature=0.7, top_k=3, max_new_tokens=6, seed=2, logprobs=True, top_logprobs=3,
                            ignore_eos=True)
    c = engine.generate([PROMPTS[0]], params)[0].completions[0]
    ids = engine.tok.encode(PROMPTS[0])
    for t, lp, plp, top in zip(c.token_ids, c.logprobs, c.processed_logprobs, c.top_logprobs):
        with torch.no_grad():
            ref = torch.log_softmax(engine.model(torch.tensor([ids]))[0, -1].float(), -1)
        assert lp == pytest.approx(float(ref[t]), abs=1e-4)
        assert plp >= lp - 1e-6  # top-k renormalises onto fewer tokens
        assert len(top) == 3 and max(top.values()) == pytest.approx(float(ref.max()), abs=1e-4)
        ids.append(t)
    greedy = engine.generate([PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=3, logprobs=True,
                                                          ignore_eos=True))[0].completions[0]
    assert greedy.processed_logprobs == [0.0, 0.0, 0.0]


def test_edge_cases(engine):
    zero = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=0))[0].completions[0]
    assert zero.token_ids == [] and zero.text == "" and zero.finish_reason == "length"
    empty = engine.generate([""], SamplingParams(temperature=0, max_new_tokens=3, ignore_eos=True))[0]
    assert len(empty.completions[0].token_ids) == 3
    with pytest.raises(LmlabError, match="longer than the model's context"):
        engine.generate([[5] * 65], SamplingParams(max_new_tokens=1))
    near = engine.generate([[5] * 62], SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True))[0]
    assert len(near.completions[0].token_ids) == 2 and near.completions[0].finish_reason == "length"


def test_stops_at_end_of_document_by_default(engine):
    eos = engine.tok.eos_id
    ids = engine.tok.encode(PROMPTS[0])
    with torch.no_grad():
        h = engine.model(torch.tensor([ids]), return_hidden=True)[0, -1]
        saved = engine.model.head.weight[eos].clone()
        engine.model.head.weight[eos] = h / h.norm() * 1e3  # end-of-document becomes the likeliest next token
    try:
        c = engine.generate([PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=5))[0].completions[0]
        d = engine.generate([PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=5, ignore_eos=True))[0]
    finally:
        with torch.no_grad():
            engine.model.head.weight[eos] = saved
    assert c.finish_reason == "stop" and c.token_ids == [] and c.text == ""
    assert d.completions[0].token_ids[0] == eos and d.completions[0].finish_reason == "length"


def test_stop_token_ids(engine):
    full = engine.generate([PROMPTS[2]], SamplingParams(temperature=0, max_new_tokens=8, ignore_eos=True))
    ids = full[0].completions[0].token_ids
    stop_at = ids[3]
    first = ids.index(stop_at)
    c = engine.generate([PROMPTS[2]], SamplingParams(temperature=0, max_new_tokens=8, ignore_eos=True,
                                                      stop_token_ids=[stop_at]))[0].completions[0]
    assert c.token_ids == ids[:first] and c.finish_reason == "stop"


def test_score_matches_recomputation_and_batching(engine):
    prompts = ["Question: Who", "A", ""]
    conts = [" is here", "bc def", "The end"]
    batch = engine.score(prompts, conts)
    for p, c, s in zip(prompts, conts, batch):
        single = engine.score([p], [c])[0]
        assert s["total"] == pytest.approx(single["total"], abs=1e-4)
        ids = engine.encode(p)
        cids = engine.tok.encode(c)
        with torch.no_grad():
            logp = torch.log_softmax(engine.model(torch.tensor([ids + cids])).float(), -1)[0]
        ref = [float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(cids)]
        assert s["token_logprobs"] == pytest.approx(ref, abs=1e-4)
        assert s["total"] == pytest.approx(sum(ref), abs=1e-4)


def test_incremental_detokenisation_handles_split_characters(engine):
    from lmlab.infer.batch import Row, incremental_text

    text = "héllo 中文 🎉 done"
    ids = engine.tok.encode(text)
    assert len(ids) > len(text.encode("utf-8")) // 2  # byte-level: multi-byte characters span tokens
    row = Row(0, 0, SamplingParams(), 100, None)
    seen = []
    for t in ids:
        row.ids.append(t)
        seen.append(incremental_text(engine.tok, row))
    assert seen[-1] == text
    assert all(text.startswith(s.rstrip("\ufffd")) for s in seen)


@pytest.mark.parametrize("limits", [[30, 30, 2, 17, 12, 25, 14, 12, 30], [3, 30, 2, 17, 0, 25, 1, 12, 30]])
@pytest.mark.parametrize("backend", ["torch", "native"])
def test_rows_finishing_at_different_times_match_rows_run_alone(engine, backend, limits):
    """Finished rows stay in the cache until a quarter of it is finished, then it is compacted; a row whose
    long prompt would outgrow the cache while finished forces the compaction early. Either way every row
    gets exactly what it gets alone (greedy), including rows with nothing to generate."""
    if backend == "native":
        from lmlab.infer import native

        if native.load() is None:
            pytest.skip("no native decode step here")
    eng = Engine(engine.model, engine.tok, backend=backend)
    long_prompt = list(range(5, 5 + 58))  # 58 of the 64 positions: finished after 2 tokens, then it must go
    prompts = [PROMPTS[0], PROMPTS[1], long_prompt, PROMPTS[2], PROMPTS[0], PROMPTS[1], PROMPTS[2], "B", "C"]
    params = [SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True) for n in limits]
    together = eng.generate(prompts, params)
    for prompt, p, out in zip(prompts, params, together):
        alone = eng.generate([prompt], p)[0].completions[0].token_ids
        assert out.completions[0].token_ids == alone
        assert len(alone) == min(p.max_new_tokens, eng.cfg.max_seq_len - len(eng.encode(prompt)))


def test_context_cutting_a_generation_short_warns_once(tiny_data):
    import warnings

    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=16)
    eng = Engine(Transformer(cfg), tok)
    no_eos = dict(ignore_eos=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eng.generate([[5, 6, 7]] * 2, SamplingParams(max_new_tokens=8, **no_eos))  # fits: no warning
        out = eng.generate([[5, 6, 7]], SamplingParams(max_new_tokens=40, **no_eos))
        eng.generate([[5, 6, 7]], SamplingParams(max_new_tokens=40, **no_eos))
    said = [str(w.message) for w in caught if "context" in str(w.message)]
    assert len(said) == 1 and "room for 13 of the 40 new tokens" in said[0]
    assert out[0].completions[0].finish_reason == "length" and len(out[0].completions[0].token_ids) == 13
