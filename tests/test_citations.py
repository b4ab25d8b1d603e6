"""ALCE citation recall and precision (Gao et al. 2023) on hand-built statements, computed by hand; the world's
exact support; the grounded reply format and its citation marks."""

from __future__ import annotations

import pytest

from lmlab.data.grounded_chat import cited_ids, grounded_prompt, grounded_response, split_citations
from lmlab.data.world_chat import ABSTAIN
from lmlab.data.world_passages import Passage
from lmlab.evals.citations import Claim, Statement, alce, is_supported, relevant, world_support

POOLS = {"birth_city": ["Saltmarsh", "Redwater"], "employer": ["Beacon Health", "Northwind Logistics"]}
P1 = Passage("d0.1", "Aeara Astamir was born in Saltmarsh.", "Aeara Astamir", "birth_city", "Saltmarsh")
P2 = Passage("d1.4", "Aeara Astamir's hometown is Saltmarsh.", "Aeara Astamir", "birth_city", "Saltmarsh")
P3 = Passage("d0.2", "Aeara Astamir works for Beacon Health.", "Aeara Astamir", "employer", "Beacon Health")
P4 = Passage("d7.0", "Bryos Kellick was born in Saltmarsh.", "Bryos Kellick", "birth_city", "Saltmarsh")
SUPPORTS = world_support(POOLS)
CITY = Claim("Aeara Astamir", "birth_city", "Saltmarsh")
JOB = Claim("Aeara Astamir", "employer", "Beacon Health")

S1 = Statement(CITY, [P1, P2])            # redundant: each alone supports -> both precise
S2 = Statement(CITY, [P1, P3, P4])        # P3 another fact, P4 another person: both irrelevant
S3 = Statement(Claim("Aeara Astamir", "birth_city", "Redwater"), [P1])  # wrong value: unsupported
S4 = Statement(JOB, [])                   # no citation: unsupported, nothing to be precise about
S5 = Statement(JOB, [P3, None])           # a made-up id: unsupported, both citations irrelevant


def test_world_support_is_exact():
    assert SUPPORTS([P1], CITY) and SUPPORTS([P3, P2], CITY)
    assert SUPPORTS([P1], Claim("Aeara Astamir", "birth_city", "She was born in Saltmarsh."))
    assert not SUPPORTS([P4], CITY)        # same value, someone else
    assert not SUPPORTS([P3], CITY)        # the person, another attribute
    assert not SUPPORTS([P1], Claim("Aeara Astamir", "birth_city", "Saltmarsh or Redwater"))
    assert not SUPPORTS([], CITY)


def test_statement_recall_and_citation_relevance_by_hand():
    assert [is_supported(s, SUPPORTS) for s in (S1, S2, S3, S4, S5)] == [True, True, False, False, False]
    assert relevant(S1, SUPPORTS) == [True, True]
    assert relevant(S2, SUPPORTS) == [True, False, False]
    assert relevant(S3, SUPPORTS) == [False]
    assert relevant(S4, SUPPORTS) == []
    assert relevant(S5, SUPPORTS) == [False, False]


def test_pooled_and_alce_averaged_scores_by_hand():
    res = alce([[S1, S2], [S3], [S4], [S5], []], SUPPORTS)
    # pooled: 2 of 5 statements supported; 3 of 8 citations relevant (2 in S1, P1 in S2)
    assert res["statements"] == 5 and res["citations"] == 8
    assert (res["recall"]["k"], res["recall"]["n"]) == (2, 5)
    assert (res["precision"]["k"], res["precision"]["n"]) == (3, 8)
    # ALCE's per-response means over the 4 responses with statements: recall (1 + 0 + 0 + 0) / 4,
    # precision (3/5 + 0 + 0 [no citation] + 0) / 4
    assert res["alce_recall"] == pytest.approx(0.25)
    assert res["alce_precision"] == pytest.approx(0.15)
    assert alce([], SUPPORTS)["recall"]["rate"] is None


def test_a_citation_needed_only_jointly_is_relevant():
    # A support relation where a claim needs two facts together (never so in the world, but ALCE's rule covers it).
    def joint(passages, claim):
        return set(claim) <= set(passages)

    s = Statement(frozenset({"a", "b"}), ["a", "b", "c"])
    assert is_supported(s, joint)
    # a, b: alone no, but without either the rest no longer supports -> relevant; c: removable -> irrelevant
    assert relevant(s, joint) == [True, True, False]
    assert relevant(Statement(frozenset({"a", "b"}), ["a", "c"]), joint) == [False, False]
    assert alce([[s]], joint)["alce_precision"] == pytest.approx(2 / 3)


def test_grounded_reply_cites_every_passage_stating_the_fact_or_abstains():
    item = {"person": "Aeara Astamir", "attribute": "birth_city", "question": "Where was Aeara Astamir born?"}
    assert grounded_response(item, [P3, P1, P2]) == "Saltmarsh [2][3]"
    assert grounded_response(item, [P3]) == ABSTAIN              # the person, but not the fact
    assert grounded_response(item, [P4]) == ABSTAIN              # someone else's birth city
    assert grounded_prompt(item["question"], [P1, P3]) == (
        "[1] Aeara Astamir was born in Saltmarsh.\n[2] Aeara Astamir works for Beacon Health.\n"
        "Question: Where was Aeara Astamir born?")


def test_split_citations():
    assert split_citations("Saltmarsh [1][3]") == ("Saltmarsh", ["1", "3"])
    assert split_citations("Saltmarsh [2] and [2].") == ("Saltmarsh and .", ["2"])
    assert split_citations("I don't know.") == ("I don't know.", [])
    assert split_citations("March 3, 1985 [12]") == ("March 3, 1985", ["12"])


def test_cited_numbers_name_the_passages_shown():
    assert cited_ids(["2", "1"], [P1, P3]) == [P3.id, P1.id]
    assert cited_ids(["3", "0"], [P1, P3]) == ["[3]", "[0]"]  # no such passage: a made-up source
