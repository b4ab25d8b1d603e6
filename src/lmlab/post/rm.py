"""`lmlab rm`: a reward model trained on preference pairs, and `lmlab rm score` to use it.

The model is a transformer backbone (usually the SFT model) with a scalar head reading the hidden state
of the last real token of prompt + response (the assistant's end-of-turn: by then the model has read
the whole reply). Training widens the score gap between the chosen and the rejected reply with the
Bradley-Terry loss -log sigmoid(r_chosen - r_rejected - margin); optional reward centring adds
coef x (r_chosen + r_rejected)^2 so scores stay near zero (only differences are identified).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.data.conversations import pad_rows, prompt_ids, read_jsonl
from lmlab.data.preferences import conversation, load_pairs, pair_ids
from lmlab.data.tokenizer import Tokenizer
from lmlab.device import pick_device
from lmlab.errors import LmlabError
from lmlab.model import checkpoint as ckpt_io
from lmlab.model.config import ModelConfig
from lmlab.model.logprobs import token_logprobs
from lmlab.model.transformer import Transformer
from lmlab.plan.flops import train_flops_per_token
from lmlab.post.stage import (
    PostTrainConfig,
    final_weights,
    load_policy,
    model_for_rank0,
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


class RewardModel(nn.Module):
    """Backbone + linear head on the last real token: (B, T) ids, (B, T) mask -> (B,) scores.

    With `logprob_feature`, the score also adds a learned multiple of the backbone's own mean log-probability
    of the reply's tokens. A fresh head reads one hidden state and, trained on a few hundred pairs, learns
    which (prompt, reply) pairs it was shown; what the backbone already believes about a reply is in its
    next-token predictions, and this feature hands it to the score directly (its effect on held-out
    pairwise accuracy is measured in docs/benchmarks.md).
    """

    def __init__(self, backbone: Transformer, logprob_feature: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(backbone.cfg.d_model, 1)
        nn.init.normal_(self.value_head.weight, std=1 / math.sqrt(backbone.cfg.d_model))
        nn.init.zeros_(self.value_head.bias)
        # shape (1,), not a scalar: FSDP shards only tensors with a dimension
        self.logprob_scale = nn.Parameter(torch.ones(1)) if logprob_feature else None

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, reply_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(ids, attn_mask=mask, return_hidden=True)
        last = mask.long().sum(dim=1) - 1  # right padding: the last real token of each row
        score = self.value_head(hidden[torch.arange(ids.shape[0], device=ids.device), last]).squeeze(-1)
        if self.logprob_scale is not None:
            if reply_mask is None:
                raise LmlabError("this reward model also reads the reply's log-probability: pass reply_mask")
            score = score + self.logprob_scale * mean_reply_logprob(self.backbone, hidden, ids, reply_mask)
        return score

    @torch.no_grad()
    def score(self, tok: Tokenizer, prompts: list[str], replies: list[str], batch: int = 64,
              truncate: bool = False) -> list[float]:
        """Scores of (prompt, reply) chats; with `truncate`, a chat longer than the context is cut at its end
        instead of being an error."""
        device = next(self.parameters()).device
        pad = tok.pad_id if tok.pad_id is not None else 0
        out: list[float] = []
        for i in range(0, len(prompts), batch):
            items = [({"prompt": p}, r) for p, r in zip(prompts[i:i + batch], replies[i:i + batch])]
            ids, mask, reply = reply_batch(tok, items, self.backbone.cfg.max_seq_len,
                                           [f"reply {j + 1}" for j in range(i, i + len(items))], pad, truncate)
            out += self(ids.to(device), mask.to(device), reply.to(device)).float().tolist()
        return out


def mean_reply_logprob(backbone: Transformer, hidden: torch.Tensor, ids: torch.Tensor,
                       reply_mask: torch.Tensor) -> torch.Tensor:
    """(B,) mean log-probability of each row's reply tokens (reply_mask True) under the backbone."""
    tok_lp = token_logprobs(backbone.logits(hidden[:, :-1]), ids[:, 1:])
    m = reply_mask[:, 1:].float()
    return (tok_lp * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float | torch.Tensor = 0.0,
                       centring: float = 0.0) -> torch.Tensor:
    """Mean of -log sigmoid(r_c - r_r - margin) + centring x (r_c + r_r)^2."""
    loss = -F.logsigmoid(chosen - rejected - margin)
    if centring:
        loss = loss + centring * (chosen + rejected) ** 2
    return loss.mean()


def batch_ids(tok: Tokenizer, seqs: list[list[int]], max_len: int, where: list[str],
              pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and padding mask; a sequence longer than the context is an error naming it."""
    for ids, w in zip(seqs, where):
        if len(ids) > max_len:
            raise LmlabError(f"{w}: prompt + response is {len(ids)} tokens, longer than the context of {max_len}")
    return pad_rows(seqs, pad)


def reply_batch(tok: Tokenizer, items: list[tuple[dict[str, Any], str]], max_len: int, where: list[str], pad: int,
                truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, padding mask, reply mask) of (pair, reply) chats; the reply mask covers the reply's tokens and
    its end of turn."""
    seqs, starts = [], []
    for pair, reply in items:
        ids = pair_ids(tok, pair, reply)
        seqs.append(ids[:max_len] if truncate else ids)
        starts.append(len(prompt_ids(tok, conversation(pair, reply))))
    ids, mask = batch_ids(tok, seqs, max_len, where, pad)
    reply = mask.clone()
    for i, s in enumerate(starts):
        reply[i, :s] = False
    return ids, mask, reply


def score_pairs(model: RewardModel, tok: Tokenizer, pairs: list[dict[str, Any]], device: torch.device,
                pad: int, fwd: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores, rejected scores) of a batch of pairs, one forward pass over both (through `fwd`, the
    model as DDP wraps it, when training under torchrun)."""
    items = [(p, p[k]) for k in ("chosen", "rejected") for p in pairs]
    where = [p.get("where", "pair") for p in pairs] * 2
    ids, mask, reply = reply_batch(tok, items, model.backbone.cfg.max_seq_len, where, pad)
    r = (model if fwd is None else fwd)(ids.to(device), mask.to(device), reply.to(device)).float()
    return r[: len(pairs)], r[len(pairs):]


def evaluate(model: RewardModel, tok: Tokenizer, pairs: list[dict[str, Any]], device, pad: int,
             batch: int = 64) -> dict[str, float]:
    """Pairwise accuracy (chosen scored above rejected) and mean margin r_c - r_r."""
    if not pairs:
        return {"n": 0, "accuracy": float("nan"), "margin": float("nan")}
    was = model.training
    model.eval()
    diffs = []
    with torch.no_grad():
        for i in range(0, len(pairs), batch):
            c, r = score_pairs(model, tok, pairs[i:i + batch], device, pad)
            diffs.append(c - r)
    model.train(was)
    d = torch.cat(diffs)
    return {"n": len(pairs), "accuracy": (d > 0).float().mean().item(), "margin": d.mean().item()}


@dataclass
class RMConfig:
    init: str = "runs/quickstart/sft/checkpoint"
    """Backbone checkpoint (usually the SFT model)."""
    data: str = "runs/quickstart/world"
    """Preference pairs: a JSONL file ({"prompt", "chosen", "rejected"} per line, optional "margin") or a world
    directory (its generated pairs: true answer or abstention over a fabrication)."""
    out: str = "runs/rm"
    """Run directory: checkpoint/ (backbone + value head), metrics.jsonl, summary.json."""
    margin: bool = False
    """Use each pair's "margin" field in the loss: -log sigmoid(r_c - r_r - margin)."""
    centring: float = 0.0
    """Reward centring coefficient: adds coef x (r_c + r_r)^2 (0.01 is usual; 0 = off)."""
    logprob_feature: bool = False
    """Add a learned multiple of the backbone's mean log-probability of the reply to the head's score (what
    the model already believes about the reply)."""
    train: PostTrainConfig = field(default_factory=lambda: PostTrainConfig(steps=200, lr=3e-4, min_lr=3e-5))
    """Optimisation settings (batch_size counts pairs)."""


def save_reward_model(path: Path, weights: dict[str, torch.Tensor], cfg: ModelConfig, tokenizer: Path,
                      meta: dict) -> None:
    """One safetensors file: the backbone's weights as usual plus value_head.weight and value_head.bias (and
    logprob_scale); `weights` as the RewardModel names them."""
    weights = {k.removeprefix("backbone."): v for k, v in weights.items()}
    reads = [meta["init"]] if "init" in meta else []
    ckpt_io.save_checkpoint(path, weights, cfg, tokenizer, reads=reads, verb="rm", meta={"stage": "rm", **meta})


def reward_model_from_state(cfg: ModelConfig, weights: dict[str, torch.Tensor], where: str | Path) -> RewardModel:
    """A RewardModel from a reward-model checkpoint's weights: the backbone's, value_head.*, maybe logprob_scale."""
    weights = dict(weights)
    head = {k: weights.pop(k) for k in ("value_head.weight", "value_head.bias") if k in weights}
    if len(head) != 2:
        raise LmlabError(f"{where} is not a reward model (no value_head.* weights); train one with `lmlab rm`")
    scale = weights.pop("logprob_scale", None)
    model = RewardModel(ckpt_io.model_from_state(cfg, weights, where), logprob_feature=scale is not None)
    model.value_head.load_state_dict({k.split(".")[1]: v for k, v in head.items()})
    if scale is not None:
        model.logprob_scale.data.copy_(scale.reshape(1))  # earlier checkpoints hold a scalar
    return model


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[RewardModel, Tokenizer]:
    ck = ckpt_io.load_checkpoint(path)
    model = reward_model_from_state(ck.config, ck.weights, path)
    if ck.tokenizer_path is None:
        raise LmlabError(f"{path} has no tokenizer.json")
    return model.to(device).eval(), Tokenizer.load(ck.tokenizer_path)


def reward_model_from(cfg: ModelConfig):
    """`whole_model`'s builder for a reward model whose backbone has config `cfg`."""
    return lambda weights: reward_model_from_state(cfg, {k.removeprefix("backbone."): v for k, v in weights.items()},
                                                   "the gathered weights")


@locked_run
def train_rm(cfg: RMConfig) -> dict[str, Any]:
    """Train the reward model. Under torchrun (train.parallel=ddp or fsdp) the processes split each batch's pairs
    and weigh their Bradley-Terry losses by their shares: the one-process update. Rank 0 evaluates (under FSDP a
    copy with the gathered weights) and writes."""
    with stage_processes(cfg.train) as (ranks, device):
        return _train_rm(cfg, ranks, device)


def _train_rm(cfg: RMConfig, ranks, device: torch.device) -> dict[str, Any]:
    tc = cfg.train
    backbone, ck = load_policy(cfg.init, device)
    tok, pad = tokenizer_of(ck)
    model = RewardModel(backbone, cfg.logprob_feature).to(device)
    train, heldout = load_pairs(cfg.data, tc.seed)
    if not train:
        raise LmlabError(f"{cfg.data}: no preference pairs to train on")
    out = stage_output(cfg, "rm")
    opt, log, batches = stage_loop(model, tc, device, out, len(train), ranks)
    # Without the log-probability feature an untied backbone's output layer gets no gradient.
    fwd = distributed.wrap(model, ranks, device, unused=True)
    tokens, flops, t0 = 0, 0.0, time.perf_counter()
    ev: dict[str, Any] = {}
    model.train()
    for step in range(1, tc.steps + 1):
        pairs = [train[i] for i in next(batches)[ranks.rank::ranks.world]]  # this process's share
        weight, n_pairs = token_weight(len(pairs), ranks)
        with opt.autocast():
            c, r = score_pairs(model, tok, pairs, device, pad, fwd)
        margin = torch.tensor([float(p.get("margin", 0.0)) for p in pairs], device=device) if cfg.margin else 0.0
        loss = bradley_terry_loss(c, r, margin, cfg.centring)
        logged = shared_means({"loss": loss.item(), "accuracy": (c > r).float().mean().item(),
                               "margin": (c - r).mean().item()}, len(pairs), n_pairs, ranks)
        if not math.isfinite(logged["loss"]):
            raise LmlabError(f"loss became {logged['loss']} at step {step}; lower train.lr (now {tc.lr})")
        (loss * weight).backward()
        lr, norm = opt.apply()
        n_tok = sum(len(pair_ids(tok, p, p[k])) for p in pairs for k in ("chosen", "rejected"))
        tokens += n_tok
        flops += train_flops_per_token(backbone.cfg, backbone.cfg.max_seq_len // 4) * n_tok
        if step % tc.log_interval == 0 or step == tc.steps:
            log.write({"step": step, "loss": logged["loss"], "lr": lr, "grad_norm": norm,
                       "accuracy": logged["accuracy"], "margin": logged["margin"]})
        if (tc.eval_interval and step % tc.eval_interval == 0) or step == tc.steps:
            whole = model_for_rank0(model, opt, ranks, reward_model_from(backbone.cfg), device)
            if whole is not None:
                ev = {name: evaluate(whole, tok, pairs_, device, pad) for name, pairs_ in heldout.items()}
                log.write({"step": step, "eval": True, **{f"{k}_accuracy": v["accuracy"] for k, v in ev.items()}})
    log.close()
    wall = time.perf_counter() - t0
    summary = {"steps": tc.steps, "pairs": len(train), "train_tokens": int(ranks.sum(tokens, "counting tokens")),
               "train_flops": ranks.sum(flops, "counting FLOPs"), "wall_s": round(wall, 2),
               "checkpoint": str(out / "checkpoint"), "processes": ranks.world}
    weights = final_weights(model, opt, ranks)
    if ranks.main:
        save_reward_model(out / "checkpoint", weights, backbone.cfg, ck.tokenizer_path,
                          {"init": str(cfg.init), "data": str(cfg.data), "steps": tc.steps})
    ranks.barrier("waiting for rank 0 to write the checkpoint")
    if not ranks.main:
        return summary
    whole = whole_model(model, weights, reward_model_from(backbone.cfg), device)
    train_eval = evaluate(whole, tok, train[:500], device, pad)
    summary.update({"train_accuracy": train_eval["accuracy"], "heldout_accuracy": ev["heldout"]["accuracy"],
                    "heldout_margin": ev["heldout"]["margin"], "heldout": ev})
    update_summary(out / "summary.json", "rm", summary)
    return summary


def format_rm(s: dict[str, Any]) -> str:
    """`lmlab rm`'s report: pairwise accuracy on the training pairs and on each held-out group."""
    heldout = ", ".join(f"{k} {v['accuracy']:.1%} (n={v['n']}, margin {v['margin']:.2f})"
                        for k, v in s["heldout"].items())
    return (f"rm: {s['steps']} steps on {s['pairs']} pairs ({s['wall_s']:.0f} s); pairwise accuracy train "
            f"{s['train_accuracy']:.1%}, held out {heldout}\ncheckpoint {s['checkpoint']}\n")


@dataclass
class RMScoreConfig:
    model: str = "runs/quickstart/rm/checkpoint"
    """Reward model checkpoint (from lmlab rm)."""
    prompt: str = ""
    """The user's prompt."""
    responses: list[str] = field(default_factory=list)
    """Replies to score (with --file, ignored)."""
    file: str | None = None
    """Instead: a JSONL file of {"prompt", "response"} records to score."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    POSITIONAL: ClassVar[tuple[str, ...]] = ("model",)


def run_rm_score(cfg: RMScoreConfig) -> dict[str, Any]:
    """`lmlab rm score`: one score per reply (higher = preferred)."""
    device = pick_device(cfg.device)
    model, tok = load_reward_model(cfg.model, device)
    if cfg.file:
        items = []
        for n, obj in read_jsonl(cfg.file):
            if not isinstance(obj.get("prompt"), str) or not isinstance(obj.get("response"), str):
                raise LmlabError(f"{cfg.file}:{n}: a record needs string fields 'prompt' and 'response'")
            items.append({"prompt": obj["prompt"], "response": obj["response"], "where": f"{cfg.file}:{n}"})
    else:
        if not cfg.prompt or not cfg.responses:
            raise LmlabError("give --prompt and --responses (a list), or --file with prompt/response records")
        items = [{"prompt": cfg.prompt, "response": r, "where": f"response {i + 1}"}
                 for i, r in enumerate(cfg.responses)]
    scores = model.score(tok, [x["prompt"] for x in items], [x["response"] for x in items])
    return {"scores": [{"prompt": x["prompt"], "response": x["response"], "score": s} for x, s in zip(items, scores)]}


def format_rm_score(result: dict[str, Any]) -> str:
    """One line per reply: its score, then the (shortened) prompt and reply it belongs to."""
    return "".join(f"{x['score']:+.3f}  {x['prompt'][:60]!r} -> {x['response'][:60]!r}\n" for x in result["scores"])
