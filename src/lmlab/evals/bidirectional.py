"""Causal vs masked: how much does context to the right of a fact help to recall it?

Held-out biography snippets (three sentences about one person, rendered afresh,
so the exact text was never trained on) contain one attribute value in the
middle sentence. Both models predict the value's tokens one by one with the
true earlier value tokens given (teacher forcing), so they condition on exactly
the same left context:

- causal: next-token prediction; it can never see the right-hand context;
- masked, with right context: the value's remaining tokens are masked, the rest
  of the snippet is visible on both sides;
- masked, without right context: the same, with the snippet cut after the value.

Reported: accuracy per value token and per whole value (every token right).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from lmlab.data import world_text as wt
from lmlab.data.tokenizer import Tokenizer
from lmlab.model.transformer import Transformer


def snippets(world: dict[str, Any], group: str = "qa_test", limit: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """For up to `limit` people of `group`, one snippet per attribute with the value's character span."""
    rng = random.Random(seed)
    groups = {p["name"]: p.get("group") for p in world["people"]}
    people = [p for p in world["people"] if groups[p["name"]] == group][:limit]
    attrs = list(world["attributes"])
    items = []
    for person in people:
        for attr in attrs:
            left, right = rng.sample([a for a in attrs if a != attr], 2)
            template = rng.choice(wt.BIO_TEMPLATES[attr])
            head = template.split("{value}")[0].format(name=person["name"])
            sentences = [rng.choice(wt.BIO_TEMPLATES[a]).format(name=person["name"], value=person[a])
                         for a in (left, attr, right)]
            sentences[1] = template.format(name=person["name"], value=person[attr])
            start = len(sentences[0]) + 1 + len(head)
            text = " ".join(sentences)
            assert text[start: start + len(person[attr])] == person[attr]
            items.append({"text": text, "attribute": attr, "value": person[attr],
                          "span": (start, start + len(person[attr]))})
    return items


def _value_tokens(tok: Tokenizer, text: str, span: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Token ids of `text` and the indices of the tokens that overlap the value's span."""
    enc = tok.hf.encode(text, add_special_tokens=False)
    idx = [i for i, (a, b) in enumerate(enc.offsets) if a < span[1] and b > span[0]]
    return enc.ids, idx


@torch.no_grad()
def _batched_predictions(model: Transformer, rows: list[tuple[list[int], int]], batch: int = 64) -> list[int]:
    """argmax at position p of each (ids, p); rows are right-padded and the padding is masked out."""
    preds = []
    device = next(model.parameters()).device
    L = model.cfg.max_seq_len
    # Longer than the context: keep a window around the predicted position (centred, or at the end).
    starts = [max(0, min(p - L // 2, len(ids) - L)) for ids, p in rows]
    rows = [(ids[s0: s0 + L], p - s0) for (ids, p), s0 in zip(rows, starts)]
    for s in range(0, len(rows), batch):
        chunk = rows[s: s + batch]
        width = max(len(ids) for ids, _ in chunk)
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.bool)
        for i, (ids, _) in enumerate(chunk):
            x[i, : len(ids)], mask[i, : len(ids)] = torch.tensor(ids), True
        x, mask = x.to(device), mask.to(device)
        logits = model(x, attn_mask=None if model.cfg.causal else mask)
        preds += [int(logits[i, p].argmax()) for i, (_, p) in enumerate(chunk)]
    return preds


def compare(causal: Transformer, masked: Transformer, tok: Tokenizer, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Token and value accuracy of the three ways of reading each snippet (see the module docstring)."""
    if tok.mask_id is None:
        raise ValueError("the tokenizer has no mask token")
    causal.eval()
    masked.eval()
    rows: dict[str, list[tuple[list[int], int]]] = {"causal": [], "masked_right": [], "masked_left": []}
    owners: list[tuple[int, int]] = []  # (item, truth) per value token
    for n, item in enumerate(items):
        ids, idx = _value_tokens(tok, item["text"], item["span"])
        for j, pos in enumerate(idx):
            if pos == 0:
                continue  # nothing to the left to predict it from
            owners.append((n, ids[pos]))
            rows["causal"].append((ids[:pos], pos - 1))  # predict ids[pos] from everything before it
            blanked = ids[:pos] + [tok.mask_id] * (len(idx) - j) + ids[idx[-1] + 1:]
            rows["masked_right"].append((blanked, pos))
            rows["masked_left"].append((blanked[: idx[-1] + 1], pos))
    out: dict[str, Any] = {"snippets": len(items), "value_tokens": len(owners)}
    for name, model in (("causal", causal), ("masked_right", masked), ("masked_left", masked)):
        right = [p == t for p, (_, t) in zip(_batched_predictions(model, rows[name]), owners)]
        per_item: dict[int, bool] = {}
        for ok, (n, _) in zip(right, owners):
            per_item[n] = per_item.get(n, True) and ok
        by_attr: dict[str, list[bool]] = {}
        for n, ok in per_item.items():
            by_attr.setdefault(items[n]["attribute"], []).append(ok)
        out[name] = {"token_accuracy": sum(right) / max(1, len(right)),
                     "value_accuracy": sum(per_item.values()) / max(1, len(per_item)),
                     "value_accuracy_by_attribute": {a: sum(v) / len(v) for a, v in sorted(by_attr.items())},
                     # per snippet: whether every value token was right (None: nothing to predict), for intervals
                     "per_snippet": [per_item.get(n) for n in range(len(items))]}
    return out
