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


@pytest.fixture(scope="session")
def tiny_model(tiny_data, tmp_path_factory) -> Path:
    """A small causal LM pretrained briefly on the tiny world; returns its checkpoint directory."""
    from lmlab.config import from_dict
    from lmlab.train.trainer import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("tiny_model")
    pretrain(from_dict(PretrainConfig, {
        "data": str(tiny_data), "out": str(out),
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 96},
        "train": dict(steps=150, batch_size=8, block_size=64, lr=3e-3, min_lr=3e-4, warmup_steps=10,
                      eval_interval=0, eval_batches=2, precision="fp32", threads=1, progress=False)}))
    return out / "checkpoint"


@pytest.fixture(scope="session")
def cli_model(tiny_data, tmp_path_factory) -> Path:
    """A one-layer causal LM trained for 30 steps through `lmlab pretrain` itself (read-only: copy to edit)."""
    from lmlab.cli import main

    out = tmp_path_factory.mktemp("cli_model") / "run"
    code = main(["pretrain", "--data", str(tiny_data), "--out", str(out), "--set", "model.d_model=32",
                 "--set", "model.n_layers=1", "--set", "model.n_heads=2", "--set", "model.max_seq_len=48",
                 "--set", "train.steps=30", "--set", "train.batch_size=4", "--set", "train.progress=false",
                 "--set", "train.precision=fp32", "--set", "train.eval_batches=1", "--set", "train.threads=1"])
    assert code == 0
    return out / "checkpoint"
