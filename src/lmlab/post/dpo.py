"""`lmlab dpo`: Direct Preference Optimization (Rafailov et al. 2023) against a frozen reference.

For a pair, h = [log pi(chosen) - log pi(rejected)] - [log ref(chosen) - log ref(rejected)], each log
probability summed over the response's tokens only (the assistant's reply and its end of turn). Losses:
'sigmoid' -log sigmoid(beta h) (DPO), 'ipo' (h - 1/(2 beta))^2 (Azar et al. 2023), 'hinge' relu(1 - beta h)
(SLiC). 'ipo' sums log-probabilities over the response as Azar et al. write it; 'ipo-mean' divides each
sequence's log-probability by its response length first, as TRL's DPOTrainer does for IPO, so a beta
tuned with TRL carries over under 'ipo-mean' and not under 'ipo'.
The implicit rewards beta (log pi - log ref) of chosen and rejected, their margin and how often
it is positive are logged, as is the policy's drift from the reference.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.data.conversations import IGNORE, encode, pad_batch
from lmlab.data.preferences import conversation, load_pairs
from lmlab.data.tokenizer import Tokenizer
from lmlab.errors import LmlabError
from lmlab.model import checkpoint as ckpt_io
from lmlab.model.logprobs import sequence_logprobs
from lmlab.plan.flops import train_flops_per_token
from lmlab.post.evaluate import policy_report, report_lines
from lmlab.post.stage import (
    PostTrainConfig,
    final_weights,
    load_policy,
    policy_from,
    shared_means,
    stage_loop,
    stage_output,
    stage_processes,
    token_weight,
    tokenizer_of,
    whole_model,
)
from lmlab.rundir import locked_run
from lmlab.summary import update_summary
from lmlab.train import distributed

LOSSES = ("sigmoid", "ipo", "ipo-mean", "hinge")


def dpo_loss(policy_c: torch.Tensor, policy_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor,
             beta: float, kind: str = "sigmoid") -> tuple[torch.Tensor, dict[str, float]]:
    """The loss over a batch of pairs (summed response log-probs in, mean loss out) and its metrics."""
    h = (policy_c - policy_r) - (ref_c - ref_r)
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif kind in ("ipo", "ipo-mean"):  # 'ipo-mean' is given per-token means (see `pair_scores`)
        losses = (h - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise LmlabError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")
    rc, rr = beta * (policy_c - ref_c).detach(), beta * (policy_r - ref_r).detach()
    metrics = {"rewards/chosen": rc.mean().item(), "rewards/rejected": rr.mean().item(),
               "rewards/margins": (rc - rr).mean().item(), "rewards/accuracies": (rc > rr).float().mean().item(),
               "logps/chosen": policy_c.detach().mean().item(), "logps/rejected": policy_r.detach().mean().item()}
    return losses.mean(), metrics


def pair_scores(model: torch.nn.Module, batch: dict[str, torch.Tensor], device, kind: str) -> torch.Tensor:
    """Each sequence's response log-probability: summed, or for 'ipo-mean' divided by the response length."""
    lp = sequence_logprobs(model, batch, device)
    if kind != "ipo-mean":
        return lp
    return lp / (batch["labels"][:, 1:] != IGNORE).sum(1).clamp(min=1).to(lp.device)


def pair_batch(tok: Tokenizer, pairs: list[dict[str, Any]], max_len: int, pad: int) -> dict[str, torch.Tensor]:
    """Chosen sequences then rejected ones, right-padded; too long a pair is an error naming it."""
    seqs = []
    for key in ("chosen", "rejected"):
        for p in pairs:
            ids, labels = encode(tok, conversation(p, p[key]))
            if len(ids) > max_len:
                raise LmlabError(f"{p.get('where', 'pair')}: prompt + {key} is {len(ids)} tokens, longer than the "
                                 f"context of {max_len}")
            seqs.append((ids, labels))
    return pad_batch(seqs, pad)


@dataclass
class DPOConfig:
    init: str = "runs/quickstart/sft/checkpoint"
    """The policy to start from (usually the SFT model)."""
    ref: str | None = None
    """The frozen reference (None = a copy of init)."""
    data: str = "runs/quickstart/world"
    """Preference pairs: JSONL ({"prompt", "chosen", "rejected"} per line) or a world directory."""
    out: str = "runs/dpo"
    """Run directory: checkpoint/, metrics.jsonl, summary.json."""
    beta: float = 0.1
    """Strength of the pull towards the reference (smaller = the policy may move further)."""
    loss: str = "sigmoid"
    """'sigmoid' (DPO), 'ipo' or 'hinge'."""
    nll_weight: float = 0.0
    """Add this times the chosen replies' mean token negative log-likelihood (RPO, Pang et al. 2024): keeps
    chosen replies likely in absolute terms, which plain DPO does not (it only widens the gap), so that a
    chosen reply the SFT model never produced, such as an abstention, can become the greedy one."""
    precompute_ref: bool = True
    """Score every pair under the reference once before training, then free it (half the forward passes)."""
    eval_questions: int = 100
    """With a world as data: questions per group for the chat-format evaluation before and after."""
    train: PostTrainConfig = field(default_factory=lambda: PostTrainConfig(steps=150, lr=1e-4, min_lr=1e-5))
    """Optimisation settings (batch_size counts pairs)."""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise LmlabError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.nll_weight < 0:
            raise LmlabError(f"nll_weight must be >= 0, got {self.nll_weight}")
        if not self.beta > 0:
            raise LmlabError(f"beta must be positive, got {self.beta}")


@locked_run
def dpo(cfg: DPOConfig) -> dict[str, Any]:
    """Under torchrun (train.parallel=ddp or fsdp) each process takes its share of every batch's pairs, weighted
    by its share of the pairs, so the update is the one-process update; rank 0 alone evaluates (under FSDP a copy
    with the gathered weights) and writes. Under FSDP the reference is scored once before training
    (precompute_ref), so that no process holds a whole frozen model while it trains."""
    if cfg.train.parallel == "fsdp" and not cfg.precompute_ref:
        raise LmlabError("train.parallel=fsdp scores the reference once before training: set precompute_ref=true")
    with stage_processes(cfg.train) as (ranks, device):
        return _dpo(cfg, ranks, device)


def _dpo(cfg: DPOConfig, ranks, device: torch.device) -> dict[str, Any]:
    tc = cfg.train
    policy, ck = load_policy(cfg.init, device)
    ref = load_policy(cfg.ref, device)[0] if cfg.ref else copy.deepcopy(policy)
    ref.eval().requires_grad_(False)
    tok, pad = tokenizer_of(ck)
    train, heldout = load_pairs(cfg.data, tc.seed)
    if not train:
        raise LmlabError(f"{cfg.data}: no preference pairs to train on")
    max_len = policy.cfg.max_seq_len
    for p in train:  # fail before training, naming the pair, rather than mid-run
        pair_batch(tok, [p], max_len, pad)
    before = policy_report(policy, ref, tok, cfg.data, cfg.eval_questions, device, tc.seed) if ranks.main else None
    ref_scores = None
    if cfg.precompute_ref:
        with torch.no_grad():
            ref_scores = torch.cat([pair_scores(ref, pair_batch(tok, train[i:i + 64], max_len, pad), device, cfg.loss)
                                    .view(2, -1).T for i in range(0, len(train), 64)])  # (pairs, 2)
    out = stage_output(cfg, "dpo")
    if not ranks.main and cfg.precompute_ref:
        ref = None  # rank 0 alone keeps it, for the report after training
    opt, log, batches = stage_loop(policy, tc, device, out, len(train), ranks)
    fwd = distributed.wrap(policy, ranks, device)
    tokens, flops, t0 = 0, 0.0, time.perf_counter()
    policy.train()
    for step in range(1, tc.steps + 1):
        idx = next(batches)[ranks.rank::ranks.world]  # this process's share of the pairs
        batch = pair_batch(tok, [train[i] for i in idx], max_len, pad)
        n = len(idx)
        weight, pairs = token_weight(n, ranks)
        if ref_scores is not None:
            ref_c, ref_r = ref_scores[idx, 0], ref_scores[idx, 1]
        else:
            with torch.no_grad():
                r = pair_scores(ref, batch, device, cfg.loss)
            ref_c, ref_r = r[:n], r[n:]
        with opt.autocast():
            lp = pair_scores(fwd, batch, device, cfg.loss)
        loss, metrics = dpo_loss(lp[:n], lp[n:], ref_c, ref_r, cfg.beta, cfg.loss)
        if cfg.nll_weight:
            chosen_tokens = (batch["labels"][:n, 1:] != IGNORE).sum(1).clamp(min=1).to(lp.device)
            nll = (-lp[:n] / (1 if cfg.loss == "ipo-mean" else chosen_tokens)).mean()
            loss = loss + cfg.nll_weight * nll
            metrics["nll/chosen"] = nll.item()
        metrics = shared_means({"loss": loss.item(), **metrics}, n, pairs, ranks)
        step_loss = metrics.pop("loss")
        if not math.isfinite(step_loss):
            raise LmlabError(f"loss became {step_loss} at step {step}; lower train.lr (now {tc.lr})")
        (loss * weight).backward()
        lr, norm = opt.apply()
        n_tok = int(batch["mask"].sum())
        tokens += n_tok
        flops += train_flops_per_token(policy.cfg, batch["ids"].shape[1]) * n_tok
        if step % tc.log_interval == 0 or step == tc.steps:
            log.write({"step": step, "loss": step_loss, "lr": lr, "grad_norm": norm, **metrics})
    log.close()
    wall = time.perf_counter() - t0
    summary = {"steps": tc.steps, "pairs": len(train), "beta": cfg.beta, "loss": cfg.loss,
               "final": metrics, "train_tokens": int(ranks.sum(tokens, "counting tokens")),
               "train_flops": ranks.sum(flops, "counting FLOPs"), "wall_s": round(wall, 2),
               "checkpoint": str(out / "checkpoint"), "processes": ranks.world}
    weights = final_weights(policy, opt, ranks)
    if ranks.main:
        ckpt_io.save_checkpoint(out / "checkpoint", weights, policy.cfg, ck.tokenizer_path,
                                reads=[cfg.init], verb="dpo",
                                meta={"stage": "dpo", "init": str(cfg.init), "beta": cfg.beta, "loss": cfg.loss})
    ranks.barrier("waiting for rank 0 to write the checkpoint")
    if not ranks.main:
        return summary
    summary["before"] = before
    summary["after"] = policy_report(whole_model(policy, weights, policy_from(policy.cfg), device), ref, tok, cfg.data,
                                     cfg.eval_questions, device, tc.seed)
    update_summary(out / "summary.json", "dpo", summary)
    return summary


def format_dpo(s: dict[str, Any]) -> str:
    """`lmlab dpo`'s report: the last batch's implicit reward, then the policy before -> after."""
    f = s["final"]
    lines = [f"dpo ({s['loss']}, beta {s['beta']}): {s['steps']} steps on {s['pairs']} pairs, {s['wall_s']:.0f} s; "
             f"last batch: reward margin {f['rewards/margins']:.2f}, accuracy {f['rewards/accuracies']:.0%}",
             *report_lines(s["before"], s["after"]), f"checkpoint {s['checkpoint']}"]
    return "\n".join(lines) + "\n"
