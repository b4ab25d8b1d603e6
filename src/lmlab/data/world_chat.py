"""The built-in world as chat data for post-training, whose ground truth is known.

SFT: the QA-train questions as (prompt, response) conversations, and abstentions ("I don't know.") for
half of the unknown people: a model can only be rewarded for abstaining, by DPO or RL, once it produces
abstentions at all. Preferences: for a question about a known person, chosen = the true answer and
rejected = a plausible wrong value of the same attribute (a fabrication); for an unknown person, chosen
= an abstention and rejected = a plausible made-up value. The gold reward scores any reply against the
world's facts, independently of any learned model.

Splits, so that held-out numbers mean something: SFT and the preference pairs use the same half of the
unknown people; preference pairs are trained on 80% of the QA-train questions; held out are the other
20% of QA-train questions, the other unknown people, and (reported apart: facts seen only in
biographies) the QA-test people.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from lmlab.data import world_text as wt

ABSTAIN = "I don't know."
"""The reply that declines to answer about someone the model has never read about."""


def normalise(text: str) -> str:
    """A reply as compared with the world's facts: case, spacing and a final full stop do not count."""
    return " ".join(text.strip().rstrip(".").split()).lower()


def sft_conversations(world: dict[str, Any], seed: int = 0) -> list[list[dict[str, str]]]:
    """The QA-train questions with their answers, and the training half of the unknown people's questions
    with an abstention (the same half as the preference pairs', so the other half stays unseen)."""
    train_unknown, _ = unknown_split(world, seed)
    return [[{"role": "user", "content": q["question"]}, {"role": "assistant", "content": q["answer"]}]
            for q in world["qa_train"]] + \
        [[{"role": "user", "content": q["question"]}, {"role": "assistant", "content": ABSTAIN}]
         for q in world["qa_unknown"] if q["person"] in train_unknown]


def unknown_split(world: dict[str, Any], seed: int) -> tuple[set[str], set[str]]:
    """Unknown people for training (half) and for held-out evaluation (the other half)."""
    people = sorted({q["person"] for q in world["qa_unknown"]})
    random.Random(seed + 1).shuffle(people)
    return set(people[: len(people) // 2]), set(people[len(people) // 2:])


def heldout_people(world: dict[str, Any], fraction: float, seed: int) -> set[str]:
    """A seeded share of the QA-test people, held out of an experiment's training data (their facts are
    only in biographies, so what the model says about them after training is what it generalised)."""
    people = sorted({q["person"] for q in world["qa_test"]})
    random.Random(seed).shuffle(people)
    return set(people[: round(fraction * len(people))])


def is_world_dir(path: str | Path) -> bool:
    return (Path(path) / "world.json").is_file()


def wrong_value(world: dict[str, Any], item: dict[str, Any], rng: random.Random) -> str:
    """A plausible value of the item's attribute that is not its answer."""
    truth = item["answer"]
    if item["attribute"] == "birth_date":
        cfg = world["config"]
        while True:
            month = rng.randrange(12)
            value = f"{wt.MONTHS[month]} {rng.randint(1, wt.MONTH_DAYS[month])}, " \
                    f"{rng.randint(cfg['birth_year_min'], cfg['birth_year_max'])}"
            if value != truth:
                return value
    return rng.choice([v for v in world["pools"][item["attribute"]] if v != truth])


def preference_pairs(world: dict[str, Any], seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """{"train", "heldout", "heldout_qa_test"}: lists of {"prompt", "chosen", "rejected", "group"}."""
    rng = random.Random(seed)
    known = shuffled(world["qa_train"], seed)
    cut = int(0.8 * len(known))
    train_unknown, _ = unknown_split(world, seed)

    def fact(q: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": q["question"], "chosen": q["answer"], "rejected": wrong_value(world, q, rng),
                "group": q["group"] if q["group"] != "unknown" else "unknown"}

    def abstain(q: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": q["question"], "chosen": ABSTAIN, "rejected": wrong_value(world, q, rng), "group": "unknown"}

    unknown = [abstain(q) for q in world["qa_unknown"]]
    return {
        "train": shuffled([fact(q) for q in known[:cut]] +
                          [p for p, q in zip(unknown, world["qa_unknown"]) if q["person"] in train_unknown], seed),
        "heldout": [fact(q) for q in known[cut:]] +
                   [p for p, q in zip(unknown, world["qa_unknown"]) if q["person"] not in train_unknown],
        "heldout_qa_test": [fact(q) for q in world["qa_test"]],
    }


def gold_reward(item: dict[str, Any], reply: str, unknown: bool, penalty: float = 1.0) -> float:
    """The world's verdict on a reply: +1 for the true answer (or an abstention about an unknown person),
    0 for abstaining about a known person (honest but unhelpful), -penalty for a wrong or made-up answer.

    Answering is then worth it exactly when the chance of being right is above penalty / (1 + penalty):
    the penalty sets the confidence a policy that maximises this reward needs before it answers."""
    said = normalise(reply)
    if said == normalise(ABSTAIN):
        return 1.0 if unknown else 0.0
    if unknown:
        return -penalty
    return 1.0 if said == normalise(item["answer"]) else -penalty


def shuffled(items: list, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items
