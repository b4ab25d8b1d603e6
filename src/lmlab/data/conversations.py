"""Conversations for post-training: JSONL in, token ids and loss masks out.

A line is either {"messages": [{"role": ..., "content": ...}, ...]} or {"prompt": ..., "response": ...}
(optionally with "system"). Rendering follows `lmlab.data.chat`; the loss is taken only on what the
assistant says, its end-of-turn token included (that is how a model learns to stop), never on the
system or user turns or the role markers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.data.chat import END_OF_TURN, ROLES, SPACE
from lmlab.data.text import jsonl_records
from lmlab.errors import LmlabError

IGNORE = -100
"""Label of a position that carries no loss (cross_entropy's ignore_index)."""


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path}: file not found")
    rows = list(jsonl_records(path))
    if not rows:
        raise LmlabError(f"{path}: no records")
    return rows


def to_messages(obj: dict[str, Any], where: str) -> list[dict[str, str]]:
    """A record as a list of messages ending with an assistant turn."""
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise LmlabError(f"{where}: 'messages' must be a non-empty list")
    elif "prompt" in obj and "response" in obj:
        msgs = ([{"role": "system", "content": obj["system"]}] if obj.get("system") else []) + [
            {"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["response"]}]
    else:
        raise LmlabError(f"{where}: a record needs 'messages', or 'prompt' and 'response' (keys: "
                         f"{', '.join(sorted(obj)) or 'none'})")
    for i, m in enumerate(msgs):
        # The role is checked to be a string first: a list or dict role cannot even be looked up in ROLES.
        role = m.get("role") if isinstance(m, dict) else None
        if not isinstance(role, str) or role not in ROLES or not isinstance(m.get("content"), str):
            raise LmlabError(f"{where}: message {i} needs a role in {sorted(ROLES)} and a string content")
    if msgs[-1]["role"] != "assistant":
        raise LmlabError(f"{where}: the last message must be the assistant's (it is what is trained)")
    if not msgs[-1]["content"].strip():
        raise LmlabError(f"{where}: the assistant's response is empty")
    return msgs


def read_conversations(path: str | Path) -> list[list[dict[str, str]]]:
    return [msgs for _, msgs in read_located(path)]


def read_located(path: str | Path) -> list[tuple[str, list[dict[str, str]]]]:
    """("file:line", messages) for every record, so later errors can point at the line."""
    return [(f"{path}:{n}", to_messages(obj, f"{path}:{n}")) for n, obj in read_jsonl(path)]


def encode(tok, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(ids, labels) of a whole conversation; labels are IGNORE except on assistant content and its
    end-of-turn. Segments are encoded one by one, which equals encoding the rendered text because the
    role and end-of-turn markers are special tokens that split it."""
    eot = tok.token_to_id(END_OF_TURN)
    if eot is None:
        raise LmlabError(f"the tokenizer has no {END_OF_TURN} token; post-training needs lmlab's chat tokens")
    ids: list[int] = []
    labels: list[int] = []
    for m in messages:
        role = tok.token_to_id(ROLES[m["role"]])
        body = tok.encode(SPACE + m["content"]) + [eot]
        ids += [role] + body
        labels += [IGNORE] + (body if m["role"] == "assistant" else [IGNORE] * len(body))
    return ids, labels


def prompt_ids(tok, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the conversation up to where the last assistant reply begins (its role marker included)."""
    ids, _ = encode(tok, messages[:-1]) if len(messages) > 1 else ([], [])
    return ids + [tok.token_to_id(ROLES["assistant"])]


@dataclass
class Example:
    ids: list[int]
    labels: list[int]


def examples(tok, conversations: list[list[dict[str, str]]], max_len: int,
             where: str | list[str]) -> list[Example]:
    """Encoded conversations, next-token aligned (inputs ids[:-1], targets labels[1:]); one longer than the
    context is an error naming it (truncating would cut off the very response being trained). `where`:
    the source, or one location ("file:line") per conversation."""
    out = []
    for i, msgs in enumerate(conversations):
        ids, labels = encode(tok, msgs)
        if len(ids) - 1 > max_len:
            at = where[i] if isinstance(where, list) else f"{where}: conversation {i + 1}"
            raise LmlabError(f"{at}: the conversation is {len(ids)} tokens, longer than the context of "
                             f"{max_len + 1}; shorten it or raise max_seq_len")
        out.append(Example(ids[:-1], labels[1:]))
    return out


def pad_rows(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ints of different lengths as one (B, T) long tensor, T the longest, filled out with `value` on
    the right (or the left); and the (B, T) mask of the real entries. SFT's, the reward model's, DPO's and RL's
    batches are all padded here."""
    T = max(len(r) for r in rows)
    out = torch.full((len(rows), T), value, dtype=torch.long)
    real = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, r in enumerate(rows):
        at = slice(T - len(r), T) if left else slice(0, len(r))
        out[i, at] = torch.tensor(r, dtype=torch.long)
        real[i, at] = True
    return out, real


def pad_batch(seqs: list[tuple[list[int], list[int]]], pad: int, left: bool = False) -> dict[str, torch.Tensor]:
    """(ids, labels) pairs -> padded ids, labels (IGNORE on padding), mask and positions (right or left
    padding; the positions count real tokens only, so both paddings give the same numbers)."""
    ids, mask = pad_rows([s[0] for s in seqs], pad, left)
    labels, _ = pad_rows([s[1] for s in seqs], IGNORE, left)
    return {"ids": ids, "labels": labels, "mask": mask, "positions": (mask.long().cumsum(1) - 1).clamp(min=0)}


def _pack(batch: list[Example], pack: bool, max_len: int) -> list[list[Example]]:
    """The examples of each row: one per row, or (packing) laid end to end while they fit in max_len."""
    if not pack:
        return [[ex] for ex in batch]
    rows: list[list[Example]] = []
    for ex in batch:
        if rows and sum(len(e.ids) for e in rows[-1]) + len(ex.ids) <= max_len:
            rows[-1].append(ex)
        else:
            rows.append([ex])
    return rows


def _joined(rows: list[list[Example]], part: Callable[[int, Example], Iterable[int]]) -> list[list[int]]:
    """Each row's examples' `part(k, example)` end to end (k: the example's place in its row)."""
    return [[x for k, ex in enumerate(row) for x in part(k, ex)] for row in rows]


def collate(batch: list[Example], pad_id: int, pack: bool, max_len: int) -> dict[str, torch.Tensor]:
    """Tensors for one step. Padded: one example per row, right-padded, a (B, T) padding mask. Packed:
    examples laid end to end in rows of up to max_len, positions restarting at 0 for each, and a
    block-diagonal mask so that no example attends to another."""
    rows = _pack(batch, pack, max_len)
    ids, _ = pad_rows(_joined(rows, lambda k, ex: ex.ids), pad_id)
    labels, _ = pad_rows(_joined(rows, lambda k, ex: ex.labels), IGNORE)
    positions, _ = pad_rows(_joined(rows, lambda k, ex: range(len(ex.ids))), 0)
    doc, _ = pad_rows(_joined(rows, lambda k, ex: [k] * len(ex.ids)), -1)
    if pack:
        # (B, 1, T, T), the model adds the causal part; padding attends to padding, never to an empty row
        mask = (doc[:, :, None] == doc[:, None, :])[:, None]
    else:
        mask = doc >= 0  # (B, T) padding mask
    return {"ids": ids, "labels": labels, "positions": positions, "mask": mask,
            "tokens": sum(len(e.ids) for e in batch)}
