"""muP: coordinate check (activations flat across widths after training steps, growing under SP), the
parametrization's pieces, and training with it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.train.optim import param_groups

WIDTHS = (64, 128, 256, 512)


def build(width: int, par: str, seed: int = 1, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=256, d_model=width, n_layers=2, n_heads=4, max_seq_len=32, parametrization=par,
                      mup_base_width=64, tie_embeddings=False, **kw)
    return Transformer(cfg)


def coordinates_after_training(width: int, par: str, steps: int = 5, lr: float = 1e-2) -> dict[str, float]:
    """Mean |coordinate| of the last MLP output and of the logits after `steps` Adam steps at a fixed lr."""
    model = build(width, par)
    groups = param_groups(list(model.named_parameters()), 0.0, False, model.cfg.width_mult)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    opt = torch.optim.Adam(groups)
    x = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        loss = F.cross_entropy(model(x).view(-1, 256), x.roll(-1, 1).view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    seen = {}
    hook = model.blocks[-1].mlp.register_forward_hook(lambda m, i, o: seen.update(mlp=o.abs().mean().item()))
    with torch.no_grad():
        seen["logits"] = model(x).abs().mean().item()
    hook.remove()
    return seen


def test_coordinate_check_flat_under_mup_growing_under_sp():
    for key in ("mlp", "logits"):
        sp = [coordinates_after_training(w, "sp")[key] for w in WIDTHS]
        mup = [coordinates_after_training(w, "mup")[key] for w in WIDTHS]
        assert sp[-1] / sp[0] > 5, (key, sp)  # standard parametrization: updates blow up with width
        assert max(mup) / min(mup) < 3, (key, mup)  # muP: the same scale at every width


def test_mup_equals_sp_at_the_base_width():
    sp, mup = build(64, "sp"), build(64, "mup")
    x = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(sp(x), mup(x), rtol=0, atol=0)
    assert mup.cfg.width_mult == 1 and mup.cfg.attn_scale == pytest.approx(1 / math.sqrt(16))


def test_mup_init_attention_scale_and_learning_rates():
    model = build(256, "mup")
    cfg = model.cfg
    assert cfg.width_mult == 4
    assert cfg.attn_scale == pytest.approx(math.sqrt(16) / 64)  # 1/head_dim, equal to SP's at head_dim 16
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02 / 2, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    groups = param_groups(list(model.named_parameters()), 0.1, False, cfg.width_mult)
    hidden = next(g for g in groups if g["lr_scale"] != 1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    hidden_names = {names[id(p)] for p in hidden["params"]}
    assert hidden["lr_scale"] == 0.25 and hidden["weight_decay"] == pytest.approx(0.4)
    assert "blocks.0.attn.qkv.weight" in hidden_names and "blocks.1.mlp.down.weight" in hidden_names
    assert not any(n.startswith(("tok_emb", "head", "pos_emb")) or "norm" in n for n in hidden_names)
    # logits carry the 1/width_mult output multiplier
    x = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        h = model(x, return_hidden=True)
        torch.testing.assert_close(model.logits(h), model.head(h) / 4)


def test_standard_parametrization_has_two_plain_groups():
    groups = param_groups(list(build(256, "sp").named_parameters()), 0.1, False, 1.0)
    assert len(groups) == 2 and all(g["lr_scale"] == 1.0 for g in groups)


def test_bad_mup_settings_are_refused():
    with pytest.raises(LmlabError, match="parametrization must be one of"):
        ModelConfig(parametrization="ntk")
    with pytest.raises(LmlabError, match="mup_base_width=100 must be a positive multiple of model.n_heads=8"):
        ModelConfig(d_model=256, n_heads=8, parametrization="mup", mup_base_width=100)


def test_pretraining_under_mup_scales_hidden_learning_rates(tiny_data, tmp_path):
    from lmlab.config import from_dict
    from lmlab.train.trainer import PretrainConfig, Trainer

    cfg = from_dict(PretrainConfig, {
        "data": str(tiny_data), "out": str(tmp_path / "mup"),
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 32, "parametrization": "mup",
                  "mup_base_width": 32},
        "train": dict(steps=30, batch_size=4, block_size=32, lr=3e-3, min_lr=3e-3, warmup_steps=0,
                      eval_interval=0, eval_batches=2, precision="fp32", threads=1, progress=False)})
    trainer = Trainer(cfg)
    summary = trainer.fit()
    lrs = sorted(g["lr"] for g in trainer.opt.param_groups)
    assert lrs == pytest.approx([1.5e-3, 3e-3, 3e-3])
    assert summary["val_loss"] < 5.0
