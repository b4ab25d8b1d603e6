"""`lmlab generate` and `lmlab chat`: the engine from the command line."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.infer.sampling import SamplingParams


@dataclass
class EngineOptions(SamplingParams):
    """Every sampling control plus where the model comes from and how it runs."""

    checkpoint: str = "runs/quickstart/checkpoint"
    """Checkpoint directory to load."""
    device: str = "auto"
    """Device to run on: 'auto' (the GPU if there is one), 'cpu', 'cuda', 'cuda:1', ..."""
    weights: str = "fp32"
    """Weights for inference: 'fp32', 'bf16', or 'int8' (weight-only, 4x less memory traffic per token)."""
    backend: str = "auto"
    """Decode steps: 'torch', 'native' (a compiled C step for dense fp32 or bf16 models on the CPU, several times
    faster token by token), or 'auto' (native where it applies)."""

    def engine(self):
        from lmlab.infer.engine import Engine

        return Engine.from_checkpoint(self.checkpoint, self.device, self.weights, self.backend)

    def sampling(self) -> SamplingParams:
        return SamplingParams(**{k: getattr(self, k) for k in SamplingParams.__dataclass_fields__})


@dataclass
class GenerateConfig(EngineOptions):
    prompt: str = ""
    """The prompt to complete (or give --prompts_file for many)."""
    prompts_file: str | None = None
    """A .txt file (one prompt per line) or .jsonl file (a "prompt" field per line)."""


def read_prompts(cfg: GenerateConfig) -> list[str]:
    prompts = [cfg.prompt] if cfg.prompt or not cfg.prompts_file else []
    if cfg.prompts_file:
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise LmlabError(f"prompts file not found: {path}")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LmlabError(f"{path}:{n}: invalid JSON ({e.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                    raise LmlabError(f"{path}:{n}: expected an object with a string 'prompt' field")
                prompts.append(row["prompt"])
            else:
                prompts.append(line)
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


@dataclass
class ChatConfig(EngineOptions):
    system: str = ""
    """Optional system message."""


def run_chat(cfg: ChatConfig) -> None:
    """Read user turns from stdin, stream the assistant's replies; an empty line or EOF ends the chat."""
    from lmlab.data.chat import END_OF_TURN, render

    engine, params = cfg.engine(), cfg.sampling()
    eot = engine.tok.token_to_id(END_OF_TURN)
    if eot is not None:
        params.stop_token_ids = [*params.stop_token_ids, eot]
    history = [{"role": "system", "content": cfg.system}] if cfg.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            break
        history.append({"role": "user", "content": line.rstrip("\n")})
        print("model> ", end="", flush=True)
        reply = []
        # Forget the oldest turns (never the system message) when the conversation outgrows the context.
        budget = engine.cfg.max_seq_len - min(params.max_new_tokens, engine.cfg.max_seq_len // 2)
        first = 1 if cfg.system else 0
        while len(engine.tok.encode(render(history))) > budget and len(history) > first + 1:
            del history[first]
        for d in engine.stream([render(history)], params):
            print(d.text, end="", flush=True)
            reply.append(d.text)
        print(flush=True)
        history.append({"role": "assistant", "content": "".join(reply).strip()})
