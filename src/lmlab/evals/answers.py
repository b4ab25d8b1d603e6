"""What a free-form answer to a world question says: correct, wrong (a hallucination) or an abstention.

Exact match undercounts what a model knows ("He was born in Saltmarsh." is right) and misses abstentions
said in other words ("I'm not sure."). The rules, in order:

1. An answer that names a value of the asked attribute is judged on that value, whatever else it says:
   a hedge ("I'm not sure, maybe Saltmarsh") is still a claim. Values are found in the attribute's pool
   (plus the true value), longest first and on word boundaries, so "Marine Biology" is not "Biology";
   for birth dates, full dates ("March 3, 1985" or "3 March 1985").
2. Otherwise an empty answer, or one matching an abstention pattern (ABSTENTIONS), is an abstention:
   it asserts nothing.
3. Correct = the answer names exactly one value and it is the true one. Naming several (a list of
   guesses), only part of a date (the year, or the day without the year), a value of another attribute
   (the birth city when asked the employer), or no known value at all (a made-up one) is wrong.

Case, spacing and punctuation never count (`canonical`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmlab.data.world_chat import normalise
from lmlab.data.world_text import MONTHS

LABELS = ("correct", "wrong", "abstain")

ABSTENTIONS = (
    r"\bi (?:do not|don't|dont|did not|didn't) know\b",
    r"\bi (?:am|'m|m) not (?:sure|certain|aware)\b",
    r"\bnot sure\b",
    r"\bno (?:idea|clue)\b",
    r"\b(?:have|has) no (?:information|info|record|records|knowledge|data)\b",
    r"\bno (?:information|record|records|knowledge|data) (?:about|on|of)\b",
    r"\bi (?:cannot|can't|can not|could not|couldn't) (?:say|tell|answer|know)\b",
    r"\bi (?:do not|don't) have (?:that|this|any|the)\b",
    r"^(?:unknown|not known|nobody knows|no one knows)$",
)
"""Ways of saying "I don't know", matched on the canonical text (lower case, no punctuation but `'`)."""

_ABSTAIN_RE = re.compile("|".join(ABSTENTIONS))
_MONTH = "|".join(m.lower() for m in MONTHS)
_DATE_RE = re.compile(rf"\b(?:({_MONTH}) (\d{{1,2}})(?:st|nd|rd|th)?|(\d{{1,2}})(?:st|nd|rd|th)? (?:of )?({_MONTH})) "
                      rf"(\d{{4}})\b")


def canonical(text: str) -> str:
    """Text as answers are compared: `normalise`d, curly apostrophes straightened, other punctuation a space."""
    text = normalise(text.replace("\u2019", "'"))
    return " ".join(re.sub(r"[^\w' ]", " ", text).split())


def is_abstention(answer: str) -> bool:
    """Empty, or one of the ABSTENTIONS patterns (rule 2; rule 1 is `classify`'s)."""
    said = canonical(answer)
    return not said or _ABSTAIN_RE.search(said) is not None


def _dates(said: str) -> list[str]:
    """Full dates in canonical text, each as 'month day year' (either order of day and month accepted)."""
    out = []
    for m in _DATE_RE.finditer(said):
        month, day = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        out.append(f"{month} {int(day)} {m.group(5)}")
    return out


def stated_values(answer: str, attribute: str, candidates: Sequence[str]) -> list[str]:
    """The canonical values of `attribute` an answer names, in order of first mention, without repeats.

    Pool values are matched longest first and a matched span is used up, so a value inside a longer
    one ("Biology" in "Marine Biology") is not counted twice.
    """
    said = canonical(answer)
    if attribute == "birth_date":
        return list(dict.fromkeys(_dates(said)))
    found: list[tuple[int, str]] = []
    for value in sorted({canonical(c) for c in candidates if canonical(c)}, key=len, reverse=True):
        m = re.search(rf"(?<![\w']){re.escape(value)}(?![\w'])", said)
        if m:
            found.append((m.start(), value))
            said = said[:m.start()] + " " * len(value) + said[m.end():]
    return [v for _, v in sorted(found)]


def classify(answer: str, truth: str, attribute: str, pool: Sequence[str] = ()) -> str:
    """'correct', 'wrong' or 'abstain' for an answer to a question whose true value is `truth`;
    `pool` = the values the attribute can take (the world's `pools[attribute]`; none for birth dates)."""
    values = stated_values(answer, attribute, [*pool, truth])
    if not values:
        return "abstain" if is_abstention(answer) else "wrong"
    truth_value = (_dates(canonical(truth)) if attribute == "birth_date" else []) or [canonical(truth)]
    return "correct" if values == truth_value[:1] else "wrong"


def answer_key(answer: str, attribute: str, pool: Sequence[str] = ()) -> str:
    """What an answer claims, for telling whether two answers agree: its stated values, else 'abstain',
    else its canonical text (a made-up value agrees only with the same made-up value)."""
    values = stated_values(answer, attribute, pool)
    if values:
        return " | ".join(values)
    return "abstain" if is_abstention(answer) else canonical(answer)

