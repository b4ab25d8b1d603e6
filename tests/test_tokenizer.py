"""Tokenizer: exact round trips for both kinds, stable special ids, files, and the train entry point."""

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

from lmlab.config import field_docs, from_dict
from lmlab.data.tokenizer import BPE_MIN_VOCAB, SPECIAL_TOKENS, Tokenizer, TokenizerConfig, train_tokenizer
from lmlab.errors import LmlabError

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

NASTY = [
    "",
    " ",
    "a",
    "hello world",
    "  leading and trailing  ",
    "\r\n",
    "line one\r\nline two\n\n\tindented\n",
    "3.14159 + 2718 = 12345678901234567890",
    "0007 -42 1e-3 ½ ² ٣ 𝟙",
    "emoji 🤗👩‍👩‍👧‍👦🏳️‍🌈 flags 🇯🇵",
    "日本語のテキスト 中文 한국어",
    "e\u0301 a\u0308\u0323 combining \u0338",
    "control \x00\x01\x07\x1b[31m\x7f\x85 chars",
    "\u200b\u200d\ufeff zero width \u2028 \u2029",
    "\U0010ffff \ue000 private",
    "<|bos|>special tokens inline<|eos|><|end_of_turn|>",
    "<|bos partial <| |> <0x41> <0xZZ>",
    "Ġ Ċ ĉ byte-level lookalikes",
    "x" * 300,
    "مرحبا بالعالم עברית",
]

CORPUS = [
    "The cat sat on the mat. The dog sat on the log. 123 cats and 456 dogs.",
    "Alice was born on 12 March 1987 in Lisbon. She studied physics at Porto.",
    "Bob works at Acme Corp in Berlin; he earns 4200 euros a month.",
] * 20


def random_strings(seed: int, n: int) -> list[str]:
    """Random strings mixing ASCII, Latin, CJK, emoji and any non-surrogate code point."""
    rng = random.Random(seed)
    pools = [
        (0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x300, 0x36F), (0x4E00, 0x9FFF),
        (0x1F300, 0x1FAFF), (0xE000, 0xF8FF), (0x10000, 0x10FFFF),
    ]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(0, 40)):
            lo, hi = rng.choice(pools)
            c = rng.randint(lo, hi)
            if 0xD800 <= c <= 0xDFFF:
                c = 0x41
            chars.append(chr(c))
        out.append("".join(chars))
    return out


@pytest.fixture(scope="module")
def bpe():
    return Tokenizer.train_bpe(CORPUS, vocab_size=320)


@pytest.fixture(scope="module")
def char():
    return Tokenizer.train_char(CORPUS)


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_round_trip_nasty_and_random(kind, bpe, char):
    tok = bpe if kind == "bpe" else char
    for s in NASTY + random_strings(seed=0, n=300):
        ids = tok.encode(s)
        assert tok.decode(ids) == s, (kind, s)
    batch = NASTY + random_strings(seed=1, n=50)
    encoded = tok.encode_batch(batch)
    assert encoded == [tok.encode(s) for s in batch]
    assert [tok.decode(ids) for ids in encoded] == batch


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_special_ids_first_in_order(kind, bpe, char):
    tok = bpe if kind == "bpe" else char
    assert tok.kind == kind
    assert [tok.id_to_token(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)
    assert tok.special_ids == {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert (tok.end_of_turn_id, tok.mask_id) == (6, 7)
    ids = tok.encode("hi there", add_bos=True, add_eos=True)
    assert ids[0] == 0 and ids[-1] == 1 and ids[1:-1] == tok.encode("hi there")
    assert tok.decode(ids) == "<|bos|>hi there<|eos|>"
    assert tok.decode(ids, skip_special=True) == "hi there"
    assert tok.encode("<|user|>") == [4]


def test_decode_accepts_arrays_and_tensors(bpe):
    ids = bpe.encode("The cat sat.")
    assert bpe.decode(np.array(ids, dtype=np.uint16)) == "The cat sat."
    assert bpe.decode(torch.tensor(ids)) == "The cat sat."


def test_bpe_splits_digits_and_adds_no_prefix_space(bpe):
    ids = bpe.encode("4200 and 1987")
    toks = [bpe.decode([i]) for i in ids]
    assert toks[:4] == ["4", "2", "0", "0"]
    assert toks[-4:] == ["1", "9", "8", "7"]
    # No prefix space: the first word is encoded as written, without a leading space token.
    first = bpe.id_to_token(bpe.encode("The cat")[0])
    assert not first.startswith("Ġ")
    assert bpe.encode("The") != bpe.encode(" The")


def test_bpe_learns_merges(bpe):
    assert bpe.vocab_size > BPE_MIN_VOCAB
    assert bpe.vocab_size <= 320
    text = "The cat sat on the mat."
    assert len(bpe.encode(text)) < len(text.encode())


def test_bpe_vocab_too_small():
    with pytest.raises(LmlabError, match=r"vocab_size 200 .*minimum is 264"):
        Tokenizer.train_bpe(CORPUS, vocab_size=200)
    tok = Tokenizer.train_bpe(CORPUS, vocab_size=BPE_MIN_VOCAB)  # the minimum itself is fine
    assert tok.vocab_size == BPE_MIN_VOCAB
    assert tok.decode(tok.encode("naïve 🤗")) == "naïve 🤗"


def test_char_vocab_is_sorted_distinct_chars_after_specials():
    text = "hello world\n"
    tok = Tokenizer.train_char([text])
    chars = sorted(set(text))
    n = len(SPECIAL_TOKENS)
    assert [tok.id_to_token(n + i) for i in range(len(chars))] == chars
    assert tok.vocab_size == n + len(chars) + 256
    assert tok.encode("hello") == [n + chars.index(c) for c in "hello"]
    # Unseen characters fall back to their UTF-8 bytes, and still round-trip.
    ids = tok.encode("hi 🤗")
    assert len(ids) == 1 + 1 + 1 + 4
    assert tok.decode(ids) == "hi 🤗"


def test_char_vocab_size_bound():
    with pytest.raises(LmlabError, match=r"vocab_size 100 .*needs 268"):
        Tokenizer.train_char(["abcd"], vocab_size=100)
    assert Tokenizer.train_char(["abcd"], vocab_size=268).vocab_size == 268


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_save_load_equal_encodings(tmp_path, kind, bpe, char):
    tok = bpe if kind == "bpe" else char
    path = tok.save(tmp_path / "tok" / "tokenizer.json")
    assert path == tmp_path / "tok" / "tokenizer.json"
    assert not [p for p in path.parent.iterdir() if p.name != "tokenizer.json"]  # no temp files left
    for loaded in (Tokenizer.load(path), Tokenizer.load(path.parent)):
        assert loaded.kind == kind
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.special_ids == tok.special_ids
        texts = NASTY + random_strings(seed=2, n=50)
        assert loaded.encode_batch(texts) == tok.encode_batch(texts)
    # The file is a plain Hugging Face tokenizer.json.
    assert HFTokenizer.from_file(str(path)).encode("The cat").ids == tok.encode("The cat")


def test_save_into_directory(tmp_path, char):
    path = char.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    assert Tokenizer.load(tmp_path).encode("hello") == char.encode("hello")


def test_load_errors(tmp_path):
    with pytest.raises(LmlabError, match="tokenizer file not found"):
        Tokenizer.load(tmp_path / "missing.json")
    with pytest.raises(LmlabError, match="tokenizer file not found"):
        Tokenizer.load(tmp_path)  # a directory without tokenizer.json
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": ', encoding="utf-8")
    with pytest.raises(LmlabError, match=r"tokenizer\.json is not a valid tokenizer\.json"):
        Tokenizer.load(bad)
    bad.write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(LmlabError, match="not a valid tokenizer.json"):
        Tokenizer.load(bad)


def test_load_plain_hf_tokenizer(tmp_path):
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(CORPUS, trainer=trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path)
    assert tok.kind == "bpe"
    assert tok.bos_id is None and tok.pad_id is None and tok.mask_id is None and tok.end_of_turn_id is None
    assert tok.eos_id == hf.token_to_id("<|endoftext|>")
    assert tok.special_ids == {"<|eos|>": tok.eos_id}
    with pytest.raises(LmlabError, match="no <|bos|>"):
        tok.encode("x", add_bos=True)
    assert tok.encode("The cat", add_eos=True)[-1] == tok.eos_id


def test_config_docs_and_validation():
    docs = field_docs(TokenizerConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(TokenizerConfig)}
    assert all(docs.values())
    with pytest.raises(LmlabError, match="'kind' must be 'bpe' or 'char', got 'wordpiece'"):
        from_dict(TokenizerConfig, {"kind": "wordpiece"})


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_train_tokenizer_entry_point(tmp_path, kind):
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS), encoding="utf-8")
    out = tmp_path / "tok" / "tokenizer.json"
    stats = train_tokenizer(TokenizerConfig(input=str(src), out=str(out), kind=kind, vocab_size=300 if
                                            kind == "bpe" else 1024))
    assert out.is_file()
    tok = Tokenizer.load(out)
    assert stats["kind"] == kind == tok.kind
    assert stats["vocab_size"] == tok.vocab_size
    assert stats["n_docs"] == len(CORPUS)
    assert stats["chars"] == sum(len(t) for t in CORPUS)
    assert stats["tokens"] == sum(len(tok.encode(t)) for t in CORPUS)
    assert stats["chars_per_token"] == pytest.approx(stats["chars"] / stats["tokens"], abs=1e-3)
    if kind == "char":
        assert stats["chars_per_token"] == 1.0
    else:
        assert stats["chars_per_token"] > 1.5


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="shared tinyshakespeare.txt not available")
def test_tinyshakespeare_char_vocab_and_bpe_round_trip():
    text = SHAKESPEARE.read_text(encoding="utf-8")
    char = Tokenizer.train_char([text])
    n_chars = len(set(text))
    assert n_chars == 65
    assert char.vocab_size == len(SPECIAL_TOKENS) + 65 + 256
    assert char.id_to_token(len(SPECIAL_TOKENS)) == "\n"
    bpe = Tokenizer.train_bpe([text], vocab_size=1024)
    sample = text[:20000]
    assert bpe.decode(bpe.encode(sample)) == sample
    assert len(bpe.encode(sample)) < len(sample) / 2


# --- long documents go to Rust in pieces, with exactly the ids of one call -------------------------


def long_text(seed: int, chars: int) -> str:
    """NASTY, random and plain strings joined by varied whitespace, at least `chars` long."""
    rng = random.Random(seed)
    pool = NASTY + random_strings(seed, 200) + CORPUS[:3]
    parts, n = [], 0
    while n < chars:
        s = rng.choice(pool) + rng.choice([" ", "  ", "\n", "\r\n", "\t", "\n\n ", ""])
        parts.append(s)
        n += len(s)
    return "".join(parts)


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_long_texts_are_encoded_in_pieces_with_the_ids_of_one_call(kind, bpe, char, monkeypatch):
    from lmlab.data import tokenizer as tk

    tok = {"bpe": bpe, "char": char}[kind]
    monkeypatch.setattr(tk, "PIECE_CHARS", 4096)
    monkeypatch.setattr(tk, "BATCH_CHARS", 16384)
    texts = [long_text(1, 60_000), "short", "", long_text(2, 30_000) + "x" * 9000]
    calls = []
    real = tok._encode_batch
    monkeypatch.setattr(tok, "_encode_batch", lambda b, **kw: calls.append(sum(map(len, b))) or real(b, **kw))
    got = tok.encode_batch(texts, add_eos=True)
    assert max(calls) < 16384 + 4096 + 9000 and len(calls) > 5  # bounded calls, not one call per corpus
    assert got == [tok.hf.encode(t).ids + [tok.eos_id] for t in texts]
    assert tok.encode(texts[0]) == tok.hf.encode(texts[0]).ids


def test_pieces_cut_only_between_a_non_space_and_a_space():
    from lmlab.data.tokenizer import pieces

    text = long_text(3, 20_000)
    got = list(pieces(text, 500))
    assert "".join(got) == text and len(got) > 10
    for a, b in zip(got, got[1:]):
        assert len(a) >= 500 and not a[-1].isspace() and b[0].isspace()
    assert list(pieces("x" * 2000, 500)) == ["x" * 2000]  # nowhere to cut: one piece


def test_tokenizers_that_change_at_a_cut_are_sent_whole(tmp_path):
    from lmlab.data.tokenizer import cuts_at_spaces

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Metaspace()  # adds a "▁" at the start of every text it is given
    hf.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(vocab_size=300, show_progress=False))
    assert not cuts_at_spaces(json.loads(hf.to_str()))
    spec = json.loads(Tokenizer.train_bpe(CORPUS, vocab_size=300).hf.to_str())
    assert cuts_at_spaces(spec)
    spec["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = True
    assert not cuts_at_spaces(spec)
