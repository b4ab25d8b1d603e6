"""Chat-format QA: does the model answer inside an assistant turn, and stop at its end?

The prompt is the chat template with the question as the user's turn; the model is graded on two things
separately: whether it ends its turn with `<|end_of_turn|>` within the token budget (a base model, never
trained on the template, rarely does), and whether the reply is exactly the world's answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from lmlab.data.chat import END_OF_TURN, render
from lmlab.data.world_chat import ABSTAIN, normalise
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams


def chat_answers(engine: Engine, questions: Sequence[str], max_new_tokens: int = 32) -> list[tuple[str, bool]]:
    """(reply, stopped at end of turn) for each question, greedy, in one batch."""
    eot = engine.tok.token_to_id(END_OF_TURN)
    params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens, ignore_eos=True,
                            stop_token_ids=[eot] if eot is not None else [])
    outs = engine.generate([render([{"role": "user", "content": q}]) for q in questions], params)
    return [(o.completions[0].text.strip(), o.completions[0].finish_reason == "stop") for o in outs]


def chat_qa(engine: Engine, world: dict[str, Any], per_group: int = 100, seed: int = 0) -> dict[str, Any]:
    """Stop rate and exact match per QA group (train: trained on; test: facts seen only in biographies),
    and for unknown people the share of replies that are not an abstention (fabrications)."""
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    for group in ("qa_train", "qa_test", "qa_unknown"):
        items = list(world[group])
        rng.shuffle(items)
        items = items[:per_group]
        got = chat_answers(engine, [it["question"] for it in items])
        n = max(len(items), 1)
        key = group.replace("qa_", "")
        res = {"n": len(items), "stop_rate": sum(s for _, s in got) / n,
               "examples": [{"question": it["question"], "truth": it["answer"], "model": a}
                            for it, (a, _) in list(zip(items, got))[:3]]}
        if group == "qa_unknown":
            res["fabrication_rate"] = sum(bool(a) and normalise(a) != normalise(ABSTAIN) for a, _ in got) / n
            res["abstention_rate"] = sum(normalise(a) == normalise(ABSTAIN) for a, _ in got) / n
        else:
            res["exact_match"] = sum(normalise(a) == normalise(it["answer"]) for it, (a, _) in zip(items, got)) / n
        out[key] = res
    return out
