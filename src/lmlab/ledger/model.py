"""The next-token distributions the sampling claims are measured on.

Full size: the quickstart's pretrained model (the quickstart runs first if it
has not), on a seeded sample of the world's questions, half about people known
only from biographies and half about people it never saw: prompts where the
model is sure and prompts where it cannot be. Tiny size (tests): a random
two-layer model on random prompts, which exercises every step in seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from lmlab.data.world import format_qa, load_world
from lmlab.infer.engine import Engine
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.quickstart import QuickstartConfig, quickstart

PER_GROUP = 150

TINY_QUICKSTART = ["world.people=24", "world.unknown=4", "world.arithmetic=20", "world.arithmetic_test=5",
                   "tokenizer.vocab_size=300", "pretrain.train.steps=30", "pretrain.train.batch_size=4",
                   "pretrain.train.eval_interval=15", "pretrain.train.eval_batches=2", "pretrain.train.progress=false",
                   "pretrain.model.d_model=32", "pretrain.model.n_layers=1", "pretrain.model.n_heads=2",
                   "pretrain.model.max_seq_len=320", "probe_questions=3", "samples=2", "masked_lm_steps=20",
                   "bidirectional_people=5", "solver.train.steps=10", "verifier.problems=15", "verifier.train.steps=4",
                   "testtime.n=[1,2]", "testtime.time_problems=1", "testtime.max_tokens=24", "verifier.max_tokens=24",
                   "hallucination.questions=4", "hallucination.samples=2"]
"""A quickstart of seconds (the one tests/test_quickstart.py runs): every stage's outputs, none of its quality."""


def quickstart_run(size: str, path: str | Path, work: str | Path) -> Path:
    """The quickstart run whose models and summary the claims measure: at full size `path` (the quickstart
    runs first if it has not), at tiny size a seconds-long one under `work` (made once, then reused)."""
    from lmlab.config import load

    if size == "tiny":
        out = Path(work) / "tiny_quickstart"
        if not (out / "summary.json").is_file() or "testtime" not in json.loads((out / "summary.json").read_text()):
            quickstart(load(QuickstartConfig, None, TINY_QUICKSTART + [f"out={out}"]))
        return out
    out = Path(path)
    summary = out / "summary.json"
    if not (out / "checkpoint" / "meta.json").is_file() or not summary.is_file() or \
            "testtime" not in json.loads(summary.read_text()):
        print(f"ledger: no finished quickstart run in {out}; running it first", flush=True)
        quickstart(QuickstartConfig(out=str(out)))
    return out


class LogitsSource:
    def __init__(self, size: str, quickstart: str, seed: int) -> None:
        self.size, self.quickstart, self.seed = size, Path(quickstart), seed
        self._cached: tuple[torch.Tensor, str] | None = None

    def model_id(self) -> str:
        """What the logits come from, for the cache: a different checkpoint means new measurements."""
        if self.size == "tiny":
            return "random-tiny-1"
        meta = self.quickstart / "checkpoint" / "meta.json"
        step = json.loads(meta.read_text()).get("step") if meta.is_file() else None
        return f"{self.quickstart}/checkpoint@{step}:{meta.stat().st_mtime_ns if meta.is_file() else 0}"

    def get(self) -> tuple[torch.Tensor, str]:
        """(logits (prompts, V) in fp32, a sentence saying what they are)."""
        if self._cached is None:
            self._cached = self._tiny() if self.size == "tiny" else self._quickstart()
        return self._cached

    def _tiny(self) -> tuple[torch.Tensor, str]:
        g = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        model = Transformer(ModelConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=2, max_seq_len=16)).eval()
        with torch.no_grad():
            model.head.weight.mul_(8)  # a random model's distributions are nearly flat; sharpen them
            logits = model(torch.randint(0, 96, (60, 8), generator=g))[:, -1].float()
        return logits, "a random 2-layer model (vocabulary 96) on 60 random prompts (tiny size)"

    def _quickstart(self) -> tuple[torch.Tensor, str]:
        run = quickstart_run("full", self.quickstart, "")
        ckpt, world_dir = run / "checkpoint", run / "world"
        engine = Engine.from_checkpoint(ckpt, device="cpu")
        world = load_world(world_dir)
        rng = random.Random(self.seed)
        questions = []
        for group in ("qa_test", "qa_unknown"):
            items = list(world[group])
            rng.shuffle(items)
            questions += [it["question"] for it in items[:PER_GROUP]]
        logits = torch.stack([engine.next_token_logits(format_qa(q)) for q in questions])
        return logits, (f"the quickstart's pretrained model ({ckpt}) on {len(questions)} world questions, half about "
                        "people known only from biographies, half about people it never saw")
