"""Knowledge probe: ask the model the world's questions and grade the answers exactly.

Three groups tell three different stories: QA-train people (the answer format
was seen in pretraining: memorisation), QA-test people (facts only seen in
biographies: knowledge *extraction*) and unknown people (never seen: any
confident answer is a fabrication, the hallucination baseline).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from lmlab.data.world import format_qa
from lmlab.evals.binary import wilson
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams


def answers(engine: Engine, questions: Sequence[str], max_new_tokens: int = 16) -> list[str]:
    """Greedy answers, all questions in one batch, each cut at the end of its line or document."""
    params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens, stop=["\n"])
    outs = engine.generate([format_qa(q) for q in questions], params)
    return [o.completions[0].text.split("\n")[0].strip() for o in outs]


def probe(engine: Engine, world: dict[str, Any], per_group: int = 60, seed: int = 0) -> dict[str, Any]:
    """Exact-match accuracy per group (and per attribute), on a seeded sample of questions."""
    rng = random.Random(seed)
    results: dict[str, Any] = {}
    examples = []
    for group in ("qa_train", "qa_test", "qa_unknown"):
        items = list(world[group])
        rng.shuffle(items)
        items = items[:per_group]
        got = answers(engine, [it["question"] for it in items]) if items else []
        by_attr: dict[str, list[int]] = {}
        for it, a in zip(items, got):
            tally = by_attr.setdefault(it["attribute"], [0, 0])
            tally[0] += a == it["answer"]
            tally[1] += 1
        examples += [{"group": group, "question": it["question"], "truth": it["answer"], "model": a}
                     for it, a in list(zip(items, got))[:3]]
        n = max(len(items), 1)
        key = group.replace("qa_", "")
        if group == "qa_unknown":
            # No abstention exists yet, so any non-empty answer about an unknown person is made up.
            made_up = sum(bool(a) for a in got)
            results[key] = {"n": len(items), "fabrication_rate": made_up / n,
                            "ci95": list(wilson(made_up, len(items))) if items else None}
        else:
            correct = sum(a == it["answer"] for it, a in zip(items, got))
            results[key] = {"n": len(items), "accuracy": correct / n,
                            "ci95": list(wilson(correct, len(items))) if items else None,
                            "by_attribute": {k: v[0] / v[1] for k, v in sorted(by_attr.items())}}
    results["examples"] = examples
    return results
