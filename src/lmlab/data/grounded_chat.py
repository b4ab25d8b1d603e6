"""Retrieval-augmented chat on the world: passages numbered in the prompt, then the question; the reply is the
answer followed by the numbers of the passages that state it, or "I don't know.".

    user:      [1] Galun Tarnik was born in Oldcastle.
               [2] Galun Tarnik works for Beacon Health.
               Question: In which city was Galun Tarnik born?
    assistant: Oldcastle [1]

Passages are numbered per prompt, as ALCE shows its documents, rather than by their global ids
("d830.5"): a small model copied global ids wrongly ("d83.5") for most of its citations, which measured
its copying, not whether its sources supported it. `cited_ids` maps the numbers back to passage ids.

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

_CITE_RE = re.compile(r"\[(\d+)\]")


def grounded_prompt(question: str, passages: Sequence[Passage]) -> str:
    """The user turn: one line per passage, '[n] text' (n from 1), then 'Question: ...'."""
    return "\n".join([*(f"[{i}] {p.text}" for i, p in enumerate(passages, 1)), f"Question: {question}"])


def stating(item: dict[str, Any], passages: Sequence[Passage]) -> list[Passage]:
    """The passages that state the item's asked fact (its person's attribute, whatever value they give)."""
    return [p for p in passages if p.person == item["person"] and p.attribute == item["attribute"]]


def grounded_response(item: dict[str, Any], passages: Sequence[Passage]) -> str:
    """The target reply: the value the passages state with their ids, or ABSTAIN when none states it."""
    cited = stating(item, passages)
    if not cited:
        return ABSTAIN
    return f"{cited[0].value} " + "".join(f"[{i}]" for i, p in enumerate(passages, 1) if p in cited)


def split_citations(reply: str) -> tuple[str, list[str]]:
    """(the reply without its citation marks, the passage numbers it cites in order, repeats dropped)."""
    numbers = list(dict.fromkeys(_CITE_RE.findall(reply)))
    return " ".join(_CITE_RE.sub(" ", reply).split()), numbers


def cited_ids(numbers: Sequence[str], passages: Sequence[Passage]) -> list[str]:
    """The passage ids behind cited numbers; a number no passage had stays as '[n]', a source made up."""
    return [passages[int(n) - 1].id if 1 <= int(n) <= len(passages) else f"[{n}]" for n in numbers]


def grounded_conversation(item: dict[str, Any], passages: Sequence[Passage]) -> dict[str, str]:
    """A {"prompt", "response"} record, as `lmlab sft` reads from JSONL."""
    return {"prompt": grounded_prompt(item["question"], passages), "response": grounded_response(item, passages)}
