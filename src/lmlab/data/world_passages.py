"""The world's biographies cut into one-fact passages, each with a stable id and the fact it states.

A lab model's context is short (128 tokens on the quickstart), so a whole biography (six sentences,
about 150 tokens) does not fit beside a question; one sentence does, and it states exactly one fact
about one person. Because each biography records the template it used per attribute, every sentence
is rendered again from the person's facts and found in the text: which attribute and value a passage
states is then known, not guessed, which is what makes retrieval recall and citation support exact.

Ids are "d<b>.<s>": biography b (its 0-based line in bios.jsonl), sentence s (0-based, in text order).
They depend only on the world's files, so the same world gives the same ids everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmlab.data import world_text as wt
from lmlab.errors import LmlabError


@dataclass(frozen=True)
class Passage:
    id: str
    """'d<biography>.<sentence>', both 0-based."""
    text: str
    """The sentence, as it stands in the biography."""
    person: str
    """Whom it is about (the full name it starts with)."""
    attribute: str
    """Which of the person's attributes it states."""
    value: str
    """The value it states."""


def passage_id(bio: int, sentence: int) -> str:
    return f"d{bio}.{sentence}"


def bio_passages(index: int, bio: dict[str, Any], person: dict[str, str]) -> list[Passage]:
    """One biography's sentences in text order, each with its fact; an error if the text does not read back
    as its templates rendered with the person's facts (a world edited by hand, or from another version)."""
    found = []
    for attr, t in bio["templates"].items():
        templates = wt.BIO_TEMPLATES.get(attr)
        if templates is None or not isinstance(t, int) or not 0 <= t < len(templates):
            raise LmlabError(f"biography {index} ({bio['person']}): unknown template {attr}={t!r}")
        sentence = templates[t].format(name=person["name"], value=person[attr])
        at = bio["text"].find(sentence)
        if at < 0:
            raise LmlabError(f"biography {index} ({bio['person']}) does not contain its {attr} sentence "
                             f"{sentence!r}; regenerate the world with `lmlab world`")
        found.append((at, sentence, attr))
    found.sort()
    if " ".join(s for _, s, _ in found) != bio["text"]:
        raise LmlabError(f"biography {index} ({bio['person']}) is not exactly its {len(found)} template sentences; "
                         "regenerate the world with `lmlab world`")
    return [Passage(passage_id(index, s), text, person["name"], attr, person[attr])
            for s, (_, text, attr) in enumerate(found)]


def world_passages(world: dict[str, Any]) -> list[Passage]:
    """Every biography sentence of a loaded world (`load_world`), biographies in file order."""
    people = world["people_by_name"]
    out: list[Passage] = []
    for i, bio in enumerate(world["bios"]):
        if bio.get("person") not in people:
            raise LmlabError(f"biography {i} is about {bio.get('person')!r}, who is not among the world's people")
        out += bio_passages(i, bio, people[bio["person"]])
    return out
