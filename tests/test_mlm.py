"""The masked objective: BERT's corruption, bidirectional attention, training, resume, fill-mask."""

from __future__ import annotations

import pytest
import torch

from lmlab.config import from_dict
from lmlab.errors import LmlabError
from lmlab.model.checkpoint import load_model
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.train.objectives import IGNORE, MaskingConfig, corrupt
from lmlab.train.trainer import PretrainConfig, Trainer, pretrain

MASK, V = 7, 500


def test_corruption_follows_the_bert_recipe():
    x = torch.randint(8, V, (64, 512), generator=torch.Generator().manual_seed(0))
    x[:, ::50] = 1  # a protected special token (a document separator)
    inputs, labels = corrupt(x, MaskingConfig(), MASK, V, seed=1, protected=torch.tensor([1]))
    chosen = labels != IGNORE
    assert abs(chosen.float().mean().item() - 0.15 * 0.98) < 0.005
    assert not chosen[:, ::50].any() and torch.equal(labels[chosen], x[chosen])
    assert torch.equal(inputs[~chosen], x[~chosen])
    masked = (inputs[chosen] == MASK).float().mean().item()
    kept = (inputs[chosen] == x[chosen]).float().mean().item()
    assert abs(masked - 0.8) < 0.01 and abs(kept - (0.1 + 0.1 / V)) < 0.01
    assert abs(1 - masked - kept - 0.1) < 0.01  # the rest became random other tokens
    again, _ = corrupt(x, MaskingConfig(), MASK, V, seed=1, protected=torch.tensor([1]))
    other, _ = corrupt(x, MaskingConfig(), MASK, V, seed=2, protected=torch.tensor([1]))
    assert torch.equal(inputs, again) and not torch.equal(inputs, other)


def test_corruption_rates_are_configurable_and_checked():
    x = torch.randint(8, V, (64, 512), generator=torch.Generator().manual_seed(0))
    inputs, labels = corrupt(x, MaskingConfig(rate=0.4, mask_fraction=1.0, random_fraction=0.0), MASK, V, seed=0)
    chosen = labels != IGNORE
    assert abs(chosen.float().mean().item() - 0.4) < 0.01 and (inputs[chosen] == MASK).all()
    _, labels = corrupt(x[:1, :2], MaskingConfig(rate=1e-9), MASK, V, seed=0)
    assert (labels != IGNORE).sum() == 1  # never an empty loss
    for bad in (dict(rate=0.0), dict(rate=1.5), dict(mask_fraction=0.95, random_fraction=0.1)):
        with pytest.raises(LmlabError, match="mlm"):
            MaskingConfig(**bad)


@pytest.mark.parametrize("causal", [False, True])
def test_later_token_reaches_an_earlier_position_only_without_the_causal_mask(causal):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=16,
                                    causal=causal)).eval()
    x = torch.randint(8, V, (1, 12))
    x[0, 3] = MASK
    y = x.clone()
    y[0, 9] = (x[0, 9] + 1) % V
    with torch.no_grad():
        moved = (model(x)[0, 3] - model(y)[0, 3]).abs().max().item()
    assert (moved == 0.0) if causal else (moved > 1e-3)


def _cfg(data, out, **train):
    t = dict(steps=120, batch_size=8, block_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=60,
             eval_batches=2, ckpt_interval=60, log_interval=10, precision="fp32", threads=1, progress=False)
    t.update(train)
    return from_dict(PretrainConfig, {"data": str(data), "out": str(out), "objective": "mlm",
                                      "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
                                      "train": t})


def test_mlm_pretraining_learns_resumes_exactly_and_fills_masks(tiny_data, tmp_path):
    from lmlab.data.tokenizer import Tokenizer
    from lmlab.infer.fill_mask import fill_mask
    from lmlab.model.checkpoint import load_model

    ref = pretrain(_cfg(tiny_data, tmp_path / "ref"))
    assert ref["objective"] == "mlm" and ref["val_loss"] < 4.5  # from ln(300) = 5.7
    pretrain(_cfg(tiny_data, tmp_path / "split", steps=60, decay_steps=120))
    resumed = pretrain(_cfg(tiny_data, tmp_path / "split", decay_steps=120))
    assert resumed["resumed_from_step"] == 60 and abs(resumed["val_loss"] - ref["val_loss"]) < 1e-6
    model = load_model(tmp_path / "ref" / "checkpoint")
    assert model.cfg.causal is False
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    blanks = fill_mask(model, tok, "Question: Where was [MASK] born? [MASK]", top_k=4)
    assert len(blanks) == 2
    for blank in blanks:
        probs = [c["prob"] for c in blank["candidates"]]
        assert len(probs) == 4 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_fill_mask_refuses_causal_models_and_texts_without_blanks(tiny_data):
    from lmlab.data.tokenizer import Tokenizer
    from lmlab.infer.fill_mask import fill_mask

    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    causal = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=32))
    with pytest.raises(LmlabError, match="needs a masked"):
        fill_mask(causal, tok, "a [MASK] b")
    causal.cfg.causal = False
    with pytest.raises(LmlabError, match="no blank"):
        fill_mask(causal, tok, "no blank here")


def test_unknown_objective_is_an_error(tiny_data, tmp_path):
    with pytest.raises(LmlabError, match="objective must be 'causal' or 'mlm'"):
        from_dict(PretrainConfig, {"data": str(tiny_data), "out": str(tmp_path), "objective": "denoise"})


def test_a_causal_checkpoint_initialises_a_masked_run(tiny_data, tiny_model, tmp_path):
    """`init`: continued pretraining from another run's weights, here under the other mask and objective."""
    base = {"data": str(tiny_data), "out": str(tmp_path / "m"), "objective": "mlm", "init": str(tiny_model),
            "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 96},
            "train": {"steps": 2, "batch_size": 2, "precision": "fp32", "progress": False}}
    trainer = Trainer(from_dict(PretrainConfig, base))
    causal = load_model(tiny_model)
    assert not trainer.model.cfg.causal and causal.cfg.causal
    for (name, ours), theirs in zip(trainer.model.state_dict().items(), causal.state_dict().values()):
        assert torch.equal(ours, theirs), name
    with pytest.raises(LmlabError, match="differs from this run's in d_model"):
        Trainer(from_dict(PretrainConfig, {**base, "out": str(tmp_path / "x"),
                                           "model": {**base["model"], "d_model": 32}}))
