"""Streaming over server-sent events, in OpenAI's chunk format, ending with `data: [DONE]`.

Whatever has queued up for a request since its last write goes out as one
chunk, with each choice's new tokens joined: at light load that is one token
per chunk, and a busy server sends fewer, larger chunks instead of falling
behind (vLLM does the same). The usage chunk, when asked for, comes last,
with no choices.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from lmlab.serve import openai_format as fmt
from lmlab.serve.openai_format import ApiError
from lmlab.serve.scheduler import Job, Piece


def sse(chunks: AsyncIterator[list[dict | str]], job: Job, scheduler: Any) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for group in chunks:
                yield "".join(f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in group)
        finally:  # the client went away (or the stream ended): free the request's rows
            if not job.done:
                scheduler.cancel(job)

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def batches(job: Job) -> AsyncIterator[dict[tuple[int, int], list[Piece]]]:
    """Everything queued for `job` at each wake-up, by choice (prompt index, sample index)."""
    while True:
        items = [await job.queue.get()]
        while not job.queue.empty():
            items.append(job.queue.get_nowait())
        grouped: dict[tuple[int, int], list[Piece]] = {}
        for item in items:
            if isinstance(item, BaseException):
                raise ApiError(500, f"generation failed: {item}", "server_error")
            for pc in item or []:
                grouped.setdefault((pc.prompt_index, pc.index), []).append(pc)
        if grouped:
            yield grouped
        if items[-1] is None:
            return


def _scored(pieces: list[Piece]) -> list[Piece]:
    """The pieces whose token is part of the text (a stop token is not) and has a log-probability."""
    return [pc for pc in pieces if not pc.stop_token and pc.logprob is not None]


def _end(job: Job, usage_on: bool, chunk) -> list[dict | str]:
    out: list[dict | str] = []
    if usage_on:
        last = chunk([])
        last["usage"] = fmt.usage(job.prompt_tokens, job.completion_tokens)
        out.append(last)
    return [*out, "[DONE]"]


async def completion_stream(job: Job, req: Any, cid: str, created: int, model: str, decode,
                            echoes: list[dict] | None) -> AsyncIterator[list[dict | str]]:
    usage_on = bool(req.stream_options and req.stream_options.include_usage)
    offsets: dict[int, int] = {}

    def chunk(choices: list[dict]) -> dict:
        c = fmt.completion_chunk(cid, created, model, choices)
        if usage_on:
            c["usage"] = None
        return c

    if echoes:
        yield [chunk([{"index": p * req.n + j, "text": e["text"], "logprobs": None, "finish_reason": None}
                      for p, e in enumerate(echoes) for j in range(req.n)])]
    try:
        async for grouped in batches(job):
            choices = []
            for (p, j), pieces in grouped.items():
                index = p * req.n + j
                text, lp = "".join(pc.text for pc in pieces), None
                if req.logprobs is not None and _scored(pieces):
                    scored = _scored(pieces)
                    tops = None
                    if req.logprobs:
                        tops = [{**{decode([a]): b for a, b in (pc.top or {}).items()},
                                 decode([pc.token_id]): pc.logprob} for pc in scored]
                    start = offsets.get(index, len(echoes[p]["text"]) if echoes else 0)
                    lp = fmt.completion_logprobs(decode, [pc.token_id for pc in scored],
                                                 [pc.logprob for pc in scored], None, start)
                    lp["top_logprobs"] = tops
                    offsets[index] = start + sum(len(t) for t in lp["tokens"])
                finish = pieces[-1].finish_reason
                if text or finish or lp:
                    choices.append({"index": index, "text": text, "logprobs": lp, "finish_reason": fmt.finish(finish)})
            if choices:
                yield [chunk(choices)]
    except ApiError as e:
        yield [e.body]
    yield _end(job, usage_on, chunk)


async def chat_stream(job: Job, req: Any, cid: str, created: int, model: str, decode
                      ) -> AsyncIterator[list[dict | str]]:
    usage_on = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(choices: list[dict]) -> dict:
        c = fmt.chat_chunk(cid, created, model, choices)
        if usage_on:
            c["usage"] = None
        return c

    yield [chunk([{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                   "finish_reason": None} for j in range(req.n)])]
    started = [False] * req.n
    try:
        async for grouped in batches(job):
            choices = []
            for (_, j), pieces in grouped.items():
                lp = None
                if req.logprobs and _scored(pieces):
                    scored = _scored(pieces)
                    tops = [pc.top or {} for pc in scored] if req.top_logprobs else None
                    lp = fmt.chat_logprobs(decode, [pc.token_id for pc in scored], [pc.logprob for pc in scored],
                                           tops)
                joined = "".join(pc.text for pc in pieces)
                text = fmt.chat_text(joined, not started[j])
                started[j] = started[j] or bool(joined)
                finish = pieces[-1].finish_reason
                if text or finish or lp:
                    choices.append({"index": j, "delta": {"content": text} if text else {}, "logprobs": lp,
                                    "finish_reason": fmt.finish(finish)})
            if choices:
                yield [chunk(choices)]
    except ApiError as e:
        yield [e.body]
    yield _end(job, usage_on, chunk)
