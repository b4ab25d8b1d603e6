"""Where the N samples come from: one `Generator` interface, two backends.

`LocalGenerator` runs lmlab's KV-cache engine (the N samples of a prompt share one prefill) and counts
FLOPs from the model's shape. `OpenAIGenerator` sends the same requests to any OpenAI-compatible server
through the official `openai` client (`n` samples per request, token log-probabilities), so the same
selection rules and cost tables apply to a production model; its FLOPs are unknown and left empty.

A prompt is sent as plain text to complete, or, with `chat=True`, as the user's turn of a chat (the
local engine renders lmlab's chat template and stops at the end of the assistant's turn).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lmlab.data.chat import END_OF_TURN, render
from lmlab.errors import LmlabError
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams
from lmlab.plan.flops import forward_flops_per_token
from lmlab.post.stage import require_causal


@dataclass
class Sample:
    """One sampled response."""

    text: str
    tokens: int
    """Completion tokens generated (the stop string or end-of-turn token included, as servers count them)."""
    logprobs: list[float] | None = None
    """Log-probability of each generated token under the model's raw distribution (None: not reported)."""
    finish_reason: str = "stop"

    @property
    def total_logprob(self) -> float:
        return float(sum(self.logprobs)) if self.logprobs else float("nan")

    @property
    def mean_logprob(self) -> float:
        return self.total_logprob / len(self.logprobs) if self.logprobs else float("nan")


@dataclass
class Generation:
    """N samples for each of a batch of prompts, and what producing them cost."""

    samples: list[list[Sample]]
    prompt_tokens: list[int]
    wall_s: float
    flops: float | None = None
    """Forward FLOPs of the prefills and every decoded token (None when the backend cannot tell)."""


@dataclass
class Request:
    """Sampling settings shared by the prompts of one call."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise LmlabError(f"n (samples per prompt) must be an integer >= 1, got {self.n!r}")
        if self.temperature < 0:
            raise LmlabError(f"temperature must be >= 0, got {self.temperature}")


class Generator(Protocol):
    """Anything that can draw N samples per prompt."""

    name: str
    chat: bool

    def generate(self, prompts: Sequence[str], req: Request) -> Generation: ...


class LocalGenerator:
    """lmlab's engine on a checkpoint."""

    def __init__(self, checkpoint: str, chat: bool = False, device: str = "auto", batch_rows: int = 256) -> None:
        self.engine = Engine.from_checkpoint(checkpoint, device=device)
        require_causal(self.engine.cfg, checkpoint, "test-time sampling")
        self.name = f"local:{checkpoint}"
        self.chat = chat
        self.batch_rows = batch_rows
        """Most sequences decoded at once (prompts x n), which bounds the KV cache's memory."""

    def _text(self, prompt: str) -> str:
        return render([{"role": "user", "content": prompt}]) if self.chat else prompt

    def generate(self, prompts: Sequence[str], req: Request) -> Generation:
        eng = self.engine
        eot = eng.tok.token_to_id(END_OF_TURN) if self.chat else None
        texts = [self._text(p) for p in prompts]
        ids = [eng.encode(t) for t in texts]
        per_call = max(1, self.batch_rows // req.n)
        samples: list[list[Sample]] = []
        flops = 0.0
        t0 = time.perf_counter()
        for start in range(0, len(texts), per_call):
            chunk = texts[start:start + per_call]
            params = SamplingParams(temperature=req.temperature, top_p=req.top_p, n=req.n,
                                    max_new_tokens=req.max_tokens, stop=list(req.stop), logprobs=True,
                                    stop_token_ids=[eot] if eot is not None else [],
                                    seed=None if req.seed is None else req.seed + start)
            for out in eng.generate(chunk, params):
                row = []
                for c in out.completions:
                    # A stop token (end of turn, end of document) ends a sample without entering token_ids,
                    # but it was generated, so it counts; a stop string's tokens are already in token_ids.
                    by_token = c.finish_reason == "stop" and not any(
                        s in eng.tok.decode(c.token_ids) for s in req.stop)
                    n_tok = len(c.token_ids) + by_token
                    row.append(Sample(c.text.strip() if self.chat else c.text, n_tok, c.logprobs, c.finish_reason))
                samples.append(row)
        wall = time.perf_counter() - t0
        for p_ids, row in zip(ids, samples):
            P = len(p_ids)
            flops += P * forward_flops_per_token(eng.cfg, max(1, P // 2))
            for s in row:
                flops += s.tokens * forward_flops_per_token(eng.cfg, P + max(1, s.tokens // 2))
        return Generation(samples, [len(i) for i in ids], wall, flops)


class OpenAIGenerator:
    """Any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, ...) through the `openai` client."""

    def __init__(self, base_url: str, model: str | None, chat: bool = False, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 1) -> None:
        try:
            import openai
        except ImportError:
            raise LmlabError("the OpenAI backend needs the openai client: pip install 'lmlab[openai]'") from None
        self.openai = openai
        self.base_url = base_url
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout,
                                    max_retries=max_retries)
        self.model = model if model is not None else self._first_model()
        self.chat = chat
        self.name = f"openai:{base_url}#{self.model}"

    def _first_model(self) -> str:
        listed = self._call(self.client.models.list).data
        if not listed:
            raise LmlabError(f"the endpoint at {self.base_url} lists no models; name one with endpoint_model")
        return listed[0].id

    def _call(self, fn, **kwargs):
        try:
            return fn(**kwargs)
        except self.openai.APIConnectionError as e:
            raise LmlabError(f"cannot reach the OpenAI-compatible endpoint at {self.base_url} "
                             f"({e.__class__.__name__}: {e}); is the server running?") from None
        except self.openai.APIStatusError as e:
            raise LmlabError(f"the endpoint at {self.base_url} answered HTTP {e.status_code}: {e.message}") from None

    def generate(self, prompts: Sequence[str], req: Request) -> Generation:
        common = {"model": self.model, "n": req.n, "temperature": req.temperature, "top_p": req.top_p,
                  "max_tokens": req.max_tokens}
        if req.stop:
            common["stop"] = list(req.stop)[:4]
        if req.seed is not None:
            common["seed"] = req.seed
        samples: list[list[Sample]] = []
        prompt_tokens: list[int] = []
        t0 = time.perf_counter()
        for p in prompts:  # one request per prompt: its n samples share the server's prefill
            if self.chat:
                r = self._call(self.client.chat.completions.create,
                               messages=[{"role": "user", "content": p}], logprobs=True, **common)
                rows = [(c.message.content or "", [t.logprob for t in (c.logprobs.content or [])]
                         if c.logprobs else None, c.finish_reason) for c in r.choices]
            else:
                r = self._call(self.client.completions.create, prompt=p, logprobs=1, **common)
                rows = [(c.text, [x for x in (c.logprobs.token_logprobs or []) if x is not None]
                         if c.logprobs else None, c.finish_reason) for c in r.choices]
            used = r.usage.completion_tokens if r.usage else None
            row = []
            for text, lps, finish in rows:
                n_tok = len(lps) if lps else (math.ceil(used / max(len(rows), 1)) if used else 0)
                row.append(Sample(text.strip() if self.chat else text, n_tok, lps or None, finish or "stop"))
            samples.append(row)
            prompt_tokens.append(r.usage.prompt_tokens if r.usage else 0)
        return Generation(samples, prompt_tokens, time.perf_counter() - t0, None)
