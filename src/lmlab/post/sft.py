"""`lmlab sft`: supervised fine-tuning on conversations, the loss on the assistant's tokens only.

The prompt's tokens are context, not targets: training on them would teach the model to write user
turns. The assistant's end-of-turn token is a target, which is how a model learns to stop. With
`pack`, several conversations share a row (positions restart and a block mask keeps them apart), so a
batch wastes no compute on padding.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lmlab.data.conversations import IGNORE, collate, examples, read_located
from lmlab.data.tokenizer import Tokenizer
from lmlab.data.world import load_world
from lmlab.data.world_chat import is_world_dir, sft_conversations
from lmlab.errors import LmlabError
from lmlab.evals.chat import chat_qa
from lmlab.infer.engine import Engine
from lmlab.model import checkpoint as ckpt_io
from lmlab.plan.flops import train_flops_per_token
from lmlab.post.stage import (
    PostTrainConfig,
    add_chat_tokens,
    final_weights,
    load_policy,
    model_for_rank0,
    policy_from,
    shared_means,
    stage_loop,
    stage_output,
    stage_processes,
    token_weight,
    tokenizer_of,
    whole_model,
)
from lmlab.rundir import DEFAULT_CHECKPOINT, locked_run
from lmlab.summary import update_summary
from lmlab.train import distributed
from lmlab.train.objectives import token_cross_entropy


@dataclass
class SFTConfig:
    init: str = DEFAULT_CHECKPOINT
    """Checkpoint to fine-tune (pretrained, imported with import-hf, or already post-trained)."""
    data: str = "runs/quickstart/world"
    """Conversations: a JSONL file ({"messages": [...]} or {"prompt", "response"} per line), or a world
    directory (its QA-train questions with their answers, and half the unknown people's with "I don't know.")."""
    out: str = "runs/sft"
    """Run directory: checkpoint/, metrics.jsonl, summary.json."""
    pack: bool = False
    """Pack several conversations into each row (block-diagonal attention, positions restart)."""
    val_fraction: float = 0.05
    """Share of conversations held out for the validation loss."""
    eval_questions: int = 100
    """With a world as data: questions per group for the chat-format QA evaluation before and after."""
    train: PostTrainConfig = field(default_factory=lambda: PostTrainConfig(lr=1e-3, min_lr=1e-4))
    """Optimisation settings (lr 1e-3 suits lmlab's small models; use about 1e-5 for imported billion-scale
    ones)."""

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise LmlabError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


def load_data(cfg: SFTConfig) -> tuple[list[list[dict[str, str]]], list[str], dict[str, Any] | None]:
    """(conversations, where each comes from, the world if the data is one)."""
    if is_world_dir(cfg.data):
        world = load_world(cfg.data)
        convs = sft_conversations(world, cfg.train.seed)
        return convs, [f"{cfg.data}: world conversation {i + 1}" for i in range(len(convs))], world
    located = read_located(cfg.data)
    return [m for _, m in located], [w for w, _ in located], None


def response_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over the response tokens of the batch."""
    logits = model(batch["ids"].to(device), attn_mask=batch["mask"].to(device),
                   positions=batch["positions"].to(device))
    return token_cross_entropy(logits, batch["labels"].to(device), ignore_index=IGNORE)


def evaluate_chat(model, tok: Tokenizer, world: dict[str, Any] | None, n: int, device) -> dict[str, Any] | None:
    if world is None or n <= 0:
        return None
    was_training = model.training
    result = chat_qa(Engine(model, tok, device=device), world, per_group=n)
    model.train(was_training)
    return result


def call_on_eval(on_eval, step: int, model: torch.nn.Module, opt, ranks, device, val_loss: float | None) -> None:
    """Hand rank 0's model, in eval mode, to `on_eval` (under FSDP a gathered copy: every process gathers)."""
    whole = model_for_rank0(model, opt, ranks, policy_from(model.cfg), device)
    if whole is None:
        return
    whole.eval()
    with torch.no_grad():
        on_eval(step, whole, val_loss)
    model.train()


@locked_run
def sft(cfg: SFTConfig, on_eval: Callable[[int, torch.nn.Module, float | None], Any] | None = None) -> dict[str, Any]:
    """Fine-tune; `on_eval(step, model, val_loss)`, if given, runs at every evaluation (experiments that follow
    a model through training use it, e.g. `lmlab hallucination unknown-sft`). The model is in eval mode
    during the call and goes back to training after it.

    Under torchrun (train.parallel=ddp or fsdp) each process trains on its share of every batch's conversations
    and weighs its loss by its response tokens over all processes', so the update is the one-process update;
    rank 0 alone evaluates (under FSDP a copy with the gathered weights), logs and writes."""
    with stage_processes(cfg.train) as (ranks, device):
        return _sft(cfg, on_eval, ranks, device)


def _sft(cfg: SFTConfig, on_eval, ranks, device: torch.device) -> dict[str, Any]:
    tc = cfg.train
    model, ck = load_policy(cfg.init, device)
    tok, pad = tokenizer_of(ck)
    out = stage_output(cfg, "sft")
    tok, new_tok = add_chat_tokens(model, tok, out)
    tok_path = new_tok or ck.tokenizer_path
    convs, where, world = load_data(cfg)
    rows = examples(tok, convs, model.cfg.max_seq_len, where)
    random.Random(tc.seed).shuffle(rows)
    n_val = max(1, int(len(rows) * cfg.val_fraction)) if cfg.val_fraction > 0 and len(rows) > 1 else 0
    val, train = rows[:n_val], rows[n_val:]
    if not train:
        raise LmlabError(f"{cfg.data}: no conversations left to train on after holding out {n_val}")
    before = evaluate_chat(model, tok, world, cfg.eval_questions, device) if ranks.main else None
    opt, log, batches = stage_loop(model, tc, device, out, len(train), ranks)
    fwd = distributed.wrap(model, ranks, device)
    lockstep = distributed.is_sharded(model)  # every process runs every forward: FSDP gathers weights in each
    tokens = response_tokens = 0
    flops = 0.0
    t0 = time.perf_counter()
    val_loss = None

    def validate() -> float | None:
        if not val:
            return None
        model.eval()
        total = count = 0.0
        with torch.no_grad(), opt.autocast():
            for i in range(0, len(val), tc.batch_size):
                chunk = val[i:i + tc.batch_size]
                mine = chunk[ranks.rank::ranks.world]
                if not mine and not lockstep:
                    continue
                b = collate(mine or chunk[:1], pad, cfg.pack, model.cfg.max_seq_len)  # a stand-in counts 0
                k = int((b["labels"] != IGNORE).sum()) if mine else 0
                total += response_loss(model, b, device).item() * k
                count += k
        model.train()
        return ranks.sum(total, "validation") / ranks.sum(count, "validation")

    model.train()
    for step in range(1, tc.steps + 1):
        idx = next(batches)[ranks.rank::ranks.world]  # this process's share of the batch
        batch = collate([train[i] for i in idx], pad, cfg.pack, model.cfg.max_seq_len)
        k = int((batch["labels"] != IGNORE).sum())
        weight, all_tokens = token_weight(k, ranks)
        with opt.autocast():
            loss = response_loss(fwd, batch, device)
        step_loss = shared_means({"loss": loss.item()}, k, all_tokens, ranks)["loss"]
        if not math.isfinite(step_loss):
            raise LmlabError(f"loss became {step_loss} at step {step}; lower train.lr (now {tc.lr})")
        (loss * weight).backward()
        lr, norm = opt.apply()
        tokens += batch["tokens"]
        flops += train_flops_per_token(model.cfg, batch["ids"].shape[1]) * batch["tokens"]
        response_tokens += k
        if step % tc.log_interval == 0 or step == tc.steps:
            log.write({"step": step, "loss": step_loss, "lr": lr, "grad_norm": norm, "tokens": tokens})
        if (tc.eval_interval and step % tc.eval_interval == 0) or step == tc.steps:
            val_loss = validate()
            log.write({"step": step, "eval": True, "val_loss": val_loss})
            if on_eval is not None:
                call_on_eval(on_eval, step, model, opt, ranks, device, val_loss)
    log.close()
    wall = time.perf_counter() - t0
    tokens = int(ranks.sum(tokens, "counting tokens"))
    response_tokens = int(ranks.sum(response_tokens, "counting tokens"))
    flops = ranks.sum(flops, "counting FLOPs")
    summary = {"steps": tc.steps, "conversations": len(train), "val_conversations": len(val),
               "train_tokens": tokens, "response_tokens": response_tokens, "val_loss": val_loss,
               "wall_s": round(wall, 2), "train_flops": flops, "pack": cfg.pack,
               "checkpoint": str(out / "checkpoint"), "processes": ranks.world}
    weights = final_weights(model, opt, ranks)
    if not ranks.main:
        ranks.barrier("waiting for rank 0 to write the checkpoint")
        return summary
    ckpt_io.save_checkpoint(out / "checkpoint", weights, model.cfg, tok_path, reads=[cfg.init], verb="sft",
                            meta={"stage": "sft", "init": str(cfg.init), "data": str(cfg.data), "steps": tc.steps})
    ranks.barrier("waiting for rank 0 to write the checkpoint")
    after = evaluate_chat(whole_model(model, weights, policy_from(model.cfg), device), tok, world,
                          cfg.eval_questions, device)
    if before is not None and after is not None:
        summary["before"] = {g: {k: v for k, v in r.items() if k != "examples"} for g, r in before.items()}
        summary["after"] = {g: {k: v for k, v in r.items() if k != "examples"} for g, r in after.items()}
        summary["examples"] = after["test"]["examples"]
    update_summary(out / "summary.json", "sft", summary)
    return summary


def format_sft(s: dict[str, Any]) -> str:
    """`lmlab sft`'s report: the run, then each QA group before -> after when a world was evaluated."""
    val = "n/a" if s["val_loss"] is None else f"{s['val_loss']:.4f}"
    lines = [f"sft: {s['steps']} steps on {s['conversations']} conversations, val loss {val} "
             f"({s['wall_s']:.0f} s); checkpoint {s['checkpoint']}"]
    for g in ("train", "test", "unknown") if "after" in s else ():
        b, a = s["before"][g], s["after"][g]
        extra = (f", exact match {b['exact_match']:.1%} -> {a['exact_match']:.1%}" if "exact_match" in a
                 else f", fabrication {b['fabrication_rate']:.1%} -> {a['fabrication_rate']:.1%}")
        lines.append(f"  QA-{g}: stops at end of turn {b['stop_rate']:.1%} -> {a['stop_rate']:.1%}{extra}")
    return "\n".join(lines) + "\n"
