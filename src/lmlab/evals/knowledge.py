"""Knowledge probe: ask the model the world's questions and grade the answers exactly.

Three groups tell three different stories: QA-train people (the answer format
was seen in pretraining: memorisation), QA-test people (facts only seen in
biographies: knowledge *extraction*) and unknown people (never seen: any
confident answer is a fabrication, the hallucination baseline).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from lmlab.data.tokenizer import Tokenizer
from lmlab.data.world import format_qa
from lmlab.infer.sample import generate


def answer(model: torch.nn.Module, tok: Tokenizer, question: str, max_new_tokens: int = 16) -> str:
    """Greedy answer to one question, cut at end of document or end of line."""
    ids = tok.encode(format_qa(question))
    new = generate(model, ids, max_new_tokens, 0.0, stop_id=tok.eos_id)
    return tok.decode(new).split("\n")[0].strip()


def probe(model: torch.nn.Module, tok: Tokenizer, world: dict[str, Any], per_group: int = 60,
          seed: int = 0) -> dict[str, Any]:
    """Exact-match accuracy per group (and per attribute), on a seeded sample of questions."""
    rng = random.Random(seed)
    results: dict[str, Any] = {}
    examples = []
    for group in ("qa_train", "qa_test", "qa_unknown"):
        items = list(world[group])
        rng.shuffle(items)
        items = items[:per_group]
        correct, answered, by_attr = 0, 0, {}
        for i, it in enumerate(items):
            got = answer(model, tok, it["question"])
            ok = got == it["answer"]
            correct += ok
            answered += bool(got)
            a = by_attr.setdefault(it["attribute"], [0, 0])
            a[0] += ok
            a[1] += 1
            if i < 3:
                examples.append({"group": group, "question": it["question"], "truth": it["answer"],
                                 "model": got})
        n = max(len(items), 1)
        key = group.replace("qa_", "")
        if group == "qa_unknown":
            # No abstention exists yet, so any non-empty answer about an unknown person is made up.
            results[key] = {"n": len(items), "fabrication_rate": answered / n}
        else:
            results[key] = {"n": len(items), "accuracy": correct / n,
                            "by_attribute": {k: v[0] / v[1] for k, v in sorted(by_attr.items())}}
    results["examples"] = examples
    return results
