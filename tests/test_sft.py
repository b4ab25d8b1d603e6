"""Conversations, loss masks, packing and `lmlab sft` on a tiny world."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.config import from_dict
from lmlab.data.chat import render
from lmlab.data.conversations import IGNORE, collate, encode, examples, read_conversations
from lmlab.data.tokenizer import Tokenizer
from lmlab.errors import LmlabError
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.post.sft import SFTConfig, response_loss, sft

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where was Ada born?"},
        {"role": "assistant", "content": "Saltmarsh"}]


@pytest.fixture(scope="module")
def tok(tiny_data) -> Tokenizer:
    return Tokenizer.load(tiny_data / "tokenizer.json")


def test_encoding_equals_the_rendered_text_and_labels_only_the_reply(tok):
    ids, labels = encode(tok, CONV)
    assert ids == tok.encode(render(CONV, add_generation_prompt=False))
    eot = tok.token_to_id("<|end_of_turn|>")
    trained = [t for t in labels if t != IGNORE]
    assert trained == tok.encode(" Saltmarsh") + [eot]  # the reply and its end of turn, nothing else
    assert labels[-len(trained):] == trained


def test_packed_rows_give_the_same_loss_as_padded_rows(tok):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=96,
                                    positions="rope", norm="rmsnorm", mlp="swiglu")).eval()
    convs = [CONV, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}],
             [{"role": "user", "content": "Which university?"}, {"role": "assistant", "content": "Carrow"}]]
    rows = examples(tok, convs, 96, "test")
    padded, packed = collate(rows, 0, False, 96), collate(rows, 0, True, 96)
    assert packed["ids"].shape[0] == 1 and padded["ids"].shape[0] == 3
    with torch.no_grad():
        a, b = response_loss(model, padded, torch.device("cpu")), response_loss(model, packed, torch.device("cpu"))
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def write(path, lines):
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return path


@pytest.mark.parametrize("line, match", [
    ({"prompt": "Hi"}, ":1: a record needs 'messages', or 'prompt' and 'response'"),
    ({"prompt": "Hi", "response": "  "}, ":1: the assistant's response is empty"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, ":1: the last message must be the assistant's"),
    ({"messages": [{"role": "bot", "content": "Hi"}]}, ":1: message 0 needs a role"),
    ("{not json", ":1: invalid JSON"),
])
def test_bad_conversation_files_name_file_and_line(tmp_path, line, match):
    path = write(tmp_path / "c.jsonl", [line])
    with pytest.raises(LmlabError, match=match):
        read_conversations(path)


def test_too_long_conversation_is_refused(tok):
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(LmlabError, match="f.jsonl: conversation 1: the conversation is .* context of 65"):
        examples(tok, [long], 64, "f.jsonl")
    with pytest.raises(LmlabError, match="f.jsonl:7: the conversation is"):
        examples(tok, [long], 64, ["f.jsonl:7"])


def test_sft_teaches_the_model_to_stop_at_end_of_turn(tiny_data, tiny_model, tmp_path):
    world = tiny_data.parent / "world"
    cfg = from_dict(SFTConfig, {"init": str(tiny_model), "data": str(world),
                                "out": str(tmp_path / "sft"), "eval_questions": 30, "pack": True,
                                "train": {"steps": 120, "batch_size": 16, "lr": 3e-3, "min_lr": 3e-4,
                                          "device": "cpu", "threads": 1, "eval_interval": 0}})
    s = sft(cfg)
    assert s["before"]["test"]["stop_rate"] < 0.2
    assert s["after"]["test"]["stop_rate"] >= 0.9 and s["after"]["unknown"]["stop_rate"] >= 0.9
    assert s["train_flops"] > 0 and s["val_loss"] is not None
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())["sft"]
    assert summary["after"]["train"]["stop_rate"] >= 0.9
    assert (tmp_path / "sft" / "checkpoint" / "model.safetensors").is_file()


@pytest.mark.parametrize("tie", [True, False])
def test_resize_vocab_keeps_old_logits(tie):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2, max_seq_len=16,
                                    tie_embeddings=tie)).eval()
    x = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        before = model(x)
        model.resize_vocab(54)
        after = model(x)
    assert after.shape[-1] == 54 and model.cfg.vocab_size == 54
    torch.testing.assert_close(after[..., :50], before)
    assert (model.head.weight is model.tok_emb.weight) == tie


def test_sft_adds_chat_tokens_to_a_foreign_tokenizer(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from lmlab.model.checkpoint import load_checkpoint, model_state, save_checkpoint

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    texts = ["Where was Ada born? Saltmarsh.", "Hello there, how are you?"] * 50
    hf.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (tmp_path / "tok").mkdir()
    hf.save(str(tmp_path / "tok" / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=hf.get_vocab_size(), d_model=32, n_layers=2, n_heads=2, max_seq_len=64)
    save_checkpoint(tmp_path / "base", model_state(Transformer(cfg)), cfg, tmp_path / "tok" / "tokenizer.json")
    data = write(tmp_path / "c.jsonl", [{"prompt": "Where was Ada born?", "response": "Saltmarsh"}] * 20)
    s = sft(from_dict(SFTConfig, {"init": str(tmp_path / "base"), "data": str(data), "out": str(tmp_path / "sft"),
                                  "train": {"steps": 5, "batch_size": 4, "device": "cpu", "threads": 1}}))
    ck = load_checkpoint(s["checkpoint"])
    tok = Tokenizer.load(ck.tokenizer_path)
    assert tok.token_to_id("<|end_of_turn|>") is not None and tok.token_to_id("<|assistant|>") is not None
    assert ck.config.vocab_size == tok.vocab_size == hf.get_vocab_size() + 4
