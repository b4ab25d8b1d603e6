"""`lmlab ledger`: claims about language models, each tested by a measurement and written with its interval."""
