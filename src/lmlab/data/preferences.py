"""Preference pairs: read from JSONL or generated from the built-in world, split, and put in the chat template.

The reward model, DPO and the test-time verifier all read pairs through here: {"prompt", "chosen",
"rejected"} with an optional "system" message and "margin" (how much better chosen is, for the reward
model's loss).
"""

from __future__ import annotations

import math
import random
import reprlib
from pathlib import Path
from typing import Any

from lmlab.data.conversations import encode, read_jsonl
from lmlab.data.tokenizer import Tokenizer
from lmlab.data.world import load_world
from lmlab.data.world_chat import is_world_dir, preference_pairs
from lmlab.errors import LmlabError


def _is_finite_number(x: Any) -> bool:
    # bool is an int to Python but never a margin; an int too big for a float overflows the loss.
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def _check_optional(obj: dict[str, Any], where: str) -> None:
    """The optional fields, checked while the line is known (training would fail later without saying where)."""
    margin = obj.get("margin", 0.0)
    if not _is_finite_number(margin):
        raise LmlabError(f"{where}: 'margin' must be a finite number, got {reprlib.repr(margin)}")
    if not isinstance(obj.get("system", ""), str):
        raise LmlabError(f"{where}: 'system' must be a string, got {type(obj['system']).__name__}")


def read_preferences(path: str | Path) -> list[dict[str, Any]]:
    """Preference pairs from JSONL: {"prompt", "chosen", "rejected"} (optional "system", "margin")."""
    pairs = []
    for n, obj in read_jsonl(path):
        where = f"{path}:{n}"
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in obj]
        if missing:
            raise LmlabError(f"{where}: missing field(s) {', '.join(missing)} (a pair needs prompt, chosen, rejected)")
        for k in ("prompt", "chosen", "rejected"):
            if not isinstance(obj[k], str) or not obj[k].strip():
                raise LmlabError(f"{where}: '{k}' must be a non-empty string")
        _check_optional(obj, where)
        pairs.append({**obj, "where": where})
    return pairs


def load_pairs(data: str, seed: int) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """(training pairs, held-out sets by name): from a world directory (its generated splits) or a JSONL
    file (10% held out)."""
    if is_world_dir(data):
        splits = preference_pairs(load_world(data), seed)
        return splits["train"], {k: v for k, v in splits.items() if k != "train"}
    pairs = read_preferences(data)
    random.Random(seed).shuffle(pairs)
    n = max(1, len(pairs) // 10) if len(pairs) > 1 else 0
    return pairs[n:], {"heldout": pairs[:n]}


def conversation(pair: dict[str, Any], reply: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": pair["system"]}] if pair.get("system") else []
    return msgs + [{"role": "user", "content": pair["prompt"]}, {"role": "assistant", "content": reply}]


def pair_ids(tok: Tokenizer, pair: dict[str, Any], reply: str) -> list[int]:
    """Token ids of prompt + reply in the chat template, ending with the assistant's end of turn."""
    return encode(tok, conversation(pair, reply))[0]
