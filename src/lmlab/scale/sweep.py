"""`lmlab scale sweep`: train a grid of model sizes x token budgets (IsoFLOP sets) and log the losses.

Each compute budget C is spent by every model size N of the grid with D = C / (6N) tokens (Hoffmann et
al. 2022's IsoFLOP profiles), each run with its own cosine schedule decaying over exactly its D tokens
(a schedule longer than the run makes short runs look worse than they are). One finished run is one
CSV row, appended as soon as it ends; a rerun skips the rows already there and the interrupted run
resumes from its checkpoint, so the sweep survives being stopped at any point. `lmlab scale fit` reads
the CSV.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.config import from_dict
from lmlab.data.shards import PrepareConfig, TokenData, prepare
from lmlab.data.tokenizer import TokenizerConfig, train_tokenizer
from lmlab.data.world import WorldConfig, generate_world
from lmlab.errors import LmlabError
from lmlab.io import atomic_path
from lmlab.model.config import ModelConfig
from lmlab.plan.params import param_counts
from lmlab.rundir import locked_run
from lmlab.train.trainer import PretrainConfig, Trainer

COLUMNS = ("name", "d_model", "n_layers", "n_heads", "params", "non_embedding_params", "flops", "tokens",
           "tokens_per_param", "steps", "loss", "train_loss", "wall_s", "tokens_per_s")
"""The CSV's columns: `loss` is the final validation loss; `flops` the run's budget C = 6 x params x tokens."""


@dataclass
class SweepConfig:
    corpus: str = "world"
    """'world' (the built-in world, generated under <out>/data), a text file or directory (.txt/.jsonl;
    tokenized with a new tokenizer), or a directory of shards from `lmlab prepare`."""
    out: str = "runs/scale"
    """Run directory: data, one sub-directory per run, and sweep.csv."""
    models: list[str] = field(default_factory=lambda: ["16x2", "32x2", "48x2", "64x3", "96x3", "128x4"])
    """Model sizes as d_model x n_layers (heads of width 16; GPT-style: LayerNorm, learned positions, GELU,
    tied embeddings)."""
    budgets: list[float] = field(default_factory=lambda: [1e11, 3e11, 1e12, 3e12])
    """Training compute budgets in FLOPs (C = 6 x params x tokens); each makes one IsoFLOP set."""
    min_steps: int = 60
    """Skip a (model, budget) pair that would train for fewer steps than this."""
    max_tokens_per_param: float = 300.0
    """Skip a pair whose data/params ratio exceeds this (a tiny model on a large budget)."""
    batch_size: int = 16
    """Sequences per step."""
    block_size: int = 64
    """Tokens per sequence (also the models' context length)."""
    lr: float = 3e-3
    """Peak learning rate (warmup over 5% of each run, cosine decay to lr/10 at its end)."""
    eval_batches: int = 40
    """Validation batches for each run's final loss (fixed windows: the same for every run)."""
    world_people: int = 4000
    """People in the built-in world: 4000 give about 3M tokens, so the largest budget's smallest model sees
    its data about 3 times, not 10 (repeated data would bend the fit)."""
    tokenizer_kind: str = "bpe"
    """Tokenizer trained for 'world' or a text corpus: 'bpe' or 'char'."""
    vocab_size: int = 1024
    """Vocabulary of that tokenizer (BPE only)."""
    threads: int | None = None
    """CPU threads for torch (None = torch's default)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    seed: int = 1337
    """Seed of every run's initialisation and batch order (the trainer's default)."""

    def __post_init__(self) -> None:
        if not self.models:
            raise LmlabError("models must list at least one model size, e.g. 64x3")
        for m in self.models:
            parse_model(m)
        if not self.budgets or any(not (b > 0) for b in self.budgets):
            raise LmlabError(f"budgets must be positive FLOP counts, got {self.budgets}")
        for key in ("min_steps", "batch_size", "block_size", "eval_batches", "world_people"):
            if getattr(self, key) < 1:
                raise LmlabError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise LmlabError(f"lr must be positive, got {self.lr}")


def parse_model(spec: str) -> tuple[int, int]:
    """'64x3' -> (d_model 64, 3 layers)."""
    try:
        d, layers = (int(x) for x in str(spec).lower().split("x"))
    except ValueError:
        raise LmlabError(f"model size {spec!r} must be d_model x n_layers, e.g. 64x3") from None
    if d < 16 or d % 16 or layers < 1:
        raise LmlabError(f"model size {spec!r}: d_model must be a positive multiple of 16 (heads of width 16) "
                         "and n_layers >= 1")
    return d, layers


def prepare_corpus(corpus: str, out: Path, world_people: int = 4000, tokenizer_kind: str = "bpe",
                   vocab_size: int = 1024) -> Path:
    """Token shards for an experiment: given (a directory from `lmlab prepare`), or built once under
    <out>/data from the built-in world ('world') or a text file or directory."""
    src, out = Path(corpus), Path(out)
    if corpus != "world" and (src / "meta.json").is_file():
        return src
    data = out / "data"
    if (data / "meta.json").is_file():
        return data
    if corpus == "world":
        generate_world(WorldConfig(out=str(out / "world"), people=world_people))
        text = out / "world" / "pretrain.jsonl"
    elif src.exists():
        text = src
    else:
        raise LmlabError(f"corpus {corpus!r} is neither 'world', a text file/directory nor prepared shards")
    tok = out / "tokenizer.json"
    train_tokenizer(TokenizerConfig(input=str(text), out=str(tok), kind=tokenizer_kind, vocab_size=vocab_size))
    prepare(PrepareConfig(input=str(text), tokenizer=str(tok), out=str(data), val_fraction=0.05))
    return data


def plan(cfg: SweepConfig, vocab_size: int) -> list[dict[str, Any]]:
    """Every (model, budget) run of the grid with its parameter count, tokens and steps; skipped pairs left out."""
    runs = []
    for budget in cfg.budgets:
        for spec in cfg.models:
            d, layers = parse_model(spec)
            mc = model_config(d, layers, cfg.block_size, vocab_size)
            counts = param_counts(ModelConfig(**mc))
            tokens_per_step = cfg.batch_size * cfg.block_size
            steps = round(budget / (6 * counts["total"]) / tokens_per_step)
            tokens = steps * tokens_per_step
            if steps < cfg.min_steps or tokens / counts["total"] > cfg.max_tokens_per_param:
                continue
            runs.append({"name": f"d{d}L{layers}_C{budget:.0e}".replace("+", ""), "d_model": d, "n_layers": layers,
                         "n_heads": d // 16, "params": counts["total"],
                         "non_embedding_params": counts["non_embedding"], "flops": budget, "tokens": tokens,
                         "tokens_per_param": tokens / counts["total"], "steps": steps, "model": mc})
    return runs


def model_config(d: int, layers: int, context: int, vocab_size: int) -> dict[str, Any]:
    return dict(vocab_size=vocab_size, d_model=d, n_layers=layers, n_heads=d // 16, max_seq_len=context,
                norm="layernorm", positions="learned", mlp="gelu", bias=False, tie_embeddings=True)


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> None:
    """Rewrite the whole CSV atomically: a crash leaves the old file or the new one, never half a row."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def pretrain_run(data: Path, out: Path, model: dict[str, Any], steps: int, batch_size: int, block_size: int,
                 lr: float, eval_batches: int, threads: int | None = None, device: str = "auto",
                 seed: int = 1337) -> dict[str, Any]:
    """One short pretraining run as the scaling experiments make them: warmup over 5% of the steps, cosine
    decay to lr/10 at the last step, weight decay 0.1, evaluation only at the end. Returns its summary.
    `seed` sets the initialisation, the batch order and the validation windows."""
    pcfg = from_dict(PretrainConfig, {
        "data": str(data), "out": str(out), "model": {k: v for k, v in model.items() if k != "vocab_size"},
        "train": dict(steps=steps, batch_size=batch_size, block_size=block_size, lr=lr, min_lr=lr / 10,
                      warmup_steps=max(1, steps // 20), eval_interval=0, eval_batches=eval_batches,
                      ckpt_interval=max(50, steps // 4), log_interval=25, weight_decay=0.1, threads=threads,
                      device=device, progress=False, peak_tflops=1.0, seed=seed)})
    return Trainer(pcfg).fit()


def train_one(cfg: SweepConfig, run: dict[str, Any], data: Path) -> dict[str, Any]:
    t = time.perf_counter()
    summary = pretrain_run(data, Path(cfg.out) / "runs" / run["name"], run["model"], run["steps"], cfg.batch_size,
                           cfg.block_size, cfg.lr, cfg.eval_batches, cfg.threads, cfg.device, cfg.seed)
    return {**{k: v for k, v in run.items() if k != "model"}, "loss": summary["val_loss"],
            "train_loss": summary["train_loss"], "wall_s": round(time.perf_counter() - t, 2),
            "tokens_per_s": round(summary["tokens_per_s"] or 0.0, 1)}


@locked_run
def sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or finish) the grid; returns where the CSV is and how many runs it holds."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_corpus(cfg.corpus, out, cfg.world_people, cfg.tokenizer_kind, cfg.vocab_size)
    vocab = int(TokenData.read_meta(data)["vocab_size"])
    runs = plan(cfg, vocab)
    if not runs:
        raise LmlabError("no (model, budget) pair of the grid trains for min_steps or more: raise the budgets "
                         "or add smaller models")
    csv_path = out / "sweep.csv"
    rows = read_rows(csv_path)
    done = {r["name"] for r in rows}
    todo = [r for r in runs if r["name"] not in done]
    print(f"sweep: {len(runs)} runs over {len(cfg.budgets)} budgets ({len(runs) - len(todo)} already in "
          f"{csv_path}); data {data}", flush=True)
    t0 = time.perf_counter()
    for i, run in enumerate(todo, 1):
        print(f"  [{i}/{len(todo)}] {run['name']}: {run['params']:,} params, {run['tokens']:,} tokens "
              f"({run['tokens_per_param']:.1f}/param), {run['steps']} steps", flush=True)
        row = train_one(cfg, run, data)
        rows.append(row)
        write_rows(csv_path, rows)
        print(f"      val loss {row['loss']:.4f} in {row['wall_s']:.0f} s ({row['tokens_per_s']:,.0f} tokens/s)",
              flush=True)
    return {"csv": str(csv_path), "runs": len(rows), "new_runs": len(todo),
            "wall_s": round(time.perf_counter() - t0, 1)}


def format_sweep(result: dict[str, Any]) -> str:
    """Where the runs are, and the next command to run on them."""
    return f"{result['runs']} runs in {result['csv']}; fit them with: lmlab scale fit {result['csv']}\n"
