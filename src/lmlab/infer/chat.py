"""`lmlab chat`: chat in the terminal with a checkpoint, the replies streamed as they are drawn."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from lmlab.data.chat import END_OF_TURN, render
from lmlab.errors import LmlabError
from lmlab.infer.generate import EngineOptions
from lmlab.infer.sampling import SamplingParams


@dataclass
class ChatConfig(EngineOptions):
    system: str = ""
    """Optional system message."""


def run_chat(cfg: ChatConfig) -> None:
    """Read user turns from stdin, stream the assistant's replies; an empty line or EOF ends the chat."""
    engine, params = cfg.engine(), cfg.sampling()
    eot = engine.tok.token_to_id(END_OF_TURN)
    if eot is not None:
        params.stop_token_ids = [*params.stop_token_ids, eot]
    history = [{"role": "system", "content": cfg.system}] if cfg.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        try:
            line = _read_line()
        except LmlabError as e:
            _warn(e)
            continue
        if not line or not line.strip():
            break
        before = list(history)
        history.append({"role": "user", "content": line.rstrip("\r\n")})
        # Forget the oldest turns (never the system message) when the conversation outgrows the context.
        budget = engine.cfg.max_seq_len - min(params.max_new_tokens, engine.cfg.max_seq_len // 2)
        first = 1 if cfg.system else 0
        while len(engine.tok.encode(render(history))) > budget and len(history) > first + 1:
            del history[first]
        try:
            reply = _stream_reply(engine, render(history), params)
        except LmlabError as e:
            history[:] = before  # drop the message the model cannot take (it would break every later turn)
            _warn(f"{e}; the message was skipped")
            continue
        history.append({"role": "assistant", "content": reply})


def _read_line() -> str:
    """One line of stdin; bytes that are not UTF-8 are an error for this line only."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # stdin replaced by a text-only stream (tests, embedding)
        return sys.stdin.readline()
    raw = buffer.readline()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LmlabError(f"message not valid UTF-8 at byte {e.start} ({e.reason}); it was skipped") from None


def _stream_reply(engine: Any, prompt: str, params: SamplingParams) -> str:
    """Print the reply as it comes; the first token is drawn before the marker, so a refused prompt prints
    nothing."""
    reply = []
    for d in engine.stream([prompt], params):
        if not reply:
            print("model> ", end="", flush=True)
        print(d.text, end="", flush=True)
        reply.append(d.text)
    if not reply:
        print("model> ", end="", flush=True)
    print(flush=True)
    return "".join(reply).strip()


def _warn(e: LmlabError | str) -> None:
    # One line, and the chat goes on: one bad message should not end the conversation.
    print(f"lmlab: warning: {e}", file=sys.stderr, flush=True)
