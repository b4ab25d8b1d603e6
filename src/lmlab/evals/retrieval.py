"""BM25 retrieval of one-fact passages for world questions, and how often it finds the fact asked for.

Why BM25 and not embeddings: a question is found by the person's name, and the world's names are made-up
syllable compounds ("Moryra Lornick") that occur in no other text. Lexical match with inverse document
frequency weights exactly those rare tokens highest; a dense encoder maps an unseen name to a vague
neighbourhood of other names and would rank a namesake's sentence as close as the person's own. BM25
needs no training and no weights, and the attribute words ("born", "city", "works") then rank the
person's sentences among themselves. `bm25s` (Lu 2024) is a small, maintained implementation on
sparse matrices; its tokenizer (lower case, words of two or more characters) is used as it is.

Two settings, measured on the quickstart world (QA-test questions, recall@2): stemming (Snowball English,
through PyStemmer) lifts recall from 0.69 to 0.79, because questions and biographies say the same thing in
different forms ("Who employs X?" / "X is employed by"); removing English stopwords lowers it (0.64
without stemming), so they are kept. Names are not stemmed away: their syllables are no English suffixes.

recall@k: the share of questions about a known person for which at least one of the top k passages
supports the true answer (it is about that person and states the asked attribute's value).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmlab.data.world_passages import Passage
from lmlab.errors import LmlabError
from lmlab.evals.binary import rate

INSTALL = "pip install 'lmlab[retrieval]' (or pip install bm25s PyStemmer)"


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise LmlabError(f"retrieval needs the bm25s package: {INSTALL}") from None
    return bm25s


def _stemmer():
    try:
        import Stemmer
    except ImportError:
        raise LmlabError(f"stemming needs the PyStemmer package: {INSTALL}; or retrieve without it (stem=false)") \
            from None
    return Stemmer.Stemmer("english").stemWords


class Retriever:
    """A BM25 index over passages; `search` gives each query's top-k passages, best first."""

    def __init__(self, passages: Sequence[Passage], stem: bool = True) -> None:
        if not passages:
            raise LmlabError("no passages to index (the world has no biographies)")
        self.bm25s = _bm25s()
        self.stemmer = _stemmer() if stem else None
        self.passages = list(passages)
        self.index = self.bm25s.BM25()
        self.index.index(self._tokens([p.text for p in self.passages]), show_progress=False)

    def _tokens(self, texts: list[str]) -> list[list[str]]:
        return self.bm25s.tokenize(texts, stopwords=None, stemmer=self.stemmer, return_ids=False,
                                   show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Each query's k best passages (ties broken by bm25s; a query with no indexed word scores all zero
        and gets k arbitrary passages, which is still "nothing about the person")."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise LmlabError(f"k (passages retrieved per question) must be an integer >= 1, got {k!r}")
        if k > len(self.passages):
            raise LmlabError(f"k = {k} is more than the {len(self.passages)} passages indexed")
        if not queries:
            return []
        docs, _scores = self.index.retrieve(self._tokens(list(queries)), k=k, show_progress=False)
        return [[self.passages[int(i)] for i in row] for row in docs]


def supports(passage: Passage, person: str, attribute: str, value_ok: Any = None) -> bool:
    """Whether a passage states `attribute` of `person` (and, given `value_ok(value) -> bool`, a value it accepts)."""
    return passage.person == person and passage.attribute == attribute and (value_ok is None or value_ok(passage.value))


def recall_at_k(items: Sequence[dict[str, Any]], hits: Sequence[Sequence[Passage]],
                ks: Sequence[int]) -> dict[int, Any]:
    """For each k in `ks`: the `rate` of questions (world QA items) whose top k hits hold a passage stating the
    asked attribute of the asked person. `hits` must hold at least max(ks) passages per question."""
    if len(items) != len(hits):
        raise ValueError(f"{len(items)} questions but {len(hits)} hit lists")
    out = {}
    for k in ks:
        found = sum(any(supports(p, it["person"], it["attribute"]) for p in h[:k]) for it, h in zip(items, hits))
        out[k] = rate(found, len(items))
    return out


def about_person(hits: Sequence[Passage], person: str) -> bool:
    """Whether any retrieved passage is about `person` (never, for someone in no biography)."""
    return any(p.person == person for p in hits)
