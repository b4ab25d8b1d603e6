"""Citation recall and precision as ALCE defines them (Gao et al. 2023, "Enabling Large Language Models to
Generate Text with Citations"), with exact support instead of an NLI model.

- A statement is *supported* when its cited passages, taken together, support it; a statement with no
  citation is not. Citation recall = the share of statements that are supported.
- A citation is *irrelevant* when it alone does not support its statement and removing it does not change
  whether the rest of the statement's citations support it. Citation precision = the share of citations that
  are not irrelevant. So a redundant citation that supports the statement on its own still counts as precise;
  one needed only jointly with another does too; every citation of an unsupported statement is irrelevant.
- A citation of an id that was not among the passages given (a made-up source) makes its statement
  unsupported and all of its citations irrelevant, as in ALCE's own scorer for an out-of-range document.

Both are reported pooled (statements, citations) with Wilson intervals, and as ALCE averages them: the mean
over responses of each response's recall and precision (a response with no citation has precision 0).

In the world, support is exact (`world_support`): a passage supports "person P's attribute A is v" iff it is
about P and states A with the value v. One such passage is enough, so joint support is never more than the
union there; `alce` itself takes any `supports(passages, claim)`, for which it need not be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lmlab.data.world_passages import Passage
from lmlab.evals.answers import classify
from lmlab.evals.binary import rate


@dataclass(frozen=True)
class Claim:
    """What an answer asserts: `said` (its text, citation marks removed) as `attribute` of `person`."""
    person: str
    attribute: str
    said: str


@dataclass
class Statement:
    claim: Any
    """What the statement asserts, as `supports` reads it."""
    cited: list[Any]
    """The passages it cites, in order; None for an id that was not among the passages given."""


Supports = Callable[[Sequence[Any], Any], bool]
"""supports(passages, claim): do these passages, together, support the claim?"""


def world_support(pools: dict[str, Sequence[str]]) -> Supports:
    """Exact support in the world: some passage is about the person and states the claimed value of the
    attribute (judged by `answers.classify`, so 'He was born in Saltmarsh' claims Saltmarsh)."""
    def supports(passages: Sequence[Passage], claim: Claim) -> bool:
        pool = pools.get(claim.attribute, ())
        return any(p.person == claim.person and p.attribute == claim.attribute
                   and classify(claim.said, p.value, claim.attribute, pool) == "correct" for p in passages)
    return supports


def is_supported(s: Statement, supports: Supports) -> bool:
    """Citation recall of one statement: cited at all, no made-up id, and the cited passages support it."""
    return bool(s.cited) and None not in s.cited and supports(s.cited, s.claim)


def relevant(s: Statement, supports: Supports) -> list[bool]:
    """Per citation of the statement: not irrelevant (ALCE's two conditions)."""
    if None in s.cited:
        return [False] * len(s.cited)
    whole = supports(s.cited, s.claim)
    out = []
    for i, c in enumerate(s.cited):
        alone = supports([c], s.claim)
        rest = supports(s.cited[:i] + s.cited[i + 1:], s.claim)
        out.append(alone or rest != whole)
    return out


def alce(responses: Sequence[Sequence[Statement]], supports: Supports) -> dict[str, Any]:
    """Citation recall and precision over responses (each a list of statements): pooled `rate`s and ALCE's
    per-response means (None where there is no statement)."""
    stmts = sup = cits = rel = 0
    recalls, precisions = [], []
    for statements in responses:
        if not statements:
            continue
        s_sup = sum(is_supported(s, supports) for s in statements)
        flags = [f for s in statements for f in relevant(s, supports)]
        stmts, sup, cits, rel = stmts + len(statements), sup + s_sup, cits + len(flags), rel + sum(flags)
        recalls.append(s_sup / len(statements))
        precisions.append(sum(flags) / len(flags) if flags else 0.0)
    return {"statements": stmts, "citations": cits, "recall": rate(sup, stmts), "precision": rate(rel, cits),
            "alce_recall": sum(recalls) / len(recalls) if recalls else None,
            "alce_precision": sum(precisions) / len(precisions) if precisions else None}
