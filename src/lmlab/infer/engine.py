"""The inference engine: batched prefill + KV-cache decoding with every sampling control.

One prefill per distinct prompt (right-padded into one batch), then the cache
rows are repeated for the `n` samples of each prompt, and every step decodes
one token for all live rows (`lmlab.infer.batch`, which the server also uses
to let requests join and leave between steps).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmlab.data.tokenizer import Tokenizer
from lmlab.device import pick_device
from lmlab.errors import LmlabError
from lmlab.infer import native
from lmlab.infer.batch import Batch, Delta, Row
from lmlab.infer.quant import quantize_int8
from lmlab.infer.sampling import SamplingParams
from lmlab.model.checkpoint import build_model, load_checkpoint
from lmlab.model.kv_cache import KVCache
from lmlab.model.logprobs import token_logprobs
from lmlab.model.transformer import Transformer
from lmlab.rundir import require_checkpoint


@dataclass
class Completion:
    """One sampled continuation of a prompt."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    """'stop' (a stop string or stop token) or 'length' (max_new_tokens or the context was reached)."""
    logprobs: list[float] | None = None
    """Log-probability of each sampled token under the model's raw distribution."""
    processed_logprobs: list[float] | None = None
    """... and under the distribution actually sampled from (after penalties, temperature, top-k/p, min-p)."""
    top_logprobs: list[dict[int, float]] | None = None
    """Per step, the most likely tokens under the raw distribution and their log-probabilities."""


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    completions: list[Completion]
    usage: dict[str, int] = field(default_factory=dict)


class Engine:
    """Generation and scoring for one model and its tokenizer."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, device: str | torch.device = "cpu",
                 weights: str = "fp32", backend: str = "auto") -> None:
        """`device`: 'cpu', 'cuda', ... or 'auto' (the GPU if there is one). `weights`: 'fp32', 'bf16', or
        'int8' (weight-only int8 linears, bf16 activations in the matmuls). `backend` for the decode steps:
        'torch' (the model's forward), 'native' (the C step in `lmlab.infer.native`: dense pre-norm models
        with fp32 or bf16 weights on the CPU, decoding into an fp32 KV cache), or 'auto' (native where it
        applies, else torch). Prefill and scoring always run the model's forward."""
        if weights not in ("fp32", "bf16", "int8"):
            raise LmlabError(f"weights must be 'fp32', 'bf16' or 'int8', got {weights!r}")
        if backend not in ("auto", "torch", "native"):
            raise LmlabError(f"backend must be 'auto', 'torch' or 'native', got {backend!r}")
        device = pick_device(device)
        self.meta: dict = {}  # the checkpoint's meta.json (its stage), when the engine comes from one
        self.context_warned = False  # the first generation that the context cuts short says so, once
        dtype = torch.bfloat16 if weights == "bf16" else torch.float32
        self.model = model.to(device=device, dtype=dtype).eval()
        if weights == "int8":
            quantize_int8(self.model)
        self.tok = tokenizer
        self.device = device
        self.cfg = model.cfg
        self.start_id = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id
        self.backend = backend
        if backend == "native":
            self._native()  # fail now, not at the first generate

    def _native(self, rows: int = 1):
        """A `NativeDecoder` for the model as it is now, or None when decoding `rows` rows should use torch."""
        if self.backend == "torch" or (self.backend == "auto" and rows > native.MAX_AUTO_ROWS):
            return None

        why = native.unsupported(self.model)
        lib = native.load() if why is None else None
        if lib is None:
            if self.backend == "native":
                raise LmlabError(f"backend 'native' is not available for this model: {why or native.load_error()}")
            return None
        decoder = native.NativeDecoder(self.model, lib)
        if self.backend == "auto" and rows * decoder.macs > native.MAX_AUTO_MACS:
            return None
        return decoder

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", weights: str = "fp32",
                        backend: str = "auto") -> Engine:
        ck = load_checkpoint(require_checkpoint(path))
        if ck.tokenizer_path is None:
            raise LmlabError(f"checkpoint {path} has no tokenizer.json")
        engine = cls(build_model(ck), Tokenizer.load(ck.tokenizer_path), device, weights, backend)
        engine.meta = ck.meta
        return engine

    # -- prompts -------------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a prompt; an empty prompt starts a fresh document (the end-of-document token)."""
        ids = self.tok.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            if self.start_id is None:
                raise LmlabError("empty prompt, and the tokenizer has no bos/eos token to start from")
            ids = [self.start_id]
        if len(ids) > self.cfg.max_seq_len:
            raise LmlabError(f"prompt of {len(ids)} tokens is longer than the model's context "
                             f"({self.cfg.max_seq_len} tokens)")
        return ids

    @torch.no_grad()
    def next_token_logits(self, prompt: str | Sequence[int]) -> torch.Tensor:
        """Raw fp32 logits (V,) for the token that would follow `prompt`."""
        return self.model(torch.tensor([self.encode(prompt)], device=self.device))[0, -1].float()

    @torch.no_grad()
    def _prefill(self, prompts: list[list[int]], cache: KVCache) -> torch.Tensor:
        """Run all prompts through the model at once; return each one's last logits (P, V) in fp32."""
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        x = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):
            x[i, : len(p)] = torch.tensor(p, device=self.device)
        hidden = self.model(x, cache=cache, return_hidden=True)
        cache.advance(lengths)
        last = hidden[torch.arange(len(prompts), device=self.device), lengths - 1]
        return self.model.logits(last).float()

    # -- generation ----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str | Sequence[int]] | str,
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """Complete every prompt (`params.n` samples each); see `stream` for the incremental form."""
        if isinstance(prompts, str):
            prompts = [prompts]
        outputs: list[RequestOutput] | None = None
        for item in self._run(prompts, params):
            if isinstance(item, list):
                outputs = item
        assert outputs is not None
        return outputs

    def stream(self, prompts: Sequence[str | Sequence[int]] | str,
               params: SamplingParams | Sequence[SamplingParams] | None = None) -> Iterator[Delta]:
        """Yield a `Delta` per generated token (text held back while it could begin a stop string)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        for item in self._run(prompts, params, streaming=True):
            if isinstance(item, Delta):
                yield item

    def rows(self, prompt_ids: list[list[int]], plist: list[SamplingParams], streaming: bool = False,
             owner: Any = None) -> list[Row]:
        """The rows (one per sample) that generate `plist[i].n` completions of each prompt."""
        rows = []
        for p, (ids, sp) in enumerate(zip(prompt_ids, plist)):
            limit = min(sp.max_new_tokens, self.cfg.max_seq_len - len(ids))
            if limit < sp.max_new_tokens:
                self._warn_context(len(ids), sp.max_new_tokens)
            for j in range(sp.n):
                u = None
                if sp.temperature > 0 and limit > 0:
                    # A sampled row draws its whole completion's uniforms from its own generator up
                    # front: one call per row, not per token, and independent of the rest of the batch.
                    g = torch.Generator(device="cpu")
                    if sp.seed is None:
                        g.seed()
                    else:
                        g.manual_seed((sp.seed * 1_000_003 + j) % 2**64)  # a generator takes 64 bits
                    u = torch.rand(limit, generator=g, dtype=torch.float64).tolist()
                rows.append(Row(p, j, sp, limit, u, streaming, owner))
        return rows

    def _warn_context(self, prompt_len: int, wanted: int) -> None:
        """Say once per engine that the context, not max_new_tokens, ends a generation (finish 'length')."""
        if not self.context_warned:
            self.context_warned = True
            ctx = self.cfg.max_seq_len
            warnings.warn(f"a {prompt_len}-token prompt leaves room for {max(0, ctx - prompt_len)} of the "
                          f"{wanted} new tokens asked for in this model's {ctx}-token context: generation stops "
                          f"there (finish_reason 'length'); said once", stacklevel=2)

    @torch.no_grad()
    def _run(self, prompts, params, streaming: bool = False) -> Iterator[Delta | list[RequestOutput]]:
        plist = list(params) if isinstance(params, (list, tuple)) else [params or SamplingParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise LmlabError(f"{len(prompts)} prompts but {len(plist)} sampling parameter sets")
        prompt_ids = [self.encode(p) for p in prompts]
        rows = self.rows(prompt_ids, plist, streaming)
        batch = Batch(self, fixed_rows=len(rows) if any(r.limit > 1 for r in rows) else 0)
        batch.add(prompt_ids, rows)
        with batch.running():
            while batch:
                yield from batch.sample()
                if not batch:
                    break
                batch.forward()
        yield self._outputs(prompt_ids, rows)

    def _outputs(self, prompt_ids: list[list[int]], rows: list[Row]) -> list[RequestOutput]:
        outs = []
        for p, ids in enumerate(prompt_ids):
            mine = [r for r in rows if r.prompt == p]
            comps = [Completion(r.index, r.text, r.ids, r.finish or "length",
                                r.logprobs if r.params.wants_logprobs else None,
                                r.processed if r.params.wants_logprobs else None,
                                r.tops if r.params.top_logprobs else None) for r in mine]
            gen = sum(len(r.ids) for r in mine)
            outs.append(RequestOutput(ids, comps, {"prompt_tokens": len(ids), "completion_tokens": gen,
                                                   "total_tokens": len(ids) + gen}))
        return outs

    # -- scoring -------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, prompts: Sequence[str | Sequence[int]], continuations: Sequence[str | Sequence[int]]
              ) -> list[dict[str, Any]]:
        """Log-likelihood of each continuation given its prompt: per token and summed.

        The continuation is tokenised on its own (so its tokens are exactly the ones scored);
        best-of-N, DPO and the evaluations build on this.
        """
        if len(prompts) != len(continuations):
            raise LmlabError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        pairs = []
        for p, c in zip(prompts, continuations):
            pi = self.encode(p)
            ci = self.tok.encode(c) if isinstance(c, str) else [int(t) for t in c]
            if len(pi) + len(ci) > self.cfg.max_seq_len:
                raise LmlabError(f"prompt + continuation = {len(pi) + len(ci)} tokens exceeds the context "
                                 f"({self.cfg.max_seq_len})")
            pairs.append((pi, ci))
        T = max(len(a) + len(b) for a, b in pairs)
        x = torch.zeros(len(pairs), T, dtype=torch.long, device=self.device)
        for i, (a, b) in enumerate(pairs):
            x[i, : len(a) + len(b)] = torch.tensor(a + b, device=self.device)
        lp = token_logprobs(self.model(x)[:, :-1], x[:, 1:])  # log p of each next token
        out = []
        for i, (a, b) in enumerate(pairs):
            tok_lp = lp[i, len(a) - 1:len(a) + len(b) - 1].tolist()  # the continuation's tokens
            out.append({"token_ids": b, "token_logprobs": tok_lp, "total": float(sum(tok_lp)),
                        "mean": float(sum(tok_lp) / len(tok_lp)) if tok_lp else 0.0})
        return out

