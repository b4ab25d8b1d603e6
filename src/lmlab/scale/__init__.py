"""Scaling laws and hyperparameter transfer: lmlab scale."""
