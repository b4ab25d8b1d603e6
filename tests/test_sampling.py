"""Sampling controls: parameter validation, each processor's exact semantics (checked against hand-computed values
and against verbatim re-implementations of Hugging Face's warpers), and the sampler's empirical distribution."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from scipy.stats import chisquare

from lmlab.config import field_docs, from_dict
from lmlab.errors import LmlabError
from lmlab.infer.sampling import (
    SamplingParams,
    analytic_distribution,
    apply_min_p,
    apply_presence_frequency,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    entropy,
    history,
    logprobs_of,
    nucleus_size,
    process_logits,
    sample_from,
    sample_tokens,
    top_logprobs,
)

# Hand-made logits, V = 16, with ties (two maxima at 2.0, a pair at 1.5, three at 1.0, a pair at -1.0).
LOGITS = torch.tensor([2.0, 2.0, 1.5, 1.0, 1.0, 1.0, 0.5, 0.0, -0.5, -1.0, -1.0, -2.0, -3.0, 0.3, 1.5, -0.2])
V = LOGITS.numel()
N_DRAWS = 20_000


# --- verbatim re-implementations of Hugging Face transformers' logits processors (min_tokens_to_keep = 1) -------

def hf_temperature(scores, temperature):
    return scores / temperature


def hf_top_k(scores, top_k):
    top_k = min(max(top_k, 1), scores.size(-1))
    indices_to_remove = scores < torch.topk(scores, top_k)[0][..., -1, None]
    return scores.masked_fill(indices_to_remove, -float("inf"))


def hf_top_p(scores, top_p):
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_indices_to_remove = cumulative_probs <= (1 - top_p)
    sorted_indices_to_remove[..., -1:] = 0
    indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
    return scores.masked_fill(indices_to_remove, -float("inf"))


def hf_min_p(scores, min_p):
    probs = torch.softmax(scores, dim=-1)
    top_probs = probs.amax(dim=-1, keepdim=True)
    scaled_min_p = min_p * top_probs
    tokens_to_remove = probs < scaled_min_p
    sorted_indices = torch.argsort(scores, descending=True, dim=-1)
    sorted_indices_to_remove = torch.gather(tokens_to_remove, dim=-1, index=sorted_indices)
    sorted_indices_to_remove[..., :1] = False
    indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
    return scores.masked_fill(indices_to_remove, -float("inf"))


def hf_repetition(input_ids, scores, penalty):
    score = torch.gather(scores, 1, input_ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return scores.scatter(1, input_ids, score)


def logits_of(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32)).reshape(1, -1)


def kept(x):
    return torch.isfinite(x).reshape(-1).tolist()


# --- SamplingParams -------------------------------------------------------------------------------------------

def test_every_field_has_a_docstring_and_loads_from_a_mapping():
    docs = field_docs(SamplingParams)
    for f in dataclasses.fields(SamplingParams):
        assert docs.get(f.name), f"SamplingParams.{f.name} has no attribute docstring"
    p = from_dict(SamplingParams, {"temperature": 0.7, "top_p": "0.9", "stop": ["\n\n"], "stop_token_ids": [3],
                                   "seed": 5, "top_logprobs": 2})
    assert (p.temperature, p.top_p, p.stop, p.stop_token_ids, p.seed) == (0.7, 0.9, ["\n\n"], [3], 5)
    assert p.wants_logprobs and not p.greedy and SamplingParams(temperature=0).greedy


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", math.inf), ("top_k", -1), ("top_k", 2.5), ("top_p", 0.0),
    ("top_p", 1.01), ("top_p", -0.5), ("min_p", -0.01), ("min_p", 1.5), ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0), ("presence_penalty", math.nan), ("frequency_penalty", "x"), ("n", 0),
    ("max_new_tokens", -1), ("top_logprobs", -1), ("top_logprobs", 21), ("seed", -3), ("seed", 1.5),
    ("stop", "\n"), ("stop", [""]), ("stop_token_ids", [-1]), ("logprobs", 1),
])
def test_validation_errors_name_the_field(field, value):
    with pytest.raises(LmlabError, match=rf"^{field} must"):
        SamplingParams(**{field: value})


def test_boundary_values_are_valid():
    SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, max_new_tokens=0, top_logprobs=20)
    SamplingParams(top_p=1e-6, min_p=1.0, repetition_penalty=0.5, presence_penalty=-2, frequency_penalty=2, seed=0)
    assert SamplingParams(seed=7).make_generator().initial_seed() == 7
    assert SamplingParams().make_generator() is None


# --- penalties ------------------------------------------------------------------------------------------------

def test_penalties_match_hand_computed_values():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 3.0, -4.0]])
    seen = torch.tensor([[True, True, False, True, False, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 0.0, 3.0, -8.0]]
    counts = torch.tensor([[2, 0, 1, 0, 3, 0]])
    out = apply_presence_frequency(logits, counts, 0.5, 0.25)
    assert out.tolist() == [[2.0 - 1.0, -1.0, 0.5 - 0.75, 0.0, 3.0 - 1.25, -4.0]]
    # The pipeline: repetition (prompt + output) first, then presence/frequency (output only).
    p = SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    out = process_logits(logits, p, counts=counts, seen=seen)
    assert out.tolist() == [[1.0 - 1.0, -2.0, 0.5 - 0.75, 0.0, 3.0 - 1.25, -8.0]]
    # Without `seen`, the repetition penalty sees the output only (counts > 0).
    out = process_logits(logits, SamplingParams(repetition_penalty=2.0), counts=counts)
    assert out.tolist() == [[1.0, -1.0, 0.25, 0.0, 1.5, -4.0]]
    with pytest.raises(ValueError, match="counts"):
        process_logits(logits, SamplingParams(presence_penalty=1.0))


def test_repetition_penalty_matches_hf_and_history_helper():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 3
    prompts = [[1, 2, 3], [], [7, 7, 40]]
    outputs = [[3, 4, 4, 4], [5], []]
    counts, seen = history(prompts, outputs, 50)
    assert counts[0, 4] == 3 and counts[0, 3] == 1 and counts[0, 1] == 0 and counts[2].sum() == 0
    assert seen[0, [1, 2, 3, 4]].all() and seen[0].sum() == 4 and seen[1].sum() == 1 and seen[2].sum() == 2
    for i in range(3):
        ids = torch.tensor([prompts[i] + outputs[i]], dtype=torch.long)
        mine = apply_repetition_penalty(logits[i:i + 1], seen[i:i + 1], 1.3)
        ref = hf_repetition(ids, logits[i:i + 1], 1.3) if ids.numel() else logits[i:i + 1]
        assert torch.equal(mine, ref)


# --- greedy ---------------------------------------------------------------------------------------------------

def test_greedy_is_one_hot_on_the_lowest_index_of_a_tie_and_draws_nothing():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [0.0, -1.0, 5.0, 5.0]])
    p = SamplingParams(temperature=0, top_k=1, top_p=0.1)
    out = process_logits(logits, p)
    assert out.tolist() == [[-math.inf, 0.0, -math.inf, -math.inf], [-math.inf, -math.inf, 0.0, -math.inf]]
    assert analytic_distribution(logits[0], p).tolist() == [0.0, 1.0, 0.0, 0.0]
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    assert sample_tokens(logits, p, [g, None]).tolist() == [1, 2]
    assert torch.equal(g.get_state(), state), "a greedy row must not consume its generator"
    # Penalties still apply before the argmax.
    out = process_logits(logits[:1], SamplingParams(temperature=0, repetition_penalty=4.0),
                         seen=torch.tensor([[False, True, False, False]]))
    assert kept(out) == [False, False, True, False]


# --- top-k ----------------------------------------------------------------------------------------------------

def test_top_k_keeps_ties_with_the_kth_value_and_large_k_keeps_all():
    x = LOGITS.reshape(1, -1)
    # Sorted: 2, 2, 1.5, 1.5, 1, 1, 1, 0.5, ... -> k=5 (5th value 1.0) keeps all seven tokens >= 1.0.
    out = apply_top_k(x, 5)
    assert sum(kept(out)) == 7 and torch.equal(torch.isfinite(out), x >= 1.0)
    assert sum(kept(apply_top_k(x, 1))) == 2  # the two tied maxima
    for k in (V, V + 1, 1000, 0):
        assert torch.equal(apply_top_k(x, k), x)
    # Matches HF for random logits with ties, per row.
    g = torch.Generator().manual_seed(2)
    logits = torch.round(torch.randn(6, 30, generator=g) * 2) / 2
    ks = [1, 2, 5, 13, 29, 30]
    assert torch.equal(apply_top_k(logits, ks), torch.cat([hf_top_k(logits[i:i + 1], k) for i, k in enumerate(ks)]))


# --- top-p ----------------------------------------------------------------------------------------------------

def tie_closure(filtered, original):
    """HF's kept set widened to every token tied with its least likely kept token (our documented tie rule)."""
    cutoff = original.masked_fill(torch.isinf(filtered), math.inf).amin(dim=-1, keepdim=True)
    return original.masked_fill(original < cutoff, -math.inf)


def test_top_p_keeps_the_threshold_crossing_token():
    x = logits_of([0.5, 0.3, 0.2])
    assert kept(apply_top_p(x, 0.6)) == [True, True, False]   # 0.5 < 0.6, crossing token 0.3 kept
    assert kept(apply_top_p(x, 0.4)) == [True, False, False]  # the first token already crosses 0.4
    assert kept(apply_top_p(x, 0.81)) == [True, True, True]
    assert kept(apply_top_p(x, 1e-6)) == [True, False, False]  # at least one token survives
    # Exactly representable (dyadic) probabilities: mass exactly reaching p stops there (HF: cum <= 1 - p removed).
    y = logits_of([0.5, 0.25, 0.125, 0.125])
    assert kept(apply_top_p(y, 0.5)) == [True, False, False, False]
    assert kept(apply_top_p(y, 0.5001)) == [True, True, False, False]
    assert kept(apply_top_p(y, 0.75)) == [True, True, False, False]
    for p in (0.5, 0.5001, 0.75):
        assert torch.equal(apply_top_p(y, p), hf_top_p(y, p))
    assert nucleus_size(torch.cat([y, y, y, y]), [0.5, 0.75, 0.76, 1.0]).tolist() == [1, 2, 4, 4]


def test_top_p_keeps_a_tie_straddling_the_boundary_whole():
    # At p = 0.76 HF keeps 3 of 4 tokens: one of the two tied 0.125 tokens, whichever its unstable sort puts last.
    # We keep both (both have mass 0.75 < 0.76 strictly above them), so the result is order-independent.
    y = logits_of([0.5, 0.25, 0.125, 0.125])
    for p in (0.76, 0.8, 0.875):
        assert sum(kept(hf_top_p(y, p))) == 3
        assert kept(apply_top_p(y, p)) == [True, True, True, True]
        assert torch.equal(apply_top_p(y, p), tie_closure(hf_top_p(y, p), y))
    # Permuting the tokens permutes the result.
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.equal(apply_top_p(y[:, perm], 0.6), apply_top_p(y, 0.6)[:, perm])


def test_top_p_one_keeps_all_and_matches_hf_on_a_grid():
    x = LOGITS.reshape(1, -1)
    assert torch.equal(apply_top_p(x, 1.0), x)
    # A token whose probability underflows to 0 is still kept at top_p = 1.
    z = torch.tensor([[0.0, -200.0, 1.0]])
    assert torch.equal(apply_top_p(z, 1.0), z)
    g = torch.Generator().manual_seed(3)
    rows = [torch.round(torch.randn(1, 24, generator=g) * 4) / 4 for _ in range(8)]
    rows += [torch.randn(1, 50, generator=g) for _ in range(4)]  # no ties: exactly HF
    rows += [LOGITS.reshape(1, -1), logits_of([0.5, 0.3, 0.2]), logits_of([0.5, 0.25, 0.125, 0.125])]
    ps = [0.01, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.625, 0.7, 0.75, 0.8, 0.875, 0.9, 0.95, 0.99, 0.999]
    for row in rows:
        ties = row.unique().numel() < row.numel()
        for p in ps:
            hf = hf_top_p(row, p)
            mine = apply_top_p(row, p)
            assert torch.equal(mine, tie_closure(hf, row)), (row, p)
            assert (torch.isfinite(hf) <= torch.isfinite(mine)).all()  # a superset of HF's kept set
            if not ties:
                assert torch.equal(mine, hf)
        batch = row.expand(len(ps), -1)
        assert torch.equal(apply_top_p(batch, ps), torch.cat([tie_closure(hf_top_p(row, p), row) for p in ps]))


# --- min-p ----------------------------------------------------------------------------------------------------

def test_min_p_rule_and_hf_agreement():
    x = logits_of([0.5, 0.25, 0.125, 0.125])  # exact in float32
    assert kept(apply_min_p(x, 0.5)) == [True, True, False, False]  # 0.25 >= 0.5 * 0.5: the boundary is kept
    assert kept(apply_min_p(x, 0.25)) == [True, True, True, True]
    assert kept(apply_min_p(x, 0.51)) == [True, False, False, False]
    assert kept(apply_min_p(x, 1.0)) == [True, False, False, False]
    assert torch.equal(apply_min_p(x, 0.0), x)
    assert sum(kept(apply_min_p(LOGITS.reshape(1, -1), 1.0))) == 2  # tied maxima both survive
    g = torch.Generator().manual_seed(4)
    logits = torch.round(torch.randn(5, 40, generator=g) * 3) / 2
    mps = [0.01, 0.05, 0.1, 0.3, 0.9]
    assert torch.equal(apply_min_p(logits, mps), torch.cat([hf_min_p(logits[i:i + 1], m) for i, m in enumerate(mps)]))


def test_full_pipeline_matches_the_hf_chain_and_is_pure():
    g = torch.Generator().manual_seed(5)
    logits = torch.round(torch.randn(4, 32, generator=g) * 4) / 2
    before = logits.clone()
    params = [SamplingParams(temperature=0.5, top_k=10, top_p=0.8, min_p=0.1),
              SamplingParams(temperature=2.0, top_k=3),
              SamplingParams(temperature=1.0, top_p=0.5, min_p=0.2),
              SamplingParams(temperature=0.25, min_p=0.05)]
    out = process_logits(logits, params)
    assert torch.equal(logits, before), "process_logits must not modify its input"
    for i, p in enumerate(params):
        ref = hf_temperature(logits[i:i + 1], p.temperature)
        ref = hf_top_k(ref, p.top_k) if p.top_k else ref
        ref = tie_closure(hf_top_p(ref, p.top_p), ref) if p.top_p < 1 else ref
        ref = hf_min_p(ref, p.min_p) if p.min_p else ref
        assert torch.equal(out[i:i + 1], ref), i
        # The same row processed alone gives the same result.
        assert torch.equal(process_logits(logits[i:i + 1], p), ref)


# --- the sampler's distribution -------------------------------------------------------------------------------

def draw(params: SamplingParams, n: int = N_DRAWS, seed: int = 0, counts=None, seen=None):
    """n draws from LOGITS under params: a batch of n identical rows, each with its own generator."""
    logits = LOGITS.expand(n, V)
    c = None if counts is None else counts.expand(n, V)
    s = None if seen is None else seen.expand(n, V)
    gens = [torch.Generator().manual_seed(seed * n + i) for i in range(n)]
    toks = sample_tokens(logits, params, gens, counts=c, seen=s)
    return torch.bincount(toks, minlength=V).double()


def check_matches(obs: torch.Tensor, probs: torch.Tensor) -> None:
    n = obs.sum().item()
    zero = probs == 0
    assert obs[zero].sum() == 0, f"filtered tokens were drawn: {obs[zero].tolist()}"
    tv = 0.5 * (obs / n - probs).abs().sum().item()
    assert tv < 0.02, f"total variation {tv:.4f}"
    # Chi-square on the live tokens, merging cells with expected count < 5 (with the smallest other if needed).
    exp = (probs[~zero] * n).tolist()
    ob = obs[~zero].tolist()
    big = [i for i, e in enumerate(exp) if e >= 5]
    small = [i for i, e in enumerate(exp) if e < 5]
    f_exp, f_obs = [exp[i] for i in big], [ob[i] for i in big]
    if small:
        se, so = sum(exp[i] for i in small), sum(ob[i] for i in small)
        if se < 5 and f_exp:
            j = min(range(len(f_exp)), key=f_exp.__getitem__)
            f_exp[j] += se
            f_obs[j] += so
        else:
            f_exp.append(se)
            f_obs.append(so)
    if len(f_exp) > 1:
        pvalue = chisquare(f_obs, f_exp).pvalue
        assert pvalue > 1e-3, f"chi-square p-value {pvalue:.2e}"


COUNTS = torch.tensor([0, 3, 0, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0])
SEEN = (COUNTS > 0) | (torch.arange(V) % 5 == 0)

DIST_CASES = {
    "T=0.5": SamplingParams(temperature=0.5),
    "T=1": SamplingParams(temperature=1.0),
    "T=2": SamplingParams(temperature=2.0),
    "top_k=5 (tie at k)": SamplingParams(top_k=5),
    "top_p=0.7": SamplingParams(top_p=0.7),
    "min_p=0.2": SamplingParams(min_p=0.2),
    "T=0.8+top_k=9+top_p=0.9": SamplingParams(temperature=0.8, top_k=9, top_p=0.9),
    "penalties+T=1.5+top_p=0.95+min_p=0.05": SamplingParams(temperature=1.5, top_p=0.95, min_p=0.05,
                                                            repetition_penalty=1.3, presence_penalty=0.4,
                                                            frequency_penalty=0.2),
}


@pytest.mark.parametrize("name", list(DIST_CASES))
def test_empirical_distribution_matches_analytic(name):
    """20,000 draws with `sample_from` agree with `analytic_distribution`: chi-square p-value > 1e-3 (cells with
    expected count < 5 merged) and total variation < 0.02 (the expected TV of 20,000 draws over 16 cells is at most
    about 0.011); tokens with analytic probability 0 are never drawn."""
    p = DIST_CASES[name]
    probs = analytic_distribution(LOGITS, p, counts=COUNTS, seen=SEEN)
    assert abs(probs.sum().item() - 1) < 1e-12
    if p.top_k or p.top_p < 1 or p.min_p:
        assert (probs == 0).any(), "the case should filter something"
    obs = draw(p, seed=list(DIST_CASES).index(name), counts=COUNTS, seen=SEEN)
    check_matches(obs, probs)


def test_analytic_distribution_filters_what_it_should():
    probs = analytic_distribution(LOGITS, SamplingParams(top_k=5))
    assert torch.equal(probs > 0, LOGITS >= 1.0)
    ref = torch.softmax(LOGITS.double(), -1)
    assert torch.allclose(analytic_distribution(LOGITS, SamplingParams()), ref)
    masked = torch.where(LOGITS >= 1.0, LOGITS.double(), -math.inf).softmax(-1)
    assert torch.allclose(probs, masked)


def test_single_survivor_is_always_drawn():
    for p in (SamplingParams(top_k=1, temperature=3.0), SamplingParams(min_p=1.0), SamplingParams(top_p=0.05)):
        x = LOGITS.clone()
        x[6] = 4.0  # unique maximum
        toks = sample_tokens(x.expand(500, V), p, [torch.Generator().manual_seed(i) for i in range(500)])
        assert (toks == 6).all()


def test_low_temperature_converges_to_argmax_and_entropy_falls_with_temperature():
    x = LOGITS.clone()
    x[3] = 2.5  # unique maximum, 0.5 above the runners-up
    counts = draw_counts(x, SamplingParams(temperature=0.05), 5000)
    assert counts[3] / 5000 > 0.99
    temps = [5.0, 3.0, 2.0, 1.5, 1.0, 0.75, 0.5, 0.3, 0.2, 0.1, 0.05]
    h = entropy(process_logits(x.expand(len(temps), V), [SamplingParams(temperature=t) for t in temps]))
    assert all(a > b for a, b in zip(h.tolist(), h.tolist()[1:])), h
    assert h[0] < math.log(V) and h[-1] < 0.01
    # With tied maxima the limit is the uniform choice between them: ln 2.
    h2 = entropy(process_logits(LOGITS.reshape(1, -1), SamplingParams(temperature=0.01)))
    assert abs(h2.item() - math.log(2)) < 1e-4


@pytest.mark.parametrize("t", [1e-40, 1e-45, 1e-30])
def test_a_temperature_too_small_for_float32_is_greedy_not_an_error(t):
    """logits / T overflows to +inf below about 1e-38 (found by the server's fuzz test): the greedy limit, not a
    softmax of inf - inf; above that the division is exact and sampling is already certain."""
    x = torch.randn(4, V, generator=torch.Generator().manual_seed(0))
    x[1, :3] = -math.inf  # tokens already filtered stay filtered
    got = sample_from(process_logits(x, SamplingParams(temperature=t)), [None] * 4)
    assert torch.equal(got, x.argmax(-1))


@pytest.mark.parametrize("r", [1e-45, 1e-40])
def test_a_repetition_penalty_near_zero_samples_among_the_overflowing_tokens(r):
    """Positive logits of seen tokens divided by r overflow float32 (found by the server's fuzz test): the row's
    softmax is then shared among them, the limit as r -> 0, instead of NaN and an error."""
    x = torch.randn(3, V, generator=torch.Generator().manual_seed(1)).abs() + 0.1
    counts = torch.zeros(3, V, dtype=torch.long)
    counts[:, :3] = 1
    p = SamplingParams(repetition_penalty=r, frequency_penalty=0.25)
    probs = torch.softmax(process_logits(x, p, counts=counts).double(), dim=-1)
    assert torch.allclose(probs[:, :3].sum(-1), torch.ones(3, dtype=torch.float64))
    got = sample_from(process_logits(x, p, counts=counts), [torch.Generator().manual_seed(i) for i in range(3)])
    assert bool((got < 3).all())


def draw_counts(x, p, n):
    toks = sample_tokens(x.expand(n, V), p, [torch.Generator().manual_seed(100 + i) for i in range(n)])
    return torch.bincount(toks, minlength=V)


# --- per-row generators ---------------------------------------------------------------------------------------

def test_a_rows_samples_do_not_depend_on_the_rest_of_the_batch():
    g = torch.Generator().manual_seed(6)
    steps = [torch.randn(5, 40, generator=g) for _ in range(60)]
    mine = SamplingParams(temperature=0.9, top_p=0.95, seed=1234)
    others = [SamplingParams(temperature=0), SamplingParams(temperature=1.7, top_k=4, seed=1),
              SamplingParams(min_p=0.3), SamplingParams(temperature=0.3, seed=99)]

    def run(batch):
        params = [mine] + others[:batch - 1]
        gens = [p.make_generator() or torch.Generator().manual_seed(7 + i) for i, p in enumerate(params)]
        return [sample_tokens(s[:batch], params, gens)[0].item() for s in steps]

    alone = run(1)
    assert alone == run(5) == run(3)
    assert len(set(alone)) > 5, "the row should really be sampling"
    # A different seed gives a different sequence.
    other = dataclasses.replace(mine, seed=4321)
    gen = other.make_generator()
    assert [sample_tokens(s[:1], other, [gen])[0].item() for s in steps] != alone


def test_sample_from_checks_its_inputs():
    with pytest.raises(ValueError, match="generators"):
        sample_from(torch.zeros(2, 3), [None])
    with pytest.raises(ValueError, match="no finite"):
        sample_from(torch.full((1, 3), -math.inf), [None])


# --- log-probabilities and entropy ----------------------------------------------------------------------------

def test_logprobs_top_logprobs_and_entropy():
    x = torch.log(torch.tensor([[0.1, 0.4, 0.1, 0.4], [0.25, 0.25, 0.25, 0.25]]))
    lp = logprobs_of(x, torch.tensor([1, 2]))
    assert torch.allclose(lp, torch.log(torch.tensor([0.4, 0.25])))
    vals, ids = top_logprobs(x, 3)
    assert ids.tolist() == [[1, 3, 0], [0, 1, 2]]  # ties in increasing token id
    assert torch.allclose(vals[0], torch.log(torch.tensor([0.4, 0.4, 0.1])))
    assert top_logprobs(x, 0)[0].shape == (2, 0) and top_logprobs(x, 99)[1].shape == (2, 4)
    h = entropy(x)
    assert torch.allclose(h, torch.tensor([-(0.2 * math.log(0.1) + 0.8 * math.log(0.4)), math.log(4)]))
    filtered = torch.tensor([[0.0, -math.inf, 0.0, -math.inf]])
    assert abs(entropy(filtered).item() - math.log(2)) < 1e-6
    assert logprobs_of(filtered, torch.tensor([1])).item() == -math.inf
