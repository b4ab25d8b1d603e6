"""Shared fixtures: a tiny world, its tokenizer and token shards, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("LMLAB_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """World (30 people) -> char tokenizer -> shards; returns the data directory."""
    from lmlab.data.shards import PrepareConfig, prepare
    from lmlab.data.tokenizer import TokenizerConfig, train_tokenizer
    from lmlab.data.world import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("tiny")
    generate_world(WorldConfig(out=str(root / "world"), people=30, unknown=5, arithmetic=40, arithmetic_test=10))
    tok = root / "tokenizer.json"
    train_tokenizer(TokenizerConfig(input=str(root / "world" / "pretrain.jsonl"), out=str(tok), kind="bpe",
                                    vocab_size=300))
    prepare(PrepareConfig(input=str(root / "world" / "pretrain.jsonl"), tokenizer=str(tok),
                          out=str(root / "data"), val_fraction=0.1))
    return root / "data"
