"""Mitigation (b) of snowballing: continued training on biographies in which a wrong statement is followed
by a marked correction.

Each training prefix (`bio_facts.make_prefixes`, drawn apart from the evaluated ones) gives two sequences
in the pretraining format: the error prefix, then a new line "Correction: <the same sentence with the true
value>" and the rest of the biography, all true; and the control prefix followed by the rest alone, so that the
model learns to correct a wrong statement, not to correct whatever came last. The loss is on the tokens
after the prefix only: the planted error is context, never a target, so the model is not taught to
write it. Optimisation is `post.stage`'s (AdamW, warmup + cosine, lmlab's precision modes).
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import torch

from lmlab.data import world_text as wt
from lmlab.data.conversations import IGNORE, Example, pad_batch
from lmlab.errors import LmlabError
from lmlab.evals.bio_facts import MARKER, sentence
from lmlab.post.stage import Optimizer, PostTrainConfig, shuffled_batches
from lmlab.train.objectives import token_cross_entropy


def rest_of_bio(world: dict[str, Any], row: dict[str, Any], rng: random.Random) -> str:
    """The attributes not in the prefix, true, in a shuffled order with fresh templates."""
    person = world["people_by_name"][row["person"]]
    later = rng.sample(row["later"], len(row["later"]))
    return " ".join(sentence(row["person"], a, person[a], rng.randrange(len(wt.BIO_TEMPLATES[a]))) for a in later)


def correction_texts(world: dict[str, Any], row: dict[str, Any], rng: random.Random) -> list[tuple[str, str]]:
    """(prefix, target) for the error prefix with its correction, and for the control prefix."""
    rest = rest_of_bio(world, row, rng)
    fix = sentence(row["person"], row["attribute"], row["truth"], row["template"])
    return [(row["error"], f"\n{MARKER} {fix} {rest}"), (row["control"], f" {rest}")]


def encode_example(tok, prefix: str, target: str, max_len: int) -> Example:
    """Next-token aligned ids and labels, the loss on the target (and its end of document) only; cut to
    the context (a cut biography is what pretraining windows show too)."""
    if tok.eos_id is None:
        raise LmlabError("correction training needs a tokenizer with an end-of-document token")
    head = [tok.eos_id] + (tok.encode(prefix) if prefix else [])
    body = tok.encode(target) + [tok.eos_id]
    ids, labels = (head + body)[: max_len + 1], ([IGNORE] * len(head) + body)[: max_len + 1]
    if len(head) >= len(ids):
        raise LmlabError(f"a prefix of {len(head)} tokens leaves no room in the {max_len}-token context; "
                         "lower context")
    return Example(ids[:-1], labels[1:])


def replay_examples(tok, world: dict[str, Any], max_len: int) -> list[Example]:
    """The world's pretraining documents (biographies, QA pairs, worked problems; loss on every token), cut
    to the context: `world` as `load_world(..., pretrain=True)` reads it."""
    if "pretrain" not in world:
        raise LmlabError("replay needs the world's pretraining documents: load it with pretrain=True")
    return [encode_example(tok, "", d["text"], max_len) for d in world["pretrain"]]


def decision_labels(labels: torch.Tensor, decides: list[bool]) -> torch.Tensor:
    """Labels kept at the first target of each deciding row only: the token after the planted statement,
    where the model breaks the line for a correction or goes on (the new line is that token alone)."""
    out = torch.full_like(labels, IGNORE)
    for i, d in enumerate(decides):
        at = (labels[i] != IGNORE).nonzero()
        if d and len(at):
            out[i, at[0, 0]] = labels[i, at[0, 0]]
    return out


def loss_of(model: torch.nn.Module, batch: dict[str, torch.Tensor], decide: torch.Tensor, weight: float,
            device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over the targets, plus `weight` x that of the decision tokens: one token among
    some sixty of a sequence, its gradient is otherwise too diluted for a minute of training to learn it."""
    logits = model(batch["ids"].to(device), attn_mask=batch["mask"].to(device), positions=batch["positions"].to(device))
    loss = token_cross_entropy(logits, batch["labels"].to(device), ignore_index=IGNORE)
    if weight and bool((decide != IGNORE).any()):
        loss = loss + weight * token_cross_entropy(logits, decide.to(device), ignore_index=IGNORE)
    return loss


def train_corrections(model: torch.nn.Module, tok, world: dict[str, Any], rows: list[dict[str, Any]],
                      tc: PostTrainConfig, device: torch.device, replay: bool = True,
                      decision_weight: float = 0.0) -> dict[str, Any]:
    """Train `model` in place on the correction and clean sequences of `rows` (and, with `replay`, the
    world's pretraining text: without it the training erases the facts of the people it does not correct
    and the question-answer format, which bios alone never show);
    returns what it did and the fp32 weights to save."""
    if not rows:
        raise LmlabError("no training prefixes for correction training (the training people have no donors)")
    rng = random.Random(tc.seed)
    ctx = model.cfg.max_seq_len
    data = [encode_example(tok, p, t, ctx) for r in rows for p, t in correction_texts(world, r, rng)]
    n_correct = len(data)
    data += replay_examples(tok, world, ctx) if replay else []
    pad = tok.pad_id if tok.pad_id is not None else 0
    opt = Optimizer(model, tc, device)
    batches = shuffled_batches(len(data), tc.batch_size, tc.seed + 1)
    losses, tokens, t0 = [], 0, time.perf_counter()
    model.train()
    for step in range(1, tc.steps + 1):
        idx = next(batches)
        batch = pad_batch([(data[i].ids, data[i].labels) for i in idx], pad)
        decide = decision_labels(batch["labels"], [i < n_correct for i in idx])
        with opt.autocast():
            loss = loss_of(model, batch, decide, decision_weight, device)
        if not math.isfinite(loss.item()):
            raise LmlabError(f"loss became {loss.item()} at step {step}; lower train.lr (now {tc.lr})")
        loss.backward()
        opt.apply()
        losses.append(loss.item())
        tokens += int(batch["mask"].sum())
    model.eval()
    k = max(1, tc.steps // 10)
    return {"steps": tc.steps, "sequences": n_correct, "replayed": len(data) - n_correct, "prefixes": len(rows),
            "tokens": tokens,
            "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
            "wall_s": round(time.perf_counter() - t0, 2), "weights": opt.weights(model)}
