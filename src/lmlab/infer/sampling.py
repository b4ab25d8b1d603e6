"""Sampling controls: `SamplingParams`, the logits processors, and per-row sampling.

The pipeline turns a batch of next-token logits (B, V) into the distribution
that is actually sampled. Each row may carry its own `SamplingParams`. The
steps run in this one fixed order (the order of Hugging Face `generate` and
vLLM):

1. penalties, which need the token history of each row:
   a. repetition penalty (CTRL / HF / vLLM): for every token in `seen`
      (prompt + output), a logit > 0 is divided by the penalty and any other
      logit is multiplied by it;
   b. presence and frequency penalties (OpenAI / vLLM), on the output only:
      ``logit -= presence * (count > 0) + frequency * count``;
2. temperature: ``logits / T``. ``T == 0`` is greedy: the row becomes a one-hot
   on its argmax (0 there, -inf elsewhere; ties go to the lowest index) and
   steps 3-5 do not apply;
3. top-k: keep every token whose logit is >= the k-th largest logit (tokens
   tied with the k-th value are all kept); k = 0 or k >= V keeps everything;
4. top-p (nucleus), HF's `TopPLogitsWarper` rule (vLLM uses the same one):
   sort the logits ascending, take the cumulative sum of their softmax (in
   float32), remove the tokens whose cumulative probability is <= 1 - top_p
   (1 - top_p computed in double precision, compared in float32), and always
   keep the most probable token. Equivalently: going from the most probable
   token down, keep a token while the mass strictly before it is < top_p, so
   the token that crosses (or exactly reaches) the threshold is kept and the
   ones after it are not. With probabilities [0.5, 0.3, 0.2]: top_p=0.6 keeps
   2 tokens, top_p=0.4 keeps 1, 0.81 keeps 3; with [0.5, 0.25, 0.125, 0.125]
   (exact in float32) top_p=0.5 keeps 1 and 0.75 keeps 2 -- in general up to
   float32 rounding of the cumulative sum, which HF has too. One deliberate
   refinement for ties: when tokens with equal logits straddle the boundary,
   HF keeps an arbitrary subset of them (whatever its unstable sort puts
   last); here every token tied with the least likely kept token is kept, so
   the result never depends on token order. Without such a split tie the
   kept set is exactly HF's. top_p = 1 keeps everything (the step is
   skipped, as HF does);
5. min-p: keep tokens whose probability (softmax of the logits after steps
   1-4) is >= min_p * the largest probability; min_p = 0 keeps everything,
   min_p = 1 keeps only the token(s) tied for the maximum.

Filtered tokens get -inf, and every filter keeps at least one token (the most
probable one). Each processor is a pure function: it returns a new float32
tensor and never modifies its input. Per-row parameters are vectorised (a
scalar applies to every row; a sequence or a (B,) tensor gives one value per
row), so a row's result never depends on the other rows of the batch.

`sample_from` then draws one token per row from softmax(processed logits) by
inverse CDF, each row with its own `torch.Generator`, consuming exactly one
uniform number from that generator per sampled (non-greedy) row.
`analytic_distribution` is the exact distribution that `sample_from` draws
from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lmlab.errors import LmlabError

MAX_TOP_LOGPROBS = 20

Scalars = float | Sequence[float] | torch.Tensor


@dataclass
class SamplingParams:
    """How to pick each next token of one request."""

    temperature: float = 1.0
    """Softmax temperature: logits are divided by it. 0 = greedy (always the most likely token, ties to the lowest
    token id; top_k, top_p and min_p are then irrelevant, the penalties still apply)."""
    top_k: int = 0
    """Keep only the k most likely tokens (plus any tied with the k-th). 0 = disabled; k >= vocabulary keeps all."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches top_p, including the
    token that crosses it. In (0, 1]; 1 = disabled."""
    min_p: float = 0.0
    """Keep tokens whose probability is at least min_p times that of the most likely token. In [0, 1]; 0 = disabled."""
    repetition_penalty: float = 1.0
    """CTRL/HF repetition penalty on tokens already in the prompt or output: positive logits are divided by it,
    others multiplied. > 0; 1 = disabled, > 1 discourages repeats."""
    presence_penalty: float = 0.0
    """Subtracted once from the logit of every token already generated (OpenAI/vLLM; typically in [-2, 2])."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was already generated (OpenAI/vLLM; typically in [-2, 2])."""
    seed: int | None = None
    """Seed of this request's own random generator (reproducible regardless of batching); null = not seeded."""
    max_new_tokens: int = 100
    """Most tokens to generate per sample."""
    stop: list[str] = field(default_factory=list)
    """Stop a sample when its text contains any of these strings (the stop string is not returned)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Stop a sample when it generates any of these token ids."""
    n: int = 1
    """Samples to draw per prompt."""
    logprobs: bool = False
    """Report the log-probability of each generated token."""
    top_logprobs: int = 0
    """Also report this many most likely tokens and their log-probabilities at each step (0 = none, at most 20);
    > 0 implies logprobs."""
    ignore_eos: bool = False
    """Keep generating past the end-of-document token (by default it ends the completion with 'stop')."""

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LmlabError(f"{name} must be a finite number, got {value!r}")
        for name in ("top_k", "max_new_tokens", "n", "top_logprobs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise LmlabError(f"{name} must be an integer, got {value!r}")
        if self.temperature < 0:
            raise LmlabError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise LmlabError(f"top_k must be >= 0 (0 = disabled), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise LmlabError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise LmlabError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise LmlabError(f"repetition_penalty must be > 0 (1 = disabled), got {self.repetition_penalty}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise LmlabError(f"seed must be null or an integer in [0, 2**63), got {self.seed!r}")
        if self.max_new_tokens < 0:
            raise LmlabError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.n < 1:
            raise LmlabError(f"n must be >= 1, got {self.n}")
        if not isinstance(self.logprobs, bool):
            raise LmlabError(f"logprobs must be true or false, got {self.logprobs!r}")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise LmlabError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise LmlabError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
            raise LmlabError(f"stop_token_ids must be a list of token ids >= 0, got {self.stop_token_ids!r}")
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        """True when temperature is 0: the argmax is taken and no random number is drawn."""
        return self.temperature == 0

    @property
    def wants_logprobs(self) -> bool:
        """Whether per-token log-probabilities are to be reported (logprobs, or top_logprobs > 0)."""
        return self.logprobs or self.top_logprobs > 0

    def make_generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """A fresh generator seeded with `seed` on `device`, or None (the global RNG) when seed is null."""
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _as_float32(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, V), got {tuple(logits.shape)}")
    return logits.to(torch.float32, copy=True)


def _column(values: Scalars, batch: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A scalar, a sequence of B values or a (B,) tensor -> a (B, 1) tensor."""
    if isinstance(values, torch.Tensor):
        t = values.to(device=device, dtype=dtype).reshape(-1)
    elif isinstance(values, (int, float)):
        t = torch.full((batch,), values, dtype=dtype, device=device)
    else:
        t = torch.tensor(list(values), dtype=dtype, device=device)
    if t.numel() == 1 and batch != 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"expected 1 or {batch} per-row values, got {t.numel()}")
    return t.reshape(batch, 1)


def _check_history(name: str, hist: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if hist.shape != x.shape:
        raise ValueError(f"{name} must have the logits' shape {tuple(x.shape)}, got {tuple(hist.shape)}")
    return hist.to(x.device)


# ---------------------------------------------------------------------------------------------------------------
# the processors (each returns a new float32 tensor; inputs are never modified)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: Scalars) -> torch.Tensor:
    """For tokens where `seen` (bool (B, V), prompt + output) is true: logit > 0 -> logit / penalty, else
    logit * penalty (HF `RepetitionPenaltyLogitsProcessor`, vLLM). penalty is per row or one for all."""
    x = _as_float32(logits)
    seen = _check_history("seen", seen, x).bool()
    pen = _column(penalty, x.shape[0], x.device)
    penalised = torch.where(x > 0, x / pen, x * pen)
    return torch.where(seen, penalised, x)


def apply_presence_frequency(logits: torch.Tensor, counts: torch.Tensor, presence: Scalars,
                             frequency: Scalars) -> torch.Tensor:
    """``logit -= presence * (count > 0) + frequency * count`` with `counts` the (B, V) number of times each token
    was generated so far (output only, as in OpenAI and vLLM)."""
    x = _as_float32(logits)
    counts = _check_history("counts", counts, x).to(torch.float32)
    b = x.shape[0]
    pres = _column(presence, b, x.device)
    freq = _column(frequency, b, x.device)
    return x - (pres * (counts > 0).to(torch.float32) + freq * counts)


def apply_temperature(logits: torch.Tensor, temperature: Scalars) -> torch.Tensor:
    """``logits / T`` per row. Rows with T == 0 become greedy (see `apply_greedy`)."""
    x = _as_float32(logits)
    t = _column(temperature, x.shape[0], x.device)
    greedy = (t == 0).reshape(-1)
    out = x / torch.where(t == 0, torch.ones_like(t), t)
    # A temperature so small that logits / T overflows to +inf (below about 1e-38 in float32) is the greedy
    # limit in all but arithmetic: take it, rather than a softmax of inf - inf.
    if bool(torch.isposinf(out).any()):  # one check per step; the rare overflow is found row by row
        greedy |= torch.isposinf(out).any(dim=-1) & ~torch.isposinf(x).any(dim=-1)
    if greedy.any():
        out[greedy] = apply_greedy(x[greedy])
    return out


def apply_greedy(logits: torch.Tensor) -> torch.Tensor:
    """One-hot on each row's argmax: 0 there, -inf elsewhere. Ties go to the lowest index."""
    x = _as_float32(logits)
    top = torch.argmax(x, dim=-1, keepdim=True)  # first maximal index
    out = torch.full_like(x, -math.inf)
    return out.scatter_(1, top, 0.0)


def apply_top_k(logits: torch.Tensor, k: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Keep tokens whose logit is >= the k-th largest of their row (ties with it kept); k = 0 or k >= V keeps all.

    The same as HF's `TopKLogitsWarper` (``scores < topk(scores, k)[0][..., -1]`` are removed)."""
    x = _as_float32(logits)
    b, v = x.shape
    kk = _column(k, b, x.device, torch.long)
    active = (kk > 0) & (kk < v)
    if not active.any():
        return x
    desc = torch.sort(x, dim=-1, descending=True).values
    kth = desc.gather(1, kk.clamp(1, v) - 1)
    return x.masked_fill((x < kth) & active, -math.inf)


def _top_p_threshold(p: Scalars, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - p) computed in double and then rounded to float32 (as HF's python-float comparison), and p < 1."""
    pp = _column(p, batch, device, torch.float64)
    return (1.0 - pp).to(torch.float32), pp < 1


def apply_top_p(logits: torch.Tensor, p: Scalars) -> torch.Tensor:
    """Nucleus filter with HF's `TopPLogitsWarper` rule: sort ascending, cumsum of the sorted softmax, remove tokens
    whose cumulative probability is <= 1 - p, always keep the most probable; then keep every token tied with the
    least likely kept one (HF keeps an arbitrary part of such a tie). p = 1 keeps all.

    Equivalently (up to float rounding): keep a token iff the total probability of the tokens strictly more probable
    than it is < p -- the token that crosses p is kept, and so are the tokens tied with it."""
    x = _as_float32(logits)
    thresh, active = _top_p_threshold(p, x.shape[0], x.device)
    if not active.any():
        return x
    asc, idx = torch.sort(x, dim=-1, descending=False, stable=True)
    cum = asc.softmax(dim=-1).cumsum(dim=-1)
    # Tied logits have identical probabilities, so this sorted-space mask does not depend on how ties are ordered.
    remove_sorted = (cum <= thresh) & active
    remove_sorted[:, -1] = False
    # Keep every token >= the smallest kept logit: a tie straddling the boundary is kept whole.
    cutoff = asc.masked_fill(remove_sorted, math.inf).amin(dim=-1, keepdim=True)
    return x.masked_fill((x < cutoff) & active, -math.inf)


def apply_min_p(logits: torch.Tensor, min_p: Scalars) -> torch.Tensor:
    """Keep tokens with probability >= min_p * (largest probability of the row), as HF's `MinPLogitsWarper`.

    min_p = 0 keeps all; min_p = 1 keeps the token(s) tied for the maximum."""
    x = _as_float32(logits)
    mp = _column(min_p, x.shape[0], x.device)
    active = mp > 0
    if not active.any():
        return x
    probs = x.softmax(dim=-1)
    top = probs.amax(dim=-1, keepdim=True)
    remove = (probs < mp * top) & active
    return x.masked_fill(remove, -math.inf)


# ---------------------------------------------------------------------------------------------------------------
# the pipeline


def _params_list(params: SamplingParams | Sequence[SamplingParams], batch: int) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * batch
    plist = list(params)
    if len(plist) != batch:
        raise ValueError(f"got {len(plist)} SamplingParams for a batch of {batch} rows")
    return plist


def process_logits(logits: torch.Tensor, params: SamplingParams | Sequence[SamplingParams],
                   counts: torch.Tensor | None = None, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the whole pipeline (penalties, temperature, top-k, top-p, min-p; see the module docstring) to
    `logits` (B, V), row i under ``params[i]`` (or one `SamplingParams` for every row).

    counts: (B, V) integer counts of the tokens each row has generated so far (presence / frequency penalties).
    seen: (B, V) bool mask of the tokens in each row's prompt + output (repetition penalty); when omitted it
    defaults to ``counts > 0`` (the output only). A penalty that is active in some row without its history given
    is an error. Returns a new float32 (B, V) tensor; greedy rows come back as a one-hot (0 / -inf) on the argmax
    of the penalised logits.
    """
    x = _as_float32(logits)
    b = x.shape[0]
    plist = _params_list(params, b)

    rep = [p.repetition_penalty for p in plist]
    if any(r != 1 for r in rep):
        if seen is None:
            if counts is None:
                raise ValueError("repetition_penalty needs the token history: pass seen (or counts)")
            seen = counts > 0
        x = apply_repetition_penalty(x, seen, rep)
        # A penalty near 0 divides positive logits past float32's range: +inf, whose softmax is NaN. Held at
        # the largest float, the row's softmax is the limit: shared among the tokens that overflowed.
        if min(rep) < 1:  # only a penalty below 1 divides (enlarges) positive logits
            x = x.clamp(max=torch.finfo(torch.float32).max)
    pres = [p.presence_penalty for p in plist]
    freq = [p.frequency_penalty for p in plist]
    if any(v != 0 for v in pres + freq):
        if counts is None:
            raise ValueError("presence_penalty / frequency_penalty need the token history: pass counts")
        x = apply_presence_frequency(x, counts, pres, freq)

    temps = [p.temperature for p in plist]
    if any(t != 1 for t in temps):
        x = apply_temperature(x, temps)  # greedy rows become one-hot here
    rows = [p for p in plist if not p.greedy]
    if any(p.top_k > 0 or p.top_p < 1 or p.min_p > 0 for p in rows):
        # Filters only on the sampled rows (on a one-hot row they would be no-ops anyway).
        every = len(rows) == b
        sampled = None if every else ~torch.tensor([p.greedy for p in plist], device=x.device)
        y = x if every else x[sampled]
        if any(p.top_k > 0 for p in rows):
            y = apply_top_k(y, [p.top_k for p in rows])
        if any(p.top_p < 1 for p in rows):
            y = apply_top_p(y, [p.top_p for p in rows])
        if any(p.min_p > 0 for p in rows):
            y = apply_min_p(y, [p.min_p for p in rows])
        if every:
            return y
        x[sampled] = y
    return x


def _uniform(gen: torch.Generator | None) -> torch.Tensor:
    device = gen.device if gen is not None else torch.device("cpu")
    dtype = torch.float32 if device.type == "mps" else torch.float64
    return torch.rand((), generator=gen, device=device, dtype=dtype).to("cpu", torch.float64)


def sample_from(logits_processed: torch.Tensor, generators: Sequence[torch.Generator | None],
                greedy: Sequence[bool] | torch.Tensor | None = None,
                uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """Draw one token per row from softmax(logits_processed) -> LongTensor (B,).

    Row i uses only ``generators[i]`` (None = torch's global generator): one uniform number u is drawn from it and
    the token is the first one whose cumulative probability exceeds u (inverse CDF, computed in float64), so a
    row's token never depends on the other rows. Zero-probability (-inf) tokens are never drawn. Rows flagged in
    `greedy` (e.g. ``[p.greedy for p in params]``) take the argmax (lowest index on ties) and draw nothing from
    their generator. `uniforms` (B,), if given, are the rows' u values already drawn from their generators (the
    engine draws a whole completion's worth at once); `generators` is then not used.
    """
    x = logits_processed
    if x.dim() != 2:
        raise ValueError(f"logits must have shape (B, V), got {tuple(x.shape)}")
    b, v = x.shape
    gens = list(generators)
    if len(gens) != b:
        raise ValueError(f"got {len(gens)} generators for a batch of {b} rows")
    flags = [False] * b if greedy is None else [bool(g) for g in greedy]
    if len(flags) != b:
        raise ValueError(f"got {len(flags)} greedy flags for a batch of {b} rows")

    rows = [i for i in range(b) if not flags[i]]
    if not rows:
        return torch.argmax(x, dim=-1)
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    every = len(rows) == b  # the common case: no row gathering or scattering needed
    sel = None if every else torch.tensor(rows, device=x.device)
    probs = torch.softmax((x if every else x[sel]).to(dtype), dim=-1)
    cdf = probs.cumsum(dim=-1)
    if not bool((cdf[:, -1] > 0).all()):
        bad = rows[int((~(cdf[:, -1] > 0)).nonzero()[0])]
        raise ValueError(f"row {bad} has no finite logits to sample from")
    if uniforms is not None:
        u = uniforms.to(x.device, dtype)
        u = u if every else u[sel]
    else:
        u = torch.stack([_uniform(gens[i]) for i in rows]).to(x.device, dtype)
    target = (u * cdf[:, -1]).unsqueeze(1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(1)
    # The first token whose cumulative probability exceeds the target has positive probability, unless
    # u * total rounded up to total (idx == v): then take the last token with positive probability.
    if bool((idx == v).any()):
        last = (v - 1) - torch.argmax((probs > 0).flip(-1).to(torch.uint8), dim=-1)
        idx = torch.minimum(idx, last)
    if every:
        return idx
    out = torch.argmax(x, dim=-1)
    out[sel] = idx
    return out


def sample_tokens(logits: torch.Tensor, params: SamplingParams | Sequence[SamplingParams],
                  generators: Sequence[torch.Generator | None], counts: torch.Tensor | None = None,
                  seen: torch.Tensor | None = None) -> torch.Tensor:
    """`process_logits` then `sample_from` (greedy rows take the argmax): LongTensor (B,)."""
    plist = _params_list(params, logits.shape[0])
    return sample_from(process_logits(logits, plist, counts, seen), generators, [p.greedy for p in plist])


def history(prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]], vocab_size: int,
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Build (counts, seen) for `process_logits` from token-id lists: counts (B, V) int64 counts of each row's
    output tokens; seen (B, V) bool mask of the tokens in its prompt or output."""
    if len(prompts) != len(outputs):
        raise ValueError(f"got {len(prompts)} prompts and {len(outputs)} outputs")
    b = len(prompts)
    counts = torch.zeros(b, vocab_size, dtype=torch.long, device=device)
    seen = torch.zeros(b, vocab_size, dtype=torch.bool, device=device)
    for i, (pr, out) in enumerate(zip(prompts, outputs)):
        if len(out):
            ids = torch.as_tensor(list(out), dtype=torch.long, device=device)
            counts[i].index_add_(0, ids, torch.ones_like(ids))
            seen[i, ids] = True
        if len(pr):
            seen[i, torch.as_tensor(list(pr), dtype=torch.long, device=device)] = True
    return counts, seen


# ---------------------------------------------------------------------------------------------------------------
# analysis


def logprobs_of(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[i, token_ids[i]] -> (B,) float32. Pass raw logits for the model's own log-probabilities
    or processed ones for the sampled distribution's (a filtered token then has -inf)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    ids = torch.as_tensor(token_ids, device=lp.device, dtype=torch.long).reshape(-1, 1)
    return lp.gather(1, ids).squeeze(1)


def top_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely tokens per row: (log-probabilities (B, k) float32, token ids (B, k) int64), most likely
    first, equal values in increasing token id. k is clamped to V; k = 0 gives empty (B, 0) tensors."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    lp = torch.log_softmax(logits.float(), dim=-1)
    vals, ids = torch.sort(lp, dim=-1, descending=True, stable=True)
    k = min(k, lp.shape[-1])
    return vals[:, :k], ids[:, :k]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per row, in nats -> (B,) float32 (computed in float64; -inf tokens contribute 0)."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    p = lp.exp()
    terms = torch.where(p > 0, p * lp, torch.zeros_like(p))
    return (-terms.sum(dim=-1)).clamp_min(0).float()


def nucleus_size(logits: torch.Tensor, p: Scalars) -> torch.Tensor:
    """How many tokens top-p with this p keeps in each row -> (B,) int64 (tokens already at -inf not counted)."""
    return torch.isfinite(apply_top_p(logits, p)).sum(dim=-1)


def analytic_distribution(logits_1d: torch.Tensor, params: SamplingParams, counts: torch.Tensor | None = None,
                          seen: torch.Tensor | None = None) -> torch.Tensor:
    """The exact distribution (float64 (V,), sums to 1) that `sample_tokens` draws one row's next token from:
    softmax of the processed logits, a one-hot on the argmax for greedy params. counts / seen are (V,)."""
    if logits_1d.dim() != 1:
        raise ValueError(f"logits_1d must have shape (V,), got {tuple(logits_1d.shape)}")
    c = None if counts is None else counts.reshape(1, -1)
    s = None if seen is None else seen.reshape(1, -1)
    x = process_logits(logits_1d.reshape(1, -1), params, c, s)
    return torch.softmax(x.double(), dim=-1)[0]
