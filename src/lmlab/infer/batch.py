"""Continuous batching: rows that decode together over one KV cache, joining and leaving between steps.

A `Batch` holds one cache row per live sample. `add` prefills new prompts and
appends their rows to the cache; `sample` draws one token for every live row
and retires the rows that finished; `forward` runs one decode step for the
survivors. `Engine.generate` adds once and loops; `lmlab serve` adds waiting
requests between steps, so concurrent requests share every decode step.

Each sampled row draws its uniforms from its own generator when it is made, and
uses the k-th one for its k-th token, so a seeded row's tokens do not depend on
which other rows share its steps. Stop strings are matched on the decoded text,
so they are found across token boundaries, and streamed text holds back
anything that could still turn into a stop string.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmlab.infer import native
from lmlab.infer.sampling import SamplingParams, logprobs_of, process_logits, sample_from, top_logprobs
from lmlab.model.kv_cache import KVCache


@dataclass
class Delta:
    """A streamed piece of one completion: new text (possibly empty) and the token that produced it."""

    prompt_index: int
    index: int
    token_id: int
    text: str
    finish_reason: str | None = None
    owner: Any = None
    """Whatever `Batch.add` was given as the row's owner (the server's request)."""


@dataclass
class Row:
    """One sample being generated: its parameters, the tokens so far and their log-probabilities."""

    prompt: int
    index: int
    params: SamplingParams
    limit: int
    uniforms: list[float] | None
    streaming: bool = False
    owner: Any = None
    ids: list[int] = field(default_factory=list)
    drawn: int = 0
    """Tokens drawn, a final stop token included (it ends the row but is not in `ids`)."""
    text: str = ""
    emitted: int = 0
    settled_ids: int = 0
    settled_text: str = ""
    finish: str | None = None
    logprobs: list[float] = field(default_factory=list)
    processed: list[float] = field(default_factory=list)
    tops: list[dict[int, float]] = field(default_factory=list)


def is_plain_greedy(p: SamplingParams) -> bool:
    return p.temperature == 0 and not has_penalty(p)


def has_penalty(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def incremental_text(tok, r: Row) -> str:
    """The row's text so far, decoding only the tokens after the last complete character.

    Decoding the whole sequence every step would make each token cost more as the text grows.
    """
    tail = tok.decode(r.ids[r.settled_ids:])
    if not tail.endswith("\ufffd"):  # the tail ends on a complete character: settle it
        r.settled_text += tail
        r.settled_ids = len(r.ids)
        return r.settled_text
    return r.settled_text + tail


class Batch:
    """Live rows of one engine over one KV cache (see the module docstring).

    `fixed_rows`: choose the decode backend once, for that many rows (`Engine.generate`); None chooses it
    at every step for the rows then live (the server, whose batch grows and shrinks). Call `sample` and
    `forward` under `torch.no_grad()`: entering it at every step would cost as much as the step's
    bookkeeping.
    """

    def __init__(self, engine: Any, fixed_rows: int | None = None) -> None:
        self.engine = engine
        self.slots: list[Row | None] = []  # the row in each cache row; None once it finished
        self.cache: KVCache | None = None
        self.last: torch.Tensor | None = None  # (cache rows, V): each cache row's next-token logits
        self.counts: torch.Tensor | None = None  # token counts and the seen-token mask, only for penalties
        self.seen: torch.Tensor | None = None
        self._next: torch.Tensor | None = None  # the tokens `sample` drew for the rows still live
        self.n_live = 0
        self.plain = True  # every row so far plain greedy: the argmax of the raw logits is the token
        self.fixed = fixed_rows is not None
        self.decoder = engine._native(fixed_rows if self.fixed else 1) if (fixed_rows is None or fixed_rows) else None
        model_dtype = next(engine.model.parameters()).dtype
        # The native step decodes into an fp32 cache; the model's forward needs one of its own dtype.
        self.dtype = torch.float32 if self.decoder is not None else model_dtype
        self.must_be_native = self.decoder is not None and model_dtype != torch.float32

    @property
    def live(self) -> list[Row]:
        return [r for r in self.slots if r is not None]

    def __bool__(self) -> bool:
        return self.n_live > 0

    def running(self):
        """Lend PyTorch's cores to the native step while decoding (see `NativeDecoder.cores`)."""
        return self.decoder.cores() if self.decoder is not None else contextlib.nullcontext()

    # -- rows join -------------------------------------------------------------------------------
    def add(self, prompt_ids: list[list[int]], rows: list[Row]) -> None:
        """Prefill the prompts and give each row (`row.prompt` indexes `prompt_ids`) a cache row.

        Rows with nothing to generate finish at once ('length') and take no cache row."""
        self.add_groups([(prompt_ids, rows)])

    @torch.no_grad()
    def add_groups(self, groups: Sequence[tuple[list[list[int]], list[Row]]]) -> None:
        """`add` for several requests at once: one prefill for all their prompts."""
        eng = self.engine
        prompts: list[list[int]] = []
        keep: list[Row] = []
        order: list[int] = []
        for prompt_ids, rows in groups:
            for r in rows:
                if r.limit <= 0:
                    r.finish = "length"
                else:
                    keep.append(r)
                    order.append(len(prompts) + r.prompt)
            prompts += prompt_ids
        if not keep:
            return
        cache = KVCache.for_model(eng.cfg, len(prompts), dtype=self.dtype, device=eng.device)
        last = eng._prefill(prompts, cache)
        index = torch.tensor(order, device=eng.device)
        cache.select(index)
        last = last[index]
        if self.counts is None and any(has_penalty(r.params) for r in keep):
            self.counts, self.seen = self._history(len(self.slots))
        if self.counts is not None:
            counts, seen = self._history(len(keep))
            for i, p in enumerate(order):
                seen[i, prompts[p]] = True
            self.counts, self.seen = torch.cat([self.counts, counts]), torch.cat([self.seen, seen])
        if self.cache is None:
            self.cache, self.last = cache, last
        else:
            self.cache.extend(cache)
            self.last = torch.cat([self.last, last])
        self.slots.extend(keep)
        self.n_live += len(keep)
        self.plain = self.plain and all(is_plain_greedy(r.params) for r in keep)

    def _history(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        V, dev = self.engine.cfg.vocab_size, self.engine.device
        return (torch.zeros(n, V, dtype=torch.long, device=dev), torch.zeros(n, V, dtype=torch.bool, device=dev))

    def cancel(self, owner: Any) -> int:
        """Retire every row of `owner` (finish 'cancelled') between steps; returns how many were live."""
        if self._next is not None:
            raise RuntimeError("cancel between steps: after forward, before sample")
        n = 0
        for k, r in enumerate(self.slots):
            if r is not None and r.owner is owner:
                r.finish, self.slots[k] = "cancelled", None
                n += 1
        self.n_live -= n
        if not self.n_live:
            self._release()
        return n

    def _release(self) -> None:
        """An idle batch holds no cache: a server between requests keeps no memory for them."""
        self.slots, self.cache, self.last, self.counts, self.seen, self._next = [], None, None, None, None, None
        self.plain = True

    # -- one step --------------------------------------------------------------------------------
    def sample(self) -> list[Delta]:
        """Draw the next token of every live row; rows that finish leave the batch."""
        if not self.n_live:
            return []
        if self.n_live == len(self.slots):
            live, rows, lg = range(self.n_live), list(self.slots), self.last
        else:
            live = [k for k, r in enumerate(self.slots) if r is not None]
            rows = [self.slots[k] for k in live]
            lg = self.last[torch.tensor(live, device=self.engine.device)]
        dev = self.engine.device
        if self.plain:
            processed, nxt = None, lg.argmax(-1)
        else:
            sub = None if self.counts is None else torch.tensor(live, device=dev)
            processed = process_logits(lg, [r.params for r in rows],  # it works on a copy
                                       None if sub is None else self.counts[sub],
                                       None if sub is None else self.seen[sub])
            u = torch.tensor([r.uniforms[len(r.ids)] if r.uniforms is not None else 0.0 for r in rows],
                             dtype=torch.float64)
            nxt = sample_from(processed, [None] * len(rows), [r.params.greedy for r in rows], u)
        want_lp = any(r.params.wants_logprobs for r in rows)
        raw_lp = logprobs_of(lg, nxt) if want_lp else None
        proc_lp = (logprobs_of(processed, nxt) if processed is not None else torch.zeros_like(raw_lp)
                   ) if want_lp else None
        out: list[Delta] = []
        survivors = []
        for j, (k, r, t) in enumerate(zip(live, rows, nxt.tolist())):
            if self.counts is not None:
                self.counts[k, t] += 1
                self.seen[k, t] = True
            delta = self._accept(r, t, raw_lp, proc_lp, lg, j)
            if delta is not None:
                out.append(delta)
            if r.finish is None:
                survivors.append(j)
            else:
                self.slots[k] = None
        self.n_live = len(survivors)
        if not survivors:
            self._release()
        elif len(survivors) == len(rows):
            self._next = nxt
        else:
            self._next = nxt[torch.tensor(survivors, device=dev)]
        return out

    def forward(self) -> None:
        """Decode the tokens `sample` drew: each live row's next-token logits land in `last`."""
        if not self:
            return
        tokens, self._next = self._cache_inputs(self._next), None
        decoder = self.decoder if (self.fixed or self.must_be_native or self._native_fits(len(tokens))) else None
        cache = self.cache
        if decoder is not None:
            self.last = decoder.step(tokens, cache)
        else:
            self.last = self.engine.model(tokens[:, None], cache=cache)[:, 0].float()
        cache.advance(1)

    def _native_fits(self, rows: int) -> bool:
        if self.decoder is None:
            return False
        return self.engine.backend == "native" or (rows <= native.MAX_AUTO_ROWS
                                                   and rows * self.decoder.macs <= native.MAX_AUTO_MACS)

    def _cache_inputs(self, nxt: torch.Tensor) -> torch.Tensor:
        """The next token of every cache row, given the live rows' tokens `nxt`.

        A finished row stays in the cache, decoding a dummy token, until a quarter of the cache is finished
        rows: compacting copies the whole cache, which at a few hundred rows costs as much as a couple of
        decode steps, and rows finish one by one. A finished row keeps advancing, so the cache is also
        compacted before one could outgrow it.
        """
        cache = self.cache
        if self.n_live == cache.batch:
            return nxt
        live = [k for k, r in enumerate(self.slots) if r is not None]
        rows = torch.tensor(live, device=self.engine.device)
        if cache.batch - len(live) > cache.batch // 4 or int(cache.lengths.max()) >= cache.max_len:
            cache.select(rows)
            self.slots = [self.slots[k] for k in live]
            if self.counts is not None:
                self.counts, self.seen = self.counts[rows], self.seen[rows]
            return nxt
        tokens = torch.zeros(cache.batch, dtype=nxt.dtype, device=self.engine.device)
        tokens[rows] = nxt
        return tokens

    def _accept(self, r: Row, t: int, raw_lp, proc_lp, logits: torch.Tensor, k: int) -> Delta | None:
        """Append token `t` to row `r`, check its stops, and say what text it adds (when streaming)."""
        sp, tok = r.params, self.engine.tok
        r.ids.append(t)
        r.drawn += 1
        if raw_lp is not None and sp.wants_logprobs:
            r.logprobs.append(float(raw_lp[k]))
            r.processed.append(float(proc_lp[k]))
            if sp.top_logprobs:
                vals, idx = top_logprobs(logits[k: k + 1], sp.top_logprobs)
                r.tops.append({int(a): float(b) for a, b in zip(idx[0], vals[0])})
        if t in sp.stop_token_ids or (t == tok.eos_id and not sp.ignore_eos):
            r.ids.pop()
            r.finish = "stop"
        elif r.streaming or sp.stop:  # text is needed now; otherwise it is decoded once at the end
            before = len(r.text)
            r.text = incremental_text(tok, r)
            for s in sp.stop:
                at = r.text.find(s, max(0, before - len(s) + 1))
                if at >= 0:
                    r.text, r.finish = r.text[:at], "stop"
                    break
        if r.finish is None and len(r.ids) >= r.limit:
            r.finish = "length"
        if not (r.streaming or sp.stop):
            if r.finish is not None:
                r.text = tok.decode(r.ids)
            return None
        safe = len(r.text)
        if r.finish is None:
            safe -= held_back(r.text, sp.stop)
            while safe > r.emitted and r.text[safe - 1] == "\ufffd":  # an incomplete UTF-8 character
                safe -= 1
        text = r.text[r.emitted: max(safe, r.emitted)]
        r.emitted = max(safe, r.emitted)
        return Delta(r.prompt, r.index, t, text, r.finish, r.owner)
