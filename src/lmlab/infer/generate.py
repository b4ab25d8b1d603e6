"""`lmlab generate` and `lmlab sample`: completions from the KV-cache engine at the command line.

`generate` exposes every sampling control, several prompts, logprobs and JSON; `sample` is the short
form: one prompt, greedy or a temperature. `EngineOptions` (the controls plus how the model runs) is
shared with `lmlab chat`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
class SampleConfig:
    checkpoint: str = DEFAULT_CHECKPOINT
    """Checkpoint directory to sample from."""
    prompt: str = ""
    """Text to continue (empty = start a new document)."""
    max_new_tokens: int = 100
    """Tokens to generate per sample."""
    temperature: float = 0.0
    """0 = greedy (argmax); otherwise softmax(logits / temperature) is sampled."""
    num_samples: int = 1
    """Independent samples to draw."""
    seed: int = 0
    """Seed for sampling."""
    stop_at_eos: bool = True
    """Stop a sample at the end-of-document token."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise LmlabError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_new_tokens < 0:
            raise LmlabError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.num_samples < 1:
            raise LmlabError(f"num_samples must be >= 1, got {self.num_samples}")


def sample(cfg: SampleConfig) -> list[str]:
    """`num_samples` continuations of the prompt (through the engine, with its KV cache)."""
    engine = Engine.from_checkpoint(cfg.checkpoint)
    params = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, n=cfg.num_samples,
                            seed=cfg.seed, ignore_eos=not cfg.stop_at_eos)
    return [cfg.prompt + c.text for c in engine.generate([cfg.prompt], params)[0].completions]


def run_sample(cfg: SampleConfig) -> dict[str, Any]:
    return {"samples": sample(cfg)}


def format_samples(result: dict[str, Any]) -> str:
    """Each sample under a numbered rule, so where one ends and the next starts stays plain."""
    return "".join(f"--- sample {i} ---\n{s}\n" for i, s in enumerate(result["samples"]))
