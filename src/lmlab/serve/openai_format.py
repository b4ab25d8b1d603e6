"""OpenAI's response and stream-chunk shapes, built from the engine's rows and pieces.

Token strings are the tokenizer's decoding of one token (a byte-level token
that is part of a character decodes to U+FFFD, as in other servers); `bytes`
are that string's UTF-8 bytes. Log-probabilities are under the model's raw
distribution, before any sampling control, as OpenAI and vLLM report them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from lmlab.data.chat import SPACE
from lmlab.infer.batch import Row


class ApiError(Exception):
    """An error answered as OpenAI's JSON with this HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, error_body(message, kind, param, code)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def finish(reason: str | None) -> str | None:
    return reason if reason in (None, "stop", "length") else "stop"


def chat_text(text: str, first: bool) -> str:
    """The reply without the space the chat template puts after the assistant marker."""
    return text[len(SPACE):] if first and text.startswith(SPACE) else text


# -- completions ------------------------------------------------------------------------------------
def completion_logprobs(decode, ids: list[int], lps: list[float | None], tops: list[dict[int, float] | None] | None,
                        offset: int) -> dict[str, Any]:
    """The legacy `logprobs` object: tokens, their log-probabilities, top alternatives and text offsets."""
    tokens = [decode([t]) for t in ids]
    offsets, at = [], offset
    for s in tokens:
        offsets.append(at)
        at += len(s)
    top = None
    if tops is not None:
        top = [None if d is None else {decode([a]): b for a, b in d.items()} for d in tops]
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": top, "text_offset": offsets}


def row_tops(r: Row, k: int | None) -> list[dict[int, float]] | None:
    """Each step's top-k alternatives, with the sampled token added when it is not among them."""
    if not k:
        return None
    out = []
    for t, lp, top in zip(r.ids, r.logprobs, r.tops):
        d = dict(top)
        d.setdefault(t, lp)
        out.append(d)
    return out


def completion_choice(r: Row, index: int, decode, k: int | None, echo: dict | None) -> dict[str, Any]:
    """One choice of a finished completion; `echo` holds the prompt's text, ids and log-probabilities."""
    text, lp = r.text, None
    if k is not None:
        ids, lps, tops = list(r.ids), list(r.logprobs[: len(r.ids)]), row_tops(r, k)
        offset = 0
        if echo is not None:
            ids, lps = echo["ids"] + ids, echo["logprobs"] + lps
            tops = None if tops is None else echo["tops"] + tops
        lp = completion_logprobs(decode, ids, lps, tops, offset)
    if echo is not None:
        text = echo["text"] + text
    return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish(r.finish)}


def completion_chunk(cid: str, created: int, model: str, choices: list[dict]) -> dict[str, Any]:
    return {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices}


# -- chat ---------------------------------------------------------------------------------------------
def chat_token(decode, t: int, lp: float) -> dict[str, Any]:
    s = decode([t])
    return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}


def chat_logprobs(decode, ids: list[int], lps: list[float], tops: list[dict[int, float]] | None) -> dict[str, Any]:
    content = []
    for i, (t, lp) in enumerate(zip(ids, lps)):
        item = chat_token(decode, t, lp)
        item["top_logprobs"] = [] if tops is None else [chat_token(decode, a, b) for a, b in tops[i].items()]
        content.append(item)
    return {"content": content}


def chat_choice(r: Row, index: int, decode, logprobs: bool) -> dict[str, Any]:
    lp = None
    if logprobs:
        lp = chat_logprobs(decode, r.ids, r.logprobs[: len(r.ids)], r.tops if r.params.top_logprobs else None)
    return {"index": index, "message": {"role": "assistant", "content": chat_text(r.text, True)},
            "logprobs": lp, "finish_reason": finish(r.finish)}


def chat_chunk(cid: str, created: int, model: str, choices: list[dict]) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
