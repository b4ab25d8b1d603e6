"""The reward model: Bradley-Terry loss, scoring the last real token, bad input, training on world pairs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmlab.config import from_dict
from lmlab.data.preferences import pair_ids, read_preferences
from lmlab.data.tokenizer import Tokenizer
from lmlab.errors import LmlabError
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.post.rm import (
    RewardModel,
    RMConfig,
    RMScoreConfig,
    batch_ids,
    bradley_terry_loss,
    load_reward_model,
    run_rm_score,
    train_rm,
)


def test_bradley_terry_loss_matches_hand_computation():
    c, r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert bradley_terry_loss(c, r).item() == pytest.approx((-math.log(sig(1)) - math.log(sig(-1))) / 2)
    m = torch.tensor([0.5, 0.5])
    assert bradley_terry_loss(c, r, m).item() == pytest.approx((-math.log(sig(0.5)) - math.log(sig(-1.5))) / 2)
    assert bradley_terry_loss(c, r, 0.0, 0.1).item() == pytest.approx(
        (-math.log(sig(1)) - math.log(sig(-1))) / 2 + 0.1 * (1 + 1) / 2)
    assert bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))


def test_score_reads_the_last_real_token_whatever_the_padding(tiny_data):
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    torch.manual_seed(0)
    rm = RewardModel(Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2,
                                             max_seq_len=64))).eval()
    pair = {"prompt": "Where was Ada born?"}
    short, long = pair_ids(tok, pair, "Saltmarsh"), pair_ids(tok, pair, "in a small town by the sea, I think")
    with torch.no_grad():
        alone = rm(*batch_ids(tok, [short], 64, ["a"], 0))
        padded = rm(*batch_ids(tok, [short, long], 64, ["a", "b"], 0))
    assert alone.item() == pytest.approx(padded[0].item(), abs=1e-5)


@pytest.mark.parametrize("line, match", [
    ({"prompt": "Q", "chosen": "A"}, ":1: missing field\\(s\\) rejected"),
    ({"prompt": "Q", "chosen": "A", "rejected": ""}, ":1: 'rejected' must be a non-empty string"),
    ({"prompt": "", "chosen": "A", "rejected": "B"}, ":1: 'prompt' must be a non-empty string"),
])
def test_bad_preference_files_name_file_and_line(tmp_path, line, match):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(LmlabError, match=match):
        read_preferences(path)


def test_prompt_longer_than_the_context_is_refused(tiny_data):
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    ids = pair_ids(tok, {"prompt": "word " * 100}, "x")
    with pytest.raises(LmlabError, match="p.jsonl:3: prompt \\+ response is .* longer than the context of 64"):
        batch_ids(tok, [ids], 64, ["p.jsonl:3"], 0)


def test_reward_model_learns_world_preferences_and_scores(tiny_data, tiny_model, tmp_path):
    world = tiny_data.parent / "world"
    cfg = from_dict(RMConfig, {"init": str(tiny_model), "data": str(world), "out": str(tmp_path / "rm"),
                               "train": {"steps": 80, "batch_size": 16, "lr": 1e-3, "device": "cpu", "threads": 1,
                                         "eval_interval": 0}})
    s = train_rm(cfg)
    assert s["train_accuracy"] > 0.9
    # abstaining about people the model never read about vs a fabrication: learnt and held out by person
    unknown = s["heldout"]["heldout"]
    assert unknown["n"] > 0 and s["heldout_accuracy"] > 0.6
    assert json.loads((tmp_path / "rm" / "summary.json").read_text())["rm"]["heldout_accuracy"] == \
        s["heldout_accuracy"]
    scores = run_rm_score(RMScoreConfig(model=str(tmp_path / "rm" / "checkpoint"),
                                        prompt="When was Zyx Quorlan born?",
                                        responses=["I don't know.", "March 3, 1971"], device="cpu"))["scores"]
    assert scores[0]["score"] > scores[1]["score"]  # unknown person: abstention preferred
    model, _ = load_reward_model(tmp_path / "rm" / "checkpoint")
    assert model.value_head.weight.shape == (1, 64)
    with pytest.raises(LmlabError, match="not a reward model"):
        load_reward_model(tiny_model)


def test_logprob_feature_adds_the_backbones_mean_reply_logprob(tiny_data, tiny_model, tmp_path):
    """With a zero head, the score is exactly the backbone's mean log-probability of the reply's tokens
    (and end of turn), and it survives a save/load round trip with its learned scale."""
    from lmlab.data.conversations import prompt_ids
    from lmlab.data.preferences import conversation
    from lmlab.model.checkpoint import load_model
    from lmlab.post.rm import save_reward_model
    from lmlab.post.stage import Optimizer, PostTrainConfig

    tok = Tokenizer.load(tiny_model / "tokenizer.json")
    rm = RewardModel(load_model(tiny_model, "cpu"), logprob_feature=True)
    torch.nn.init.zeros_(rm.value_head.weight)
    prompts, replies = ["Where was Ann born?", "Hi"], ["In Paris.", "Hello there, friend"]
    got = rm.score(tok, prompts, replies)
    for p, r, g in zip(prompts, replies, got):
        ids = pair_ids(tok, {"prompt": p}, r)
        start = len(prompt_ids(tok, conversation({"prompt": p}, r)))
        with torch.no_grad():
            logp = torch.log_softmax(rm.backbone(torch.tensor([ids]))[0].float(), -1)
        want = sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids))) / (len(ids) - start)
        assert g == pytest.approx(want, abs=1e-4)
    rm.logprob_scale.data.fill_(0.5)
    opt = Optimizer(rm, PostTrainConfig(precision="fp32", device="cpu"), torch.device("cpu"))
    save_reward_model(tmp_path / "ck", opt.weights(rm), rm.backbone.cfg, tiny_model / "tokenizer.json", {})
    back, _ = load_reward_model(tmp_path / "ck")
    assert back.logprob_scale.item() == 0.5
    assert back.score(tok, prompts, replies) == pytest.approx([0.5 * g + 0 for g in got], abs=1e-4)
