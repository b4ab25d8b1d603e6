"""Shared fixtures: a tiny world, its tokenizer and token shards, built once per session."""

from __future__ import annotations

import os
import shutil
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


def pretrain_tiny(data: Path, out: Path, model: dict, steps: int, batch_size: int, warmup_steps: int,
                  eval_batches: int) -> Path:
    """A causal LM pretrained briefly on the tiny world's shards, in fp32 on one thread; its checkpoint."""
    from lmlab.config import from_dict
    from lmlab.train.trainer import PretrainConfig, pretrain

    pretrain(from_dict(PretrainConfig, {
        "data": str(data), "out": str(out), "model": model,
        "train": dict(steps=steps, batch_size=batch_size, block_size=64, lr=3e-3, min_lr=3e-4,
                      warmup_steps=warmup_steps, eval_interval=0, eval_batches=eval_batches, precision="fp32",
                      threads=1, progress=False)}))
    return out / "checkpoint"


@pytest.fixture(scope="session")
def tiny_model(tiny_data, tmp_path_factory) -> Path:
    """A small causal LM pretrained briefly on the tiny world; returns its checkpoint directory."""
    return pretrain_tiny(tiny_data, tmp_path_factory.mktemp("tiny_model"),
                         {"d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 96},
                         steps=150, batch_size=8, warmup_steps=10, eval_batches=2)


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


@pytest.fixture(scope="session")
def tiny_quickstart(tmp_path_factory) -> Path:
    """The ledger's tiny quickstart (every stage, about 10 s), built once for the tests that read it: read-only."""
    from lmlab.ledger.model import quickstart_run

    return quickstart_run("tiny", "", tmp_path_factory.mktemp("tiny_quickstart"))


def ledger_context(tmp: Path, quickstart: Path | None = None):
    """A tiny-size ledger Context writing under `tmp` (docs/, work/), on `quickstart` when given."""
    from lmlab.ledger.model import LogitsSource
    from lmlab.ledger.run import Context

    ctx = Context("tiny", 0, str(tmp / "docs"), LogitsSource("tiny", "", 0), work=str(tmp / "work"))
    if quickstart is not None:
        ctx.memo["quickstart_run"] = quickstart
    return ctx


def run_claims(tmp: Path, quickstart: Path, claims: list, ids: list[str]):
    """(tmp, the context, {id: Row}): the named claims of one ledger module run at tiny size on `quickstart`."""
    (tmp / "docs" / "ledger").mkdir(parents=True, exist_ok=True)
    ctx = ledger_context(tmp, quickstart)
    by_id = {c.id: c for c in claims}
    return tmp, ctx, {i: by_id[i].run(ctx) for i in ids}


@pytest.fixture(scope="session")
def artifact_dir() -> Path:
    """Where tests keep what a person may want to look at afterwards (screenshots): $LMLAB_ARTIFACTS, or
    runs/test-artifacts in the repository (ignored by git, kept after the run)."""
    path = Path(os.environ.get("LMLAB_ARTIFACTS") or Path(__file__).resolve().parents[1] / "runs" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through Playwright, or a skip that says why this machine cannot run one."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Python Playwright is not installed")
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("no `chromium` executable on PATH (Debian: apt-get install chromium)")
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
    except Exception as e:  # noqa: BLE001 -- any launch failure means this machine cannot run the test
        pw.stop()
        pytest.skip(f"headless Chromium ({exe}) could not be launched: {str(e).splitlines()[0]}")
    yield b
    b.close()
    pw.stop()
