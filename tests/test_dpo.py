"""DPO: loss formulas, the log 2 fixed point, padding invariance of response log-probs, and a run."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.config import from_dict
from lmlab.data.conversations import encode
from lmlab.data.preferences import conversation
from lmlab.data.tokenizer import Tokenizer
from lmlab.errors import LmlabError
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.post.dpo import DPOConfig, dpo, dpo_loss, pad_batch, pair_scores, sequence_logprobs


def test_loss_formulas_match_hand_computation():
    pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5])
    h = (-1 + 3) - (-2 + 2.5)  # 1.5
    beta = 0.1
    loss, m = dpo_loss(pc, pr, rc, rr, beta, "sigmoid")
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-beta * h)))
    assert dpo_loss(pc, pr, rc, rr, beta, "ipo")[0].item() == pytest.approx((h - 1 / (2 * beta)) ** 2)
    assert dpo_loss(pc, pr, rc, rr, beta, "hinge")[0].item() == pytest.approx(max(0.0, 1 - beta * h))
    assert m["rewards/chosen"] == pytest.approx(beta * 1.0) and m["rewards/rejected"] == pytest.approx(beta * -0.5)
    assert m["rewards/margins"] == pytest.approx(0.15) and m["rewards/accuracies"] == 1.0


def test_policy_equal_to_reference_gives_log_2():
    lp = torch.randn(8)
    loss, _ = dpo_loss(lp, lp - 1, lp, lp - 1, 0.1, "sigmoid")
    assert loss.item() == pytest.approx(math.log(2))


def test_left_and_right_padding_give_the_same_log_probs(tiny_data):
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=64,
                                    positions="learned")).eval()
    seqs = [encode(tok, conversation({"prompt": p}, r)) for p, r in
            (("Where was Ada born?", "Saltmarsh"), ("Hi", "Hello, how can I help you today?"))]
    with torch.no_grad():
        right = sequence_logprobs(model, pad_batch(seqs, 0, left=False), "cpu")
        left = sequence_logprobs(model, pad_batch(seqs, 0, left=True), "cpu")
        alone = torch.cat([sequence_logprobs(model, pad_batch([s], 0), "cpu") for s in seqs])
    torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(alone, right, rtol=1e-5, atol=1e-4)
    # only response tokens count: the reply's tokens and its end of turn
    assert all(sum(t != -100 for t in labels) == len(tok.encode(" " + r)) + 1
               for (_, labels), r in zip(seqs, ("Saltmarsh", "Hello, how can I help you today?")))


def test_ipo_mean_scores_are_per_token_means_of_the_summed_ones(tiny_data):
    """'ipo' sums a response's log-probabilities (Azar et al.); 'ipo-mean' divides by its length (TRL)."""
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=64))
    replies = ("Saltmarsh", "Hello, how can I help you today?")
    batch = pad_batch([encode(tok, conversation({"prompt": "Hi"}, r)) for r in replies], 0)
    lengths = torch.tensor([len(tok.encode(" " + r)) + 1 for r in replies])
    with torch.no_grad():
        summed = pair_scores(model, batch, "cpu", "ipo")
        mean = pair_scores(model, batch, "cpu", "ipo-mean")
    assert torch.equal(summed, sequence_logprobs(model, batch, "cpu"))
    assert torch.equal(mean, summed / lengths)
    h = torch.tensor([0.3])
    assert dpo_loss(h, h * 0, h * 0, h * 0, 0.5, "ipo-mean")[0] == dpo_loss(h, h * 0, h * 0, h * 0, 0.5, "ipo")[0]


def test_bad_settings_are_refused():
    with pytest.raises(LmlabError, match="loss must be one of sigmoid, ipo, ipo-mean, hinge"):
        DPOConfig(loss="kto")
    with pytest.raises(LmlabError, match="beta must be positive"):
        DPOConfig(beta=0)


def test_dpo_widens_the_margin_and_reports_against_the_world(tiny_data, tiny_model, tmp_path):
    world = tiny_data.parent / "world"
    cfg = from_dict(DPOConfig, {"init": str(tiny_model), "data": str(world), "out": str(tmp_path / "dpo"),
                                "eval_questions": 20,
                                "train": {"steps": 40, "batch_size": 8, "lr": 1e-4, "device": "cpu", "threads": 1}})
    s = dpo(cfg)
    assert s["final"]["rewards/margins"] > 0 and s["final"]["rewards/accuracies"] >= 0.5
    assert s["before"]["kl"]["kl_k3"] == pytest.approx(0.0, abs=1e-4)  # the policy is the reference
    assert s["after"]["kl"]["kl_k3"] > 0 and math.isfinite(s["after"]["kl"]["kl_k1"])
    assert set(s["after"]["gold_reward"]) == {"heldout", "qa_test"}
    assert (tmp_path / "dpo" / "checkpoint" / "model.safetensors").is_file()
