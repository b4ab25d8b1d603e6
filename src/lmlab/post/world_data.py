"""Post-training data from the built-in world, whose ground truth is known.

SFT: the QA-train questions as (prompt, response) conversations. QA-test and unknown people are held
out: QA-test facts were only ever seen in biographies, so answering them in the chat format measures
whether SFT taught the format or just the answers.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

ABSTAIN = "I don't know."
"""The reply that declines to answer about someone the model has never read about."""


def sft_conversations(world: dict[str, Any]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q["question"]}, {"role": "assistant", "content": q["answer"]}]
            for q in world["qa_train"]]


def is_world_dir(path: str | Path) -> bool:
    return (Path(path) / "world.json").is_file()


def shuffled(items: list, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items
