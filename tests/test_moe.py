"""Mixture-of-experts MLP: exact dropless routing, the load-balancing loss, counts equal to `lmlab size`,
training, checkpoints and cached generation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import from_dict
from lmlab.data.tokenizer import Tokenizer
from lmlab.errors import LmlabError
from lmlab.infer.engine import Engine
from lmlab.infer.reference import generate as plain_generate
from lmlab.infer.sampling import SamplingParams
from lmlab.model.checkpoint import load_checkpoint
from lmlab.model.config import ModelConfig, preset
from lmlab.model.transformer import MoE, Transformer
from lmlab.plan.params import param_counts
from lmlab.plan.size import SizeConfig, size
from lmlab.train.trainer import PretrainConfig, pretrain

SHAPES = {
    "mixtral-like": dict(norm="rmsnorm", positions="rope", mlp="swiglu", n_experts=4, experts_per_token=2,
                         d_ff=24, tie_embeddings=False, n_kv_heads=2),
    "switch-like": dict(mlp="gelu", bias=True, n_experts=3, experts_per_token=1, moe_renormalize=False),
    "all-experts": dict(mlp="gelu_tanh", n_experts=2, experts_per_token=2),
}


def make(name: str, **overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, max_seq_len=32, **{**SHAPES[name], **overrides})
    return Transformer(cfg).eval()


def reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: softmax over experts, top k, optional renormalisation, weighted sum of expert MLPs."""
    out = torch.zeros_like(x)
    for i, token in enumerate(x):
        probs = F.softmax(moe.router(token).float(), dim=-1)
        gates, chosen = probs.topk(moe.k)
        if moe.renormalize:
            gates = gates / gates.sum()
        for g, e in zip(gates, chosen):
            out[i] += g * moe.experts[int(e)](token[None])[0]
    return out


@pytest.mark.parametrize("name", SHAPES)
def test_parameter_counts_equal_lmlab_size(name):
    model = make(name)
    counts, planned = model.count_params(), param_counts(model.cfg)
    assert counts["total"] == planned["total"] == sum(p.numel() for p in model.parameters())
    assert counts["active"] == planned["active_per_token"]
    expert = sum(p.numel() for p in model.blocks[0].mlp.experts[0].parameters())
    assert planned["per_expert_per_layer"] == expert
    assert counts["total"] - counts["active"] == 2 * expert * (model.cfg.n_experts - model.cfg.experts_per_token)


@pytest.mark.parametrize("name", SHAPES)
def test_dropless_routing_equals_token_by_token_reference(name):
    moe = make(name).blocks[0].mlp
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = moe(x)
        ref = reference_moe(moe, x.reshape(-1, 32)).view_as(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert int(moe.load.sum()) == 21 * moe.k  # every token took k expert slots: nothing dropped


def test_no_token_dropped_when_every_token_picks_the_same_experts():
    moe = make("mixtral-like").blocks[0].mlp
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[1] = 1.0  # expert 1 wins for every token with a positive sum, expert 0 otherwise
        moe.router.weight[3] = 0.5
        x = torch.rand(40, 32) + 0.1  # all positive: every token goes to experts 1 and 3
        got, ref = moe(x), reference_moe(moe, x)
    assert moe.load.tolist() == [0, 40, 0, 40]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # Balancing loss: n_experts * sum(share * mean prob) = 4 * (0.5 * p1 + 0.5 * p3), far above the uniform 1.
    probs = F.softmax(moe.router(x).float(), dim=-1).mean(0)
    assert moe.aux_loss.item() == pytest.approx(4 * (0.5 * probs[1] + 0.5 * probs[3]).item(), rel=1e-6)
    assert moe.aux_loss.item() > 1.5


def test_balancing_loss_is_one_when_uniform_and_its_gradient_spreads_the_load():
    moe = make("switch-like").blocks[0].mlp
    x = torch.randn(600, 32, generator=torch.Generator().manual_seed(2)) + 0.5
    with torch.no_grad():
        moe.router.weight.zero_()
    moe(x)
    assert moe.aux_loss.item() == pytest.approx(1.0, abs=1e-6)  # equal probabilities: the minimum
    with torch.no_grad():
        moe.router.weight.normal_(0, 0.05)
        moe.router.weight[0] += 0.1  # expert 0 favoured: its score is 0.1 * sum(x), about 1.6
    opt = torch.optim.SGD(moe.router.parameters(), lr=0.5)
    moe(x)
    before = moe.load.max().item() / 600
    for _ in range(100):
        opt.zero_grad()
        moe(x)
        moe.aux_loss.backward()
        opt.step()
    moe(x)
    after = moe.load.max().item() / 600
    assert before > 0.6 and after < before - 0.15


def test_model_aux_loss_is_the_mean_over_blocks_and_none_when_dense():
    model = make("mixtral-like")
    model(torch.randint(0, 61, (2, 16)))
    per_block = [b.mlp.aux_loss for b in model.blocks]
    assert model.moe_aux_loss().item() == pytest.approx(torch.stack(per_block).mean().item())
    dense = Transformer(ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, max_seq_len=32))
    dense(torch.randint(0, 61, (2, 16)))
    assert dense.moe_aux_loss() is None and dense.count_params()["active"] == dense.count_params()["total"]


def test_bad_moe_shapes_are_refused():
    with pytest.raises(LmlabError, match="experts_per_token=3 must be between 1 and model.n_experts=2"):
        ModelConfig(n_experts=2, experts_per_token=3)
    with pytest.raises(LmlabError, match="n_experts must be >= 1"):
        ModelConfig(n_experts=0)
    ModelConfig(n_experts=1, experts_per_token=5)  # dense: top-k unused


def test_moe_preset_is_sized_by_lmlab_size_without_torch_figures_drifting():
    cfg = preset("moe-tiny")
    result = size(SizeConfig(model="moe-tiny"))
    with torch.device("meta"):
        model = Transformer(cfg)
    assert result["params"]["total"] == model.count_params()["total"]
    assert result["params"]["active_per_token"] == model.count_params()["active"]
    assert result["moe"]["n_experts"] == 8 and result["moe"]["experts_per_token"] == 2


def test_cached_generation_equals_recomputation(tiny_data):
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=64,
                      n_experts=4, experts_per_token=2, mlp="swiglu", positions="rope", norm="rmsnorm")
    model = Transformer(cfg).eval()
    with torch.no_grad():
        model.head.weight.mul_(8)
    engine = Engine(model, tok)
    prompts = ["Question: Where was", "The answer is", "A"]
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True))
    for prompt, out in zip(prompts, outs):
        assert out.completions[0].token_ids == plain_generate(model, tok.encode(prompt), 10, 0.0)


def test_pretraining_a_moe_learns_balances_and_checkpoints(tiny_data, tmp_path):
    out = tmp_path / "moe"
    cfg = from_dict(PretrainConfig, {
        "data": str(tiny_data), "out": str(out),
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32, "mlp": "swiglu", "d_ff": 32,
                  "n_experts": 4, "experts_per_token": 2},
        "train": dict(steps=40, batch_size=4, block_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                      eval_interval=20, eval_batches=2, log_interval=5, precision="fp32", threads=1,
                      progress=False)})
    s = pretrain(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if not r.get("eval")]
    assert losses[-1] < losses[0] - 1.0
    assert s["params_active"] < s["params"]
    assert 1.0 <= s["moe_aux_loss"] < 1.5  # close to the balanced minimum of 1
    assert 0.25 <= s["moe_max_expert_share"] < 0.6  # uniform would be 0.25 over 4 experts
    ck = load_checkpoint(out / "checkpoint")
    assert ck.config.n_experts == 4
    planned = size(SizeConfig(model=str(out / "checkpoint")))["params"]
    assert planned["total"] == s["params"] and planned["active_per_token"] == s["params_active"]
