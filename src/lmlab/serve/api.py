"""The routes' work: checks every request goes through, then the completions and chat endpoints.

A request is validated by its schema, checked against this server (the
model's name, the context), turned into `SamplingParams`, and queued on the
`Scheduler`. A streamed answer goes out as server-sent events (`streams`);
any other waits for its job to finish, and is cancelled if its client leaves.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi import Request

from lmlab.data.chat import END_OF_TURN, render
from lmlab.errors import LmlabError
from lmlab.infer.sampling import SamplingParams
from lmlab.serve import openai_format as fmt
from lmlab.serve.openai_format import ApiError
from lmlab.serve.playground import next_token_view, prompt_logprobs
from lmlab.serve.scheduler import Busy, Job, Scheduler
from lmlab.serve.schema import ChatRequest, CompletionRequest, NextTokenRequest
from lmlab.serve.streams import chat_stream, completion_stream, sse


class Api:
    def __init__(self, engine: Any, scheduler: Scheduler, model_name: str, api_key: str | None) -> None:
        self.engine, self.scheduler, self.model_name, self.api_key = engine, scheduler, model_name, api_key
        self.ctx = engine.cfg.max_seq_len
        self.eot = engine.tok.token_to_id(END_OF_TURN)
        self.decode = engine.tok.decode

    # -- checks --------------------------------------------------------------------------------------
    async def authorized(self, request: Request) -> None:  # async: a plain def would hop to a worker thread
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           "invalid_request_error", code="invalid_api_key")

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ApiError(404, f"the model {name!r} does not exist; this server has {self.model_name!r}",
                           param="model", code="model_not_found")

    def encode(self, prompt: str | list[int]) -> list[int]:
        vocab = self.engine.cfg.vocab_size
        if isinstance(prompt, list) and any(t >= vocab for t in prompt):
            raise ApiError(400, f"prompt token ids must be < the vocabulary size {vocab}", param="prompt")
        try:
            return self.engine.encode(prompt)
        except LmlabError as e:
            raise ApiError(400, str(e), param="prompt", code="context_length_exceeded") from None

    def room(self, ids: list[int], max_tokens: int | None, param: str) -> int:
        """max_tokens, or what the context leaves; an error when the prompt and max_tokens do not fit."""
        left = self.ctx - len(ids)
        if max_tokens is None:
            if left < 1:
                raise ApiError(400, f"the prompt has {len(ids)} tokens and leaves no room in this model's "
                                    f"{self.ctx}-token context", param="messages", code="context_length_exceeded")
            return left
        if max_tokens > left:
            raise ApiError(400, f"this model's context is {self.ctx} tokens: a {len(ids)}-token prompt leaves "
                                f"room for {max(left, 0)}, but {param} is {max_tokens}", param=param,
                           code="context_length_exceeded")
        return max_tokens

    @staticmethod
    def params(req: Any, max_tokens: int, logprobs: bool, top: int, stop_ids: list[int]) -> SamplingParams:
        try:
            return SamplingParams(temperature=req.temperature, top_k=max(req.top_k, 0), top_p=req.top_p,
                                  min_p=req.min_p, repetition_penalty=req.repetition_penalty,
                                  presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                                  seed=req.seed, max_new_tokens=max_tokens, stop=req.stops(),
                                  stop_token_ids=stop_ids, n=req.n, logprobs=logprobs, top_logprobs=top,
                                  ignore_eos=req.ignore_eos)
        except LmlabError as e:
            raise ApiError(400, str(e)) from None

    def submit(self, prompt_ids: list[list[int]], plist: list[SamplingParams], stream: bool) -> Job:
        try:
            return self.scheduler.submit(prompt_ids, plist, stream)
        except Busy as e:
            raise ApiError(429, f"the server is busy ({e}); retry shortly", "rate_limit_error") from None

    async def finished(self, job: Job, request: Request) -> None:
        """Wait for a non-streamed job; cancel it when the client goes away."""
        while True:
            try:
                item = await asyncio.wait_for(job.queue.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self.scheduler.cancel(job)
                    raise ApiError(499, "the client closed the request") from None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise ApiError(500, f"generation failed: {item}", "server_error")

    # -- routes --------------------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_name, "running": len(self.scheduler.jobs),
                "waiting": len(self.scheduler.waiting)}

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                            "owned_by": "lmlab", "max_model_len": self.ctx}]}

    async def completions(self, req: CompletionRequest, request: Request):
        self.check_model(req.model)
        prompts = req.prompts()
        ids = [self.encode(p) for p in prompts]
        plist = [self.params(req, self.room(i, req.max_tokens, "max_tokens"), req.logprobs is not None,
                             req.logprobs or 0, []) for i in ids]
        echoes = None
        if req.echo:
            echoes = [await asyncio.to_thread(_echo, self.engine, p, i, req.logprobs) for p, i in zip(prompts, ids)]
        job = self.submit(ids, plist, req.stream)
        cid, created = fmt.new_id("cmpl"), fmt.now()
        if req.stream:
            return sse(completion_stream(job, req, cid, created, self.model_name, self.decode, echoes), job,
                       self.scheduler)
        await self.finished(job, request)
        choices = [fmt.completion_choice(r, k, self.decode, req.logprobs, echoes[k // req.n] if echoes else None)
                   for k, r in enumerate(job.rows)]
        return {"id": cid, "object": "text_completion", "created": created, "model": self.model_name,
                "choices": choices, "usage": fmt.usage(job.prompt_tokens, job.completion_tokens)}

    async def chat(self, req: ChatRequest, request: Request):
        self.check_model(req.model)
        try:
            text = render([{"role": m.role, "content": m.content} for m in req.messages])
        except LmlabError as e:
            raise ApiError(400, str(e), param="messages") from None
        ids = self.encode(text)
        wanted = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        top = req.top_logprobs or 0
        if top and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        stop_ids = [self.eot] if self.eot is not None else []
        p = self.params(req, self.room(ids, wanted, "max_tokens"), req.logprobs, top, stop_ids)
        job = self.submit([ids], [p], req.stream)
        cid, created = fmt.new_id("chatcmpl"), fmt.now()
        if req.stream:
            return sse(chat_stream(job, req, cid, created, self.model_name, self.decode), job, self.scheduler)
        await self.finished(job, request)
        return {"id": cid, "object": "chat.completion", "created": created, "model": self.model_name,
                "choices": [fmt.chat_choice(r, k, self.decode, req.logprobs) for k, r in enumerate(job.rows)],
                "usage": fmt.usage(job.prompt_tokens, job.completion_tokens)}

    async def next_token(self, req: NextTokenRequest) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(next_token_view, self.engine, req)
        except LmlabError as e:
            raise ApiError(400, str(e), param="prompt") from None


def _echo(engine: Any, prompt: str | list[int], ids: list[int], k: int | None) -> dict[str, Any]:
    """What `echo` puts before the completion: the prompt's text and, when asked, its tokens' logprobs."""
    text = prompt if isinstance(prompt, str) else engine.tok.decode(ids)
    lps, tops = prompt_logprobs(engine, ids, k or 0)
    return {"text": text, "ids": list(ids), "logprobs": [None, *lps], "tops": [None, *tops] if k else None}
