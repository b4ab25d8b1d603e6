"""The shared log-probability and padding helpers, and each caller's numbers through them."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.data.conversations import IGNORE, Example, collate, pad_batch, pad_rows
from lmlab.data.tokenizer import Tokenizer
from lmlab.infer.engine import Engine
from lmlab.model.config import ModelConfig
from lmlab.model.logprobs import batch_logprobs, gather_logprobs, log_probs, sequence_logprobs, token_logprobs
from lmlab.model.transformer import Transformer
from lmlab.post.evaluate import kl_to_reference
from lmlab.post.rl import PolicyWithValue
from lmlab.post.rm import RewardModel, mean_reply_logprob

SEQS = [([1, 2, 3, 4, 5], [IGNORE, IGNORE, 3, 4, 5]), ([6, 7], [IGNORE, 7]), ([8, 9, 10, 11], [IGNORE, 9, 10, 11])]


def plain(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The computation every caller used to write out: fp32 log-softmax, then the target's entry."""
    return torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, max_seq_len=32)).eval()
    with torch.no_grad():  # sharper distributions: some log-probabilities far from log(1/V)
        m.head.weight.mul_(4)
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_token_logprobs_is_fp32_log_softmax_then_gather(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 6, 50, generator=g) * 20).to(dtype)
    targets = torch.randint(0, 50, (3, 6), generator=g)
    lp = token_logprobs(logits, targets)
    assert lp.dtype == torch.float32 and torch.equal(lp, plain(logits, targets))
    full = log_probs(logits)
    assert torch.equal(gather_logprobs(full, targets), lp)
    # against the definition in float64: fp32 rounding of x - max, of exp, of a sum of V terms and of the log
    x = logits.float().double()
    ref = (x - x.logsumexp(-1, keepdim=True)).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    spread = (x.amax(-1) - x.amin(-1))
    bound = torch.finfo(torch.float32).eps * (2 * spread + x.shape[-1] + math.log(x.shape[-1]) + 4)
    assert ((lp.double() - ref).abs() <= bound).all()


def test_ignored_positions_are_zero_and_left_out_of_sums():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 30, generator=g) * 10
    targets = torch.randint(0, 30, (2, 5), generator=g)
    targets[0, :2] = IGNORE
    targets[1, 4] = IGNORE
    lp = token_logprobs(logits, targets, IGNORE)
    keep = targets != IGNORE
    assert torch.equal(lp, plain(logits, targets) * keep)
    assert (lp[~keep] == 0).all() and (lp[keep] < 0).all()
    assert torch.equal(lp.sum(1), (plain(logits, targets) * keep).sum(1))


def test_pad_rows_right_and_left():
    ids, mask = pad_rows([[1, 2, 3], [4], []], 9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9], [9, 9, 9]] and ids.dtype == torch.long
    assert mask.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    ids, mask = pad_rows([[1, 2, 3], [4]], -1, left=True)
    assert ids.tolist() == [[1, 2, 3], [-1, -1, 4]] and mask.tolist() == [[True, True, True], [False, False, True]]


def test_pad_batch_on_a_fixed_input():
    seqs = [([1, 2, 3], [IGNORE, 2, 3]), ([4], [IGNORE])]
    right, left = pad_batch(seqs, 9), pad_batch(seqs, 9, left=True)
    assert list(right) == ["ids", "labels", "mask", "positions"]
    assert right["ids"].tolist() == [[1, 2, 3], [4, 9, 9]] and left["ids"].tolist() == [[1, 2, 3], [9, 9, 4]]
    assert right["labels"].tolist() == left["labels"].tolist() == [[IGNORE, 2, 3], [IGNORE] * 3]
    assert right["mask"].tolist() == [[True] * 3, [True, False, False]]
    assert left["mask"].tolist() == [[True] * 3, [False, False, True]]
    assert right["positions"].tolist() == left["positions"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_collate_padded_and_packed_on_a_fixed_input():
    batch = [Example([1, 2, 3], [IGNORE, 3, 4]), Example([5, 6], [6, 7]), Example([8], [9])]
    padded = collate(batch, 0, False, 5)
    assert padded["ids"].tolist() == [[1, 2, 3], [5, 6, 0], [8, 0, 0]]
    assert padded["labels"].tolist() == [[IGNORE, 3, 4], [6, 7, IGNORE], [9, IGNORE, IGNORE]]
    assert padded["positions"].tolist() == [[0, 1, 2], [0, 1, 0], [0, 0, 0]]
    assert padded["mask"].tolist() == [[True] * 3, [True, True, False], [True, False, False]]
    assert padded["tokens"] == 6
    packed = collate(batch, 0, True, 5)  # the first two fill a row of 5, the third starts another
    assert packed["ids"].tolist() == [[1, 2, 3, 5, 6], [8, 0, 0, 0, 0]]
    assert packed["labels"].tolist() == [[IGNORE, 3, 4, 6, 7], [9] + [IGNORE] * 4]
    assert packed["positions"].tolist() == [[0, 1, 2, 0, 1], [0] * 5]
    doc = torch.tensor([[0, 0, 0, 1, 1], [0, -1, -1, -1, -1]])
    assert packed["mask"].shape == (2, 1, 5, 5)
    assert torch.equal(packed["mask"], (doc[:, :, None] == doc[:, None, :])[:, None])


@torch.no_grad()
def test_dpo_and_evaluation_log_probs_equal_the_plain_computation(model):
    batch = pad_batch(SEQS, 0, left=True)
    logits = model(batch["ids"], attn_mask=batch["mask"], positions=batch["positions"])
    target = batch["labels"][:, 1:]
    expected = plain(logits[:, :-1], target) * (target != IGNORE)
    lp, keep = batch_logprobs(model, batch, "cpu")
    assert torch.equal(lp, expected) and torch.equal(keep, target != IGNORE)
    assert torch.equal(sequence_logprobs(model, batch, "cpu"), expected.sum(dim=1))


@torch.no_grad()
def test_reward_model_logprob_feature_equals_the_plain_computation(model):
    torch.manual_seed(1)
    rm = RewardModel(model, logprob_feature=True).eval()
    rm.logprob_scale.fill_(0.5)
    ids, mask = pad_rows([s[0] for s in SEQS], 0)
    reply = torch.tensor([[False, False, True, True, True], [False, True, False, False, False],
                          [False, False, True, True, False]])
    hidden = model(ids, attn_mask=mask, return_hidden=True)
    m = reply[:, 1:].float()
    tok_lp = plain(model.logits(hidden[:, :-1]), ids[:, 1:])
    mean = (tok_lp * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    assert torch.equal(mean_reply_logprob(model, hidden, ids, reply), mean)
    last = mask.long().sum(dim=1) - 1
    head = rm.value_head(hidden[torch.arange(3), last]).squeeze(-1)
    assert torch.equal(rm(ids, mask, reply), head + rm.logprob_scale * mean)


@torch.no_grad()
def test_rl_policy_log_probs_and_entropy_equal_the_plain_computation(model):
    batch = pad_batch(SEQS, 0)
    logp, entropy, _ = PolicyWithValue(model)(batch, "cpu")
    h = model(batch["ids"], attn_mask=batch["mask"], positions=batch["positions"], return_hidden=True)
    full = torch.log_softmax(model.logits(h[:, :-1]).float(), -1)
    assert torch.equal(logp, plain(model.logits(h[:, :-1]), batch["labels"][:, 1:]))  # unmasked: the losses mask
    assert torch.equal(entropy, -(full.exp() * full).sum(-1))


@torch.no_grad()
def test_engine_score_and_kl_to_itself(tiny_data):
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    torch.manual_seed(0)
    lm = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=64))
    engine = Engine(lm, tok)
    prompt, cont = [5, 6, 7], [9, 10, 11, 12]
    s = engine.score([prompt], [cont])[0]
    full = torch.log_softmax(lm(torch.tensor([prompt + cont])).float(), dim=-1)[0]
    expected = [full[len(prompt) - 1 + i, t].item() for i, t in enumerate(cont)]
    assert s["token_logprobs"] == expected and s["total"] == sum(expected)
    assert engine.score([prompt], [[]])[0] == {"token_ids": [], "token_logprobs": [], "total": 0.0, "mean": 0.0}
    kl = kl_to_reference(lm, lm, tok, ["Where was Ada born?", "Hi"], "cpu", seed=0, max_new_tokens=6)
    assert kl == {"kl_k1": 0.0, "kl_k3": 0.0, "n": 2}
