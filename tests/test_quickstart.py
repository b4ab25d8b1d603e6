"""The quickstart pipeline end to end (tiny settings), and the shipped recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.config import load, to_dict
from lmlab.quickstart import QuickstartConfig, quickstart
from lmlab.train.trainer import PretrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_quickstart_recipe_equals_defaults():
    assert to_dict(load(QuickstartConfig, CONFIGS / "quickstart.yaml")) == to_dict(QuickstartConfig())


@pytest.mark.parametrize("name", ["shakespeare_char.yaml", "pretrain_world.yaml", "llama_tiny_world.yaml",
                                  "gpt2-124m.yaml"])
def test_pretrain_recipes_load(name):
    cfg = load(PretrainConfig, CONFIGS / name)
    assert cfg.model.n_layers >= 1 and cfg.train.steps >= 1


def test_the_gpt2_recipe_is_gpt2_124m():
    """With GPT-2's vocabulary the recipe's model has GPT-2 small's 124,439,808 parameters, and its 0.5M-token
    step splits over 1-32 GPUs without changing."""
    import torch

    from lmlab.config import to_dict
    from lmlab.model.config import ModelConfig
    from lmlab.model.transformer import Transformer

    cfg = load(PretrainConfig, CONFIGS / "gpt2-124m.yaml")
    with torch.device("meta"):
        model = Transformer(ModelConfig(**{**to_dict(cfg.model), "vocab_size": 50257}))
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    t = cfg.train
    assert t.batch_size * t.grad_accum * t.block_size == 524_288
    assert all(t.grad_accum % k == 0 for k in (1, 2, 4, 8, 16, 32))


def test_quickstart_end_to_end(tmp_path):
    sets = ["world.people=24", "world.unknown=4", "world.arithmetic=20", "world.arithmetic_test=5",
            "tokenizer.vocab_size=300", "pretrain.train.steps=30", "pretrain.train.batch_size=4",
            "pretrain.train.eval_interval=15", "pretrain.train.eval_batches=2", "pretrain.train.progress=false",
            "pretrain.model.d_model=32", "pretrain.model.n_layers=1", "pretrain.model.n_heads=2",
            "pretrain.model.max_seq_len=320",
            "probe_questions=3", "samples=2", "masked_lm_steps=20", "bidirectional_people=5", "solver.train.steps=10",
            "verifier.problems=15", "verifier.train.steps=4", "testtime.n=[1,2]", "testtime.time_problems=1",
            "testtime.max_tokens=24", "verifier.max_tokens=24", "hallucination.questions=4", "hallucination.samples=2"]
    cfg = load(QuickstartConfig, None, sets + [f"out={tmp_path / 'qs'}"])
    result = quickstart(cfg)
    out = tmp_path / "qs"
    summary = json.loads((out / "summary.json").read_text())
    assert {"world", "tokenizer", "prepare", "pretrain", "probe", "sampling", "masked_lm", "bidirectional",
            "solver", "testtime"} <= set(summary)
    hal = summary["hallucination"]
    for key in ("unknown_hallucination_rate_before", "unknown_hallucination_rate_after", "known_accuracy_before",
                "known_accuracy_after", "abstention_rate_before", "abstention_rate_after"):
        r = hal[key]
        assert r["n"] > 0 and 0 <= r["rate"] <= 1 and r["ci95"][0] <= r["rate"] <= r["ci95"][1], key
    assert hal["known_accuracy_before"]["n"] == 8  # 4 QA-train and 4 QA-test questions
    assert {"logprob_auroc", "selfcheck_auroc"} <= set(hal)
    assert (out / "hallucination" / "after" / "reliability.png").is_file()
    tt = summary["testtime"]
    assert tt["problems"] == 5 and tt["n"] == [1, 2] and 0 <= tt["greedy_accuracy"] <= 1
    assert {"greedy", "sample", "logprob", "vote", "oracle"} <= {r["method"] for r in tt["rows"]}
    assert (out / "testtime" / "testtime.png").is_file()
    bi = summary["bidirectional"]
    assert bi["snippets"] == 5 * 6 and bi["value_tokens"] >= bi["snippets"]
    assert all(0 <= bi[k][m] <= 1 for k in ("causal", "masked_left", "masked_right")
               for m in ("token_accuracy", "value_accuracy"))
    # the masked model reads the same token stream, for masked_lm_steps of the 30 pretraining steps
    assert summary["masked_lm"]["train_tokens"] == summary["pretrain"]["train_tokens"] * 20 // 30
    assert (out / "sampling.png").is_file() and len(summary["sampling"]["samples"]["T=0.7"]) == 3
    assert summary["pretrain"]["steps"] == 30 and summary["pretrain"]["val_loss"] < 6
    assert summary["probe"]["knowledge"]["test"]["n"] == 3
    report = (out / "report.md").read_text()
    for heading in ("## World", "## Tokenizer", "## Model", "## Pretraining", "## Sampling", "## Causal vs masked",
                    "## Hallucination", "## Test-time compute", "## Greedy samples"):
        assert heading in report
    assert "![loss curve](loss.png)" in report and (out / "loss.png").is_file()
    assert result["report"] == str(out / "report.md")
    card = (out / "report.html").read_text()
    assert result["report_html"] == str(out / "report.html") and card.count("data:image/png;base64,") >= 4
    te = summary["probe"]["knowledge"]["test"]
    assert te["ci95"][0] <= te["accuracy"] <= te["ci95"][1]

    # Rerun: nothing changed, so nothing is retrained; then a changed world retrains from scratch.
    again = quickstart(cfg)
    assert json.loads((out / "summary.json").read_text())["pretrain"]["steps_this_run"] == 0
    assert json.loads((out / "mlm" / "summary.json").read_text())["pretrain"]["steps_this_run"] == 0
    assert again["val_loss"] == result["val_loss"]
    changed = load(QuickstartConfig, None, sets + [f"out={out}", "world.seed=1"])
    quickstart(changed)
    assert json.loads((out / "summary.json").read_text())["pretrain"]["steps_this_run"] == 30


def test_rl_recipe_loads():
    from lmlab.post.rl import RLConfig

    cfg = load(RLConfig, CONFIGS / "rl_world.yaml")
    assert cfg.algo == "grpo" and cfg.group_size == 8 and cfg.train.steps == 150
    assert cfg.reward == "rm:runs/quickstart/rm/checkpoint" and cfg.train.lr == RLConfig().train.lr
