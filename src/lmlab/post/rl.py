"""`lmlab rl`: reinforcement learning from a reward, PPO or GRPO, with a KL leash to the reference.

Each step samples replies to a batch of prompts with the inference engine, scores every reply with the
reward (a reward model from `lmlab rm`, the world's gold reward, or a Python function), and updates the
policy on those rollouts for a few epochs:

- PPO (Schulman et al. 2017, as in Ouyang et al. 2022): a value head on the policy's hidden states,
  per-token rewards = -kl_coef x KL estimate to the reference, plus the reply's reward on its last
  token; advantages by GAE (gamma, lambda); clipped policy and value losses.
- GRPO (Shao et al. 2024): `group_size` replies per prompt, advantage = (reward - group mean) / group
  std for every token of a reply, no value model; the KL to the reference (k3) is a loss term.

KL per token: k1 = log pi - log ref, k3 = r - 1 - log r with r = ref / pi (Schulman 2020).

Under torchrun (`--set train.parallel=ddp`) each process samples and trains on every K-th prompt of a step
(GRPO's groups stay whole), its losses weighted by its share of the response tokens and PPO's advantages
whitened over all processes' tokens, so the run is the one-process run.
"""

from __future__ import annotations

import copy
import importlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn as nn

from lmlab.data.chat import END_OF_TURN, render
from lmlab.data.conversations import IGNORE, pad_batch, read_jsonl
from lmlab.data.tokenizer import Tokenizer
from lmlab.data.world import load_world
from lmlab.data.world_chat import gold_reward, is_world_dir, preference_pairs
from lmlab.errors import LmlabError
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams
from lmlab.model import checkpoint as ckpt_io
from lmlab.model.logprobs import batch_logprobs, gather_logprobs, log_probs
from lmlab.plan.flops import train_flops_per_token
from lmlab.post.evaluate import policy_report, report_lines
from lmlab.post.rm import load_reward_model
from lmlab.post.stage import (
    Log,
    Optimizer,
    PostTrainConfig,
    load_policy,
    shared_means,
    stage_output,
    stage_processes,
    token_weight,
)
from lmlab.rundir import locked_run
from lmlab.summary import update_summary
from lmlab.train import distributed
from lmlab.train.metrics import NullLog
from lmlab.usercode import call_user

ALGOS = ("ppo", "grpo")


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(pi || ref) estimated per sampled token from the two log-probabilities; 0 where `mask` is False.

    The policy's log-probabilities at prompt and padding positions are those of a placeholder token and
    can be very negative: k3's exp would overflow there, and inf x 0 is NaN, so those positions are
    zeroed before the estimate, not after."""
    d = ref_logp - logp  # log (ref / pi)
    if mask is not None:
        d = d.masked_fill(~mask, 0.0)
    if estimator == "k1":
        return -d
    if estimator == "k3":
        return d.exp() - 1 - d
    raise LmlabError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's response tokens (mask), the value after the last
    token being 0. Returns (advantages, returns = advantages + values)."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(running)
    for t in range(rewards.shape[1] - 1, -1, -1):
        m = mask[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m + running * (1 - m)
        adv[:, t] = running * m
        next_value = values[:, t] * m + next_value * (1 - m)
    return adv, adv + values


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                    clip: float) -> tuple[torch.Tensor, float]:
    """Mean over response tokens of -min(ratio A, clip(ratio, 1 - e, 1 + e) A); and the clipped fraction."""
    ratio = (logp - old_logp).exp()
    loss = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    m = mask.float()
    clipped = (((ratio - 1).abs() > clip).float() * m).sum() / m.sum().clamp(min=1)
    return (loss * m).sum() / m.sum().clamp(min=1), clipped.item()


def ppo_value_loss(v: torch.Tensor, old_v: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip: float) -> torch.Tensor:
    """Mean over response tokens of 0.5 max((v - R)^2, (clip(v, v_old +- e) - R)^2)."""
    clipped = old_v + (v - old_v).clamp(-clip, clip)
    loss = 0.5 * torch.max((v - returns) ** 2, (clipped - returns) ** 2)
    m = mask.float()
    return (loss * m).sum() / m.sum().clamp(min=1)


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(reward - its group's mean) / (its group's std + eps); rows come in consecutive groups.

    The std is the biased one (divide by the group size) plus 1e-6, as in DeepSeekMath's formula read
    literally. TRL's GRPOTrainer divides by the unbiased std plus 1e-4 instead, so its advantages are
    sqrt(G / (G - 1)) times smaller (lmlab's are 1.155x TRL's at groups of 4): a TRL user's learning rate
    or clip range does not carry over one for one."""
    # In float64, where the sum of a group of equal fp32 rewards is exact: their mean is then the reward itself
    # and their advantages 0. In fp32 the mean's rounding, divided by a spread of the same size plus eps, gave
    # every reply of such a group an advantage of about +-0.3 out of nothing.
    g = rewards.double().view(-1, group_size)
    adv = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, unbiased=False) + eps)
    return adv.view(-1).to(rewards.dtype)


class PolicyWithValue(nn.Module):
    """The policy and a scalar value head on its hidden states (the value model of PPO shares the backbone)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.cfg.d_model, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, batch: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p of each next token, entropy of each next-token distribution, value at each position),
        all (B, T-1), aligned with the tokens being predicted."""
        h = self.policy(batch["ids"].to(device), attn_mask=batch["mask"].to(device),
                        positions=batch["positions"].to(device), return_hidden=True)
        logp_all = log_probs(self.policy.logits(h[:, :-1]))
        # prompt and padding positions read token 0 and stay unmasked: the losses mask them
        logp = gather_logprobs(logp_all, batch["labels"][:, 1:].to(device).clamp(min=0))
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy, self.value_head(h[:, :-1]).squeeze(-1).float()


def load_reward(spec: str, data: str, device, penalty: float = 1.0) -> Callable[[list[str], list[str]], list[float]]:
    """The reward: 'gold' (the world's facts, a wrong answer scoring -penalty; needs a world as data), 'rm:PATH'
    (a reward model from lmlab rm) or 'python:module:function' (your function f(prompt, reply) -> float; code
    you wrote, run as is)."""
    if spec == "gold":
        if not is_world_dir(data):
            raise LmlabError("reward 'gold' needs a world directory as data (it checks replies against its facts)")
        world = load_world(data)
        known = {q["question"]: q for q in world["qa_train"] + world["qa_test"]}
        unknown = {q["question"] for q in world["qa_unknown"]}

        def gold(prompts: list[str], replies: list[str]) -> list[float]:
            return [gold_reward(known.get(p, {"answer": None}), r, p in unknown, penalty)
                    for p, r in zip(prompts, replies)]
        return gold
    if spec.startswith("rm:"):
        model, tok = load_reward_model(spec[3:], device)
        return lambda prompts, replies: model.score(tok, list(prompts), list(replies))
    if spec.startswith("python:"):
        module, _, name = spec[7:].rpartition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise LmlabError(f"reward {spec!r}: cannot load {name!r} from module {module!r} ({e})") from None
        label, as_float = f"reward {spec!r}", lambda p, r: float(fn(p, r))  # a non-number is the user's error
        return lambda prompts, replies: [call_user(as_float, label, p, r) for p, r in zip(prompts, replies)]
    raise LmlabError(f"reward must be 'gold', 'rm:PATH' or 'python:module:function', got {spec!r}")


def load_prompts(data: str, seed: int, prompts_file: str | None = None) -> list[str]:
    """Training prompts: a JSONL of {"prompt"} (`prompts_file`, else `data`), or a world's training split
    (the questions DPO also trains on)."""
    if prompts_file is None and is_world_dir(data):
        return [p["prompt"] for p in preference_pairs(load_world(data), seed)["train"]]
    source = prompts_file or data
    prompts = []
    for n, obj in read_jsonl(source):
        if not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise LmlabError(f"{source}:{n}: a record needs a non-empty string 'prompt'")
        prompts.append(obj["prompt"])
    return prompts


@dataclass
class RLConfig:
    init: str = "runs/quickstart/sft/checkpoint"
    """The policy to start from (usually the SFT model); it is also the reference unless `ref` is set."""
    ref: str | None = None
    """The frozen reference for the KL penalty (None = a copy of init)."""
    data: str = "runs/quickstart/world"
    """Prompts: a world directory (its training questions) or a JSONL file of {"prompt": ...}."""
    prompts: str | None = None
    """A JSONL file of {"prompt": ...} to train on instead of the world's training split (the world in `data`
    still grades and evaluates)."""
    reward: str = "gold"
    """'gold' (the world's facts), 'rm:PATH' (a reward model from lmlab rm) or 'python:module:function'."""
    wrong_penalty: float = 1.0
    """The gold reward of a wrong or made-up answer is -wrong_penalty (right +1, abstaining 0 about a known
    person, +1 about an unknown one): answering pays only when P(right) > penalty / (1 + penalty)."""
    out: str = "runs/rl"
    """Run directory: checkpoint/, metrics.jsonl, summary.json."""
    algo: str = "grpo"
    """'ppo' (value head, GAE, clipped losses) or 'grpo' (group-normalised advantages, no value model)."""
    prompts_per_step: int = 16
    """Prompts sampled per step."""
    group_size: int = 4
    """Replies per prompt (GRPO's group; PPO samples this many too)."""
    max_new_tokens: int = 24
    """Longest reply."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    kl_coef: float = 0.05
    """Weight of the KL to the reference: in the per-token reward (PPO) or the loss (GRPO)."""
    kl_estimator: str = "k3"
    """'k1' (log pi - log ref) or 'k3' ((ref/pi) - 1 - log(ref/pi)); PPO's reward uses it per token."""
    clip: float = 0.2
    """PPO/GRPO ratio clip epsilon (and PPO's value clip)."""
    epochs: int = 2
    """Optimisation passes over each step's rollouts."""
    gamma: float = 1.0
    """PPO discount."""
    lam: float = 0.95
    """PPO GAE lambda."""
    vf_coef: float = 0.5
    """PPO value-loss weight."""
    eval_questions: int = 100
    """With a world as data: questions per group for the evaluation before and after."""
    chat: bool = True
    """Render each prompt as a user turn of the chat template and stop a reply at the end of the turn; false: the
    prompt is raw text starting a document as in pretraining (after the end-of-document token), and a reply stops
    at that token or max_new_tokens (for a model that was never chat-tuned)."""
    train: PostTrainConfig = field(default_factory=lambda: PostTrainConfig(steps=60, lr=3e-5, min_lr=3e-6,
                                                                           warmup_steps=5, log_interval=5))
    """Optimisation settings (steps = rollout rounds; batch_size unused)."""
    CODE_KEYS: ClassVar[dict[str, str]] = {"reward": "python:"}
    """A 'python:module:function' reward is code to import and run: refused from a recipe without --allow-code."""

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise LmlabError(f"algo must be one of {', '.join(ALGOS)}, got {self.algo!r}")
        if self.kl_estimator not in ("k1", "k3"):
            raise LmlabError(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}")
        for key in ("prompts_per_step", "group_size", "max_new_tokens", "epochs"):
            if getattr(self, key) < 1:
                raise LmlabError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.algo == "grpo" and self.group_size < 2:
            raise LmlabError("grpo needs group_size >= 2 (advantages compare replies to the same prompt)")
        if not self.temperature > 0:
            raise LmlabError(f"temperature must be positive, got {self.temperature}")
        if isinstance(self.wrong_penalty, bool) or not isinstance(self.wrong_penalty, (int, float)) \
                or not 0 <= self.wrong_penalty < math.inf:
            raise LmlabError(f"wrong_penalty must be a finite number >= 0, got {self.wrong_penalty!r}")


def distinct_rewards(reward_fn: Callable[[list[str], list[str]], list[float]], prompts: list[str],
                     replies: list[str]) -> list[float]:
    """The reward of each (prompt, reply), every distinct pair scored once. Identical replies then get the same
    reward to the bit: a reward model's rounding depends on the batch it scores in, and a group of identical
    replies whose rewards differed by rounding alone would get advantages of order 1 from GRPO's division by
    their spread. (It also spares the reward the duplicates a peaked policy samples.)"""
    pairs = list(dict.fromkeys(zip(prompts, replies)))
    scores = list(reward_fn([p for p, _ in pairs], [r for _, r in pairs]))
    if len(scores) != len(pairs):
        raise LmlabError(f"the reward gave {len(scores)} values for {len(pairs)} distinct (prompt, reply) pairs")
    score = dict(zip(pairs, scores))
    return [score[pair] for pair in zip(prompts, replies)]


def prompt_seeds(seed: int, n: int, first: int = 0, stride: int = 1) -> list[int]:
    """The sampling seeds of prompts first, first + stride, ... (n of them) of a step whose seed is `seed`: each
    prompt its own (one seed for all would give reply j of every prompt the same random draws), and a prompt's
    seed its place in the step's batch, whichever process samples it."""
    return [(seed * 1_000_033 + first + k * stride) % 2**63 for k in range(n)]


def rollouts(model, tok: Tokenizer, prompts: list[str], cfg: RLConfig, device, seed: int, first: int = 0,
             stride: int = 1):
    """Sample group_size replies per prompt: (token batch, reply texts, prompt of each row). `prompts` are the
    step's prompts first, first + stride, ... (a process's share under torchrun); see `prompt_seeds`."""
    if cfg.chat:
        stop = tok.token_to_id(END_OF_TURN)
        ids = [tok.encode(render([{"role": "user", "content": p}])) for p in prompts]
    else:  # a document's text: the end-of-document token before it (as pretraining saw it) ends a reply too
        stop = tok.eos_id if tok.eos_id is not None else tok.bos_id
        if stop is None:
            raise LmlabError("rl with chat false needs a tokenizer with an end-of-document (or bos) token")
        ids = [[stop, *tok.encode(p)] for p in prompts]
    outs = Engine(model, tok, device=device).generate(ids, [SamplingParams(
        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, n=cfg.group_size, seed=s,
        stop_token_ids=[stop], ignore_eos=True) for s in prompt_seeds(seed, len(prompts), first, stride)])
    seqs, replies, row_prompts = [], [], []
    for p, prompt_ids, o in zip(prompts, ids, outs):
        for c in o.completions:
            reply = c.token_ids + ([stop] if c.finish_reason == "stop" else [])
            seqs.append((prompt_ids + reply, [IGNORE] * len(prompt_ids) + reply))
            replies.append(c.text.strip())
            row_prompts.append(p)
    return pad_batch(seqs, tok.pad_id if tok.pad_id is not None else 0), replies, row_prompts


@locked_run
def rl(cfg: RLConfig, reward_fn: Callable[[list[str], list[str]], list[float]] | None = None) -> dict[str, Any]:
    """Train `cfg.init` on `cfg.reward`, or on `reward_fn` (prompts, replies -> rewards) when a caller in
    Python passes one: a reward that needs more than a prompt and a reply (a task's own grading).

    Under torchrun (train.parallel=ddp) every process draws the step's prompts, samples and trains on every
    K-th of them, its loss weighted by its share of the step's response tokens: the one-process run. Rank 0
    alone evaluates, logs and writes."""
    if cfg.train.parallel == "fsdp":  # refused here whatever PostTrainConfig accepts, and at any world size
        raise LmlabError("rl cannot run with train.parallel=fsdp: every process samples its rollouts from the "
                         "whole policy, which FSDP shards; use train.parallel=ddp")
    # a step splits its prompts (checked against the processes in _rl), not train.batch_size
    with stage_processes(cfg.train, split_batch=False) as (ranks, device):
        return _rl(cfg, reward_fn, ranks, device)


def _rl(cfg: RLConfig, reward_fn, ranks: distributed.Ranks, device: torch.device) -> dict[str, Any]:
    tc = cfg.train
    policy, ck = load_policy(cfg.init, device)
    ref = load_policy(cfg.ref, device)[0] if cfg.ref else copy.deepcopy(policy)
    ref.eval().requires_grad_(False)
    tok = Tokenizer.load(ck.tokenizer_path)
    reward_name = cfg.reward if reward_fn is None else getattr(reward_fn, "__name__", "python function")
    if reward_fn is None:
        reward_fn = load_reward(cfg.reward, cfg.data, device, cfg.wrong_penalty)
    prompts = load_prompts(cfg.data, tc.seed, cfg.prompts)
    if min(cfg.prompts_per_step, len(prompts)) < ranks.world:
        raise LmlabError(f"rl on {ranks.world} processes needs at least one prompt per process each step, but a step "
                         f"has {min(cfg.prompts_per_step, len(prompts))} (prompts_per_step={cfg.prompts_per_step}, "
                         f"{len(prompts)} prompts): raise prompts_per_step or run fewer processes")
    before = policy_report(policy, ref, tok, cfg.data, cfg.eval_questions, device, tc.seed) if ranks.main else None
    model = PolicyWithValue(policy).to(device)
    if cfg.algo == "grpo":  # no value model: frozen, so neither the optimizer nor DDP tracks a head no loss uses
        model.value_head.requires_grad_(False)
    # one optimizer step per epoch of each rollout round: the schedule spans them all
    opt = Optimizer(model, replace(tc, steps=tc.steps * cfg.epochs, warmup_steps=tc.warmup_steps * cfg.epochs),
                    device)
    fwd = distributed.wrap(model, ranks, device, unused=bool(policy.cfg.moe))
    out = stage_output(cfg, "rl")
    log = Log(out / "metrics.jsonl") if ranks.main else NullLog()
    rng = random.Random(tc.seed + 1)
    tokens, flops, t0, row = 0, 0.0, time.perf_counter(), {}
    for step in range(1, tc.steps + 1):
        # every process draws the same prompts and samples its share: each reply is seeded by its prompt's place
        # in the step and its own among the prompt's replies, so a prompt's replies do not depend on the process
        batch_prompts = rng.sample(prompts, min(cfg.prompts_per_step, len(prompts)))
        batch, replies, row_prompts = rollouts(policy, tok, batch_prompts[ranks.rank::ranks.world], cfg, device,
                                               tc.seed * 100_003 + step, ranks.rank, ranks.world)
        mask = (batch["labels"][:, 1:] != IGNORE).to(device)
        rewards = torch.tensor(distinct_rewards(reward_fn, row_prompts, replies), dtype=torch.float32, device=device)
        n_resp = int(mask.sum())
        weight, all_resp = token_weight(n_resp, ranks)
        with torch.no_grad():
            model.eval()
            old_logp, _, old_v = model(batch, device)
            ref_logp = batch_logprobs(ref, batch, device)[0]
            kl = kl_per_token(old_logp, ref_logp, cfg.kl_estimator, mask) * mask
            if cfg.algo == "ppo":
                adv, returns = ppo_advantages(rewards, kl, old_v, mask, cfg, ranks, all_resp)
            else:
                adv, returns = grpo_advantages(rewards, cfg.group_size)[:, None] * mask, None
        model.train()
        stats = []
        for _ in range(cfg.epochs):
            with opt.autocast():
                logp, entropy, v = fwd(batch, device)
            pg, clipped = ppo_policy_loss(logp, old_logp, adv, mask, cfg.clip)
            loss = pg
            if cfg.algo == "ppo":
                vl = ppo_value_loss(v, old_v, returns, mask, cfg.clip)
                loss = loss + cfg.vf_coef * vl
            else:
                vl = torch.zeros(())
                m = mask.float()
                leash = (kl_per_token(logp, ref_logp, "k3", mask) * m).sum() / m.sum().clamp(min=1)
                loss = loss + cfg.kl_coef * leash
            step_loss = shared_means({"loss": loss.item()}, n_resp, all_resp, ranks)["loss"]
            if not math.isfinite(step_loss):  # the loss of all processes: they stop together
                raise LmlabError(f"loss became {step_loss} at step {step}; lower train.lr (now {tc.lr})")
            (loss * weight).backward()
            lr, norm = opt.apply()
            stats.append((pg.item(), vl.item(), clipped, (entropy * mask).sum().item() / max(n_resp, 1)))
        n_tok = int(batch["mask"].sum())
        tokens += n_tok * cfg.epochs
        flops += train_flops_per_token(policy.cfg, batch["ids"].shape[1]) * n_tok * (cfg.epochs + 2 / 3)
        if step % tc.log_interval == 0 or step == tc.steps:
            rows, all_rows = len(rewards), ranks.sum(len(rewards), "counting the step's replies")
            per_row = shared_means({"reward": rewards.mean().item(), "kl": kl.sum(1).mean().item(),
                                    "reply_tokens": n_resp / max(rows, 1)}, rows, all_rows, ranks)
            per_token = shared_means(dict(zip(("policy_loss", "value_loss", "clip_fraction", "entropy"), stats[-1])),
                                     n_resp, all_resp, ranks)
            row = {"step": step, "reward": per_row["reward"], "kl": per_row["kl"], **per_token, "lr": lr,
                   "grad_norm": norm, "reply_tokens": per_row["reply_tokens"]}
            log.write(row)
    log.close()
    wall = time.perf_counter() - t0
    summary = {"algo": cfg.algo, "reward": reward_name, "steps": tc.steps, "final": row,
               "train_tokens": int(ranks.sum(tokens, "counting tokens")),
               "train_flops": ranks.sum(flops, "counting FLOPs"), "wall_s": round(wall, 2),
               "checkpoint": str(out / "checkpoint"), "processes": ranks.world, "before": before, "after": None}
    if not ranks.main:
        ranks.barrier("waiting for rank 0 to write the checkpoint")
        return summary
    weights = {k.removeprefix("policy."): v for k, v in opt.weights(model).items() if not k.startswith("value_head")}
    ckpt_io.save_checkpoint(out / "checkpoint", weights, policy.cfg, ck.tokenizer_path, reads=[cfg.init], verb="rl",
                            meta={"stage": "rl", "algo": cfg.algo, "init": str(cfg.init), "reward": reward_name})
    ranks.barrier("waiting for rank 0 to write the checkpoint")
    summary["after"] = policy_report(policy, ref, tok, cfg.data, cfg.eval_questions, device, tc.seed)
    update_summary(out / "summary.json", "rl", summary)
    return summary


def ppo_advantages(rewards: torch.Tensor, kl: torch.Tensor, old_v: torch.Tensor, mask: torch.Tensor, cfg: RLConfig,
                   ranks: distributed.Ranks, all_resp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's (advantages, returns): per-token rewards -kl_coef x KL plus the reply's reward on its last token,
    GAE, then advantages whitened by the mean and std over the response tokens of all processes (`all_resp`
    of them), as one process whitens the whole batch."""
    last = mask.long().cumsum(1).argmax(1)  # index of each row's last response token
    token_rewards = -cfg.kl_coef * kl
    token_rewards[torch.arange(len(rewards)), last] += rewards
    adv, returns = gae(token_rewards, old_v * mask, mask, cfg.gamma, cfg.lam)
    m = mask.float()
    n = max(all_resp, 1)
    mean = ranks.sum((adv * m).sum().item(), "whitening advantages") / n
    std = math.sqrt(ranks.sum(((adv - mean) ** 2 * m).sum().item(), "whitening advantages") / n)
    return (adv - mean) / (std + 1e-8) * m, returns


def format_rl(s: dict[str, Any]) -> str:
    """`lmlab rl`'s report: the last step's reward and leash, then the policy before -> after."""
    f = s["final"]
    lines = [f"rl ({s['algo']}, reward {s['reward']}): {s['steps']} steps, {s['wall_s']:.0f} s; last step: reward "
             f"{f['reward']:+.3f}, KL {f['kl']:.3f}, entropy {f['entropy']:.3f}, clip fraction "
             f"{f['clip_fraction']:.2f}", *report_lines(s["before"], s["after"]), f"checkpoint {s['checkpoint']}"]
    return "\n".join(lines) + "\n"
