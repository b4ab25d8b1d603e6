"""Retrieval-augmented chat on the world: passages with their ids, then the question; the reply is the answer
followed by the ids of the passages that state it, or "I don't know.".

    user:      [d12.3] Galun Tarnik was born in Oldcastle.
               [d40.1] Galun Tarnik works for Beacon Health.
               Question: In which city was Galun Tarnik born?
    assistant: Oldcastle [d12.3]

The target reply cites every retrieved passage that states the asked fact, and abstains when none does:
when no passage is about the person (always, for someone in no biography), and also when the person's
passages retrieved happen to state other attributes. A grounded answer asserts only what its sources say;
answering from memory there would teach the model to make up facts about the people it half-knows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from lmlab.data.world_chat import ABSTAIN
from lmlab.data.world_passages import Passage

_CITE_RE = re.compile(r"\[(d\d+\.\d+)\]")


def grounded_prompt(question: str, passages: Sequence[Passage]) -> str:
    """The user turn: one line per passage, '[id] text', then 'Question: ...'."""
    return "\n".join([*(f"[{p.id}] {p.text}" for p in passages), f"Question: {question}"])


def stating(item: dict[str, Any], passages: Sequence[Passage]) -> list[Passage]:
    """The passages that state the item's asked fact (its person's attribute, whatever value they give)."""
    return [p for p in passages if p.person == item["person"] and p.attribute == item["attribute"]]


def grounded_response(item: dict[str, Any], passages: Sequence[Passage]) -> str:
    """The target reply: the value the passages state with their ids, or ABSTAIN when none states it."""
    cited = stating(item, passages)
    if not cited:
        return ABSTAIN
    return f"{cited[0].value} " + "".join(f"[{p.id}]" for p in cited)


def split_citations(reply: str) -> tuple[str, list[str]]:
    """(the reply without its citation marks, the ids it cites in order, repeats dropped)."""
    ids = list(dict.fromkeys(_CITE_RE.findall(reply)))
    return " ".join(_CITE_RE.sub(" ", reply).split()), ids


def grounded_conversation(item: dict[str, Any], passages: Sequence[Passage]) -> dict[str, str]:
    """A {"prompt", "response"} record, as `lmlab sft` reads from JSONL."""
    return {"prompt": grounded_prompt(item["question"], passages), "response": grounded_response(item, passages)}
