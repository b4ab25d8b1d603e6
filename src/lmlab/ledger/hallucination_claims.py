"""Claims about hallucination (being written)."""

from lmlab.ledger.claims import Claim

CLAIMS: list[Claim] = []
