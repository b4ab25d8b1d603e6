"""Claims about post (being written)."""

from lmlab.ledger.claims import Claim

CLAIMS: list[Claim] = []
