"""`lmlab generate` and `lmlab chat`: the engine from the command line."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.data.chat import END_OF_TURN, render
from lmlab.data.text import jsonl_records, read_utf8
from lmlab.errors import LmlabError
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams
from lmlab.rundir import DEFAULT_CHECKPOINT


@dataclass
class EngineOptions(SamplingParams):
    """Every sampling control plus where the model comes from and how it runs."""

    checkpoint: str = DEFAULT_CHECKPOINT
    """Checkpoint directory to load."""
    device: str = "auto"
    """Device to run on: 'auto' (the GPU if there is one), 'cpu', 'cuda', 'cuda:1', ..."""
    weights: str = "fp32"
    """Weights for inference: 'fp32', 'bf16', or 'int8' (weight-only, 4x less memory traffic per token)."""
    backend: str = "auto"
    """Decode steps: 'torch', 'native' (a compiled C step for dense fp32 or bf16 models on the CPU, several times
    faster token by token), or 'auto' (native where it applies)."""

    def engine(self):
        return Engine.from_checkpoint(self.checkpoint, self.device, self.weights, self.backend)

    def sampling(self) -> SamplingParams:
        return SamplingParams(**{k: getattr(self, k) for k in SamplingParams.__dataclass_fields__})


@dataclass
class GenerateConfig(EngineOptions):
    prompt: str = ""
    """The prompt to complete (or give --prompts_file for many)."""
    prompts_file: str | None = None
    """A .txt file (one prompt per line) or .jsonl file (a "prompt" field per line)."""


def _txt_prompts(path: Path) -> list[str]:
    return [line for line in read_utf8(path).splitlines() if line.strip()]


def _jsonl_prompts(path: Path) -> list[str]:
    # The shared JSONL reader names the file and line for bad UTF-8, bad JSON and non-objects alike.
    prompts = []
    for n, row in jsonl_records(path, "an object with a string 'prompt' field"):
        if not isinstance(row.get("prompt"), str):
            raise LmlabError(f"{path}:{n}: expected an object with a string 'prompt' field")
        prompts.append(row["prompt"])
    return prompts


def read_prompts(cfg: GenerateConfig) -> list[str]:
    prompts = [cfg.prompt] if cfg.prompt or not cfg.prompts_file else []
    if cfg.prompts_file:
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise LmlabError(f"prompts file not found: {path}")
        prompts += _jsonl_prompts(path) if path.suffix == ".jsonl" else _txt_prompts(path)
    if not prompts:
        raise LmlabError(f"no prompts in {cfg.prompts_file}")
    return prompts


def run_generate(cfg: GenerateConfig) -> dict[str, Any]:
    """Complete each prompt; returns one record per prompt (text, tokens, logprobs, finish reason, usage)."""
    engine, params = cfg.engine(), cfg.sampling()
    prompts = read_prompts(cfg)
    results = []
    for prompt, out in zip(prompts, engine.generate(prompts, params)):
        results.append({"prompt": prompt, "usage": out.usage, "completions": [
            {"index": c.index, "text": c.text, "finish_reason": c.finish_reason, "token_ids": c.token_ids,
             "logprobs": c.logprobs, "processed_logprobs": c.processed_logprobs,
             "top_logprobs": c.top_logprobs} for c in out.completions]})
    return {"results": results}


def format_generate(result: dict[str, Any]) -> str:
    """Each completion after its prompt, under a rule naming the prompt, its index and why it stopped."""
    return "".join(f"--- {r['prompt']!r} [{c['index']}] ({c['finish_reason']}) ---\n{r['prompt']}{c['text']}\n"
                   for r in result["results"] for c in r["completions"])


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
