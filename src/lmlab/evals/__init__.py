"""Evaluations whose ground truth is known exactly (the built-in world)."""
