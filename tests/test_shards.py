"""Token shards and samplers: bytes match meta, splits, and batches that are pure functions of the step."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from lmlab.config import field_docs, from_dict
from lmlab.data.shards import EpochSampler, PrepareConfig, RandomWindowSampler, TokenData, prepare
from lmlab.data.tokenizer import Tokenizer
from lmlab.errors import LmlabError

DOCS = [f"Person {i} was born in city {i % 7} and works at company {i % 5}." for i in range(40)]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return Tokenizer.train_bpe(DOCS, vocab_size=300).save(d / "tokenizer.json")


def write_docs(path, docs):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    return path


def test_prepare_documents_split(tmp_path, tok_path):
    src = write_docs(tmp_path / "c.jsonl", DOCS)
    out = tmp_path / "data"
    meta = prepare(PrepareConfig(input=str(src), tokenizer=str(tok_path), out=str(out), val_fraction=0.25))
    tok = Tokenizer.load(tok_path)
    assert meta["split"] == "documents"
    assert meta["dtype"] == "uint16"
    assert meta["splits"]["train"]["n_documents"] == 30 and meta["splits"]["val"]["n_documents"] == 10
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["tokenizer"]["sha256"] and (out / "tokenizer.json").read_bytes() == tok_path.read_bytes()

    train, val = TokenData.open(out, "train"), TokenData.open(out, "val")
    assert isinstance(train, np.memmap) and not train.flags.writeable
    assert (out / "train.bin").stat().st_size == 2 * meta["splits"]["train"]["n_tokens"] == 2 * len(train)
    assert len(val) == meta["splits"]["val"]["n_tokens"]
    # Every document appears in exactly one split, followed by eos, and the train order is the input order.
    texts = {}
    for split, arr in (("train", train), ("val", val)):
        ids = arr.tolist()
        assert ids[-1] == tok.eos_id
        pieces, cur = [], []
        for i in ids:
            if i == tok.eos_id:
                pieces.append(tok.decode(cur))
                cur = []
            else:
                cur.append(i)
        texts[split] = pieces
    assert sorted(texts["train"] + texts["val"]) == sorted(DOCS)
    assert texts["train"] == [d for d in DOCS if d in set(texts["train"])]
    # The held-out set depends on the seed, deterministically.
    prepare(PrepareConfig(input=str(src), tokenizer=str(tok_path), out=str(tmp_path / "d2"),
                          val_fraction=0.25))
    assert np.array_equal(TokenData.open(tmp_path / "d2", "val"), val)
    prepare(PrepareConfig(input=str(src), tokenizer=str(tok_path), out=str(tmp_path / "d3"),
                          val_fraction=0.25, seed=7))
    val7 = TokenData.open(tmp_path / "d3", "val").tolist()
    val7_docs = set(tok.decode(val7).split("<|eos|>")) - {""}
    assert len(val7_docs) == 10 and val7_docs != set(texts["val"])


def test_prepare_tail_split_single_document(tmp_path, tok_path):
    text = " ".join(DOCS)
    src = tmp_path / "one.txt"
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "data"
    meta = prepare(PrepareConfig(input=str(src), tokenizer=str(tok_path), out=str(out), val_fraction=0.1))
    assert meta["split"] == "tail"
    tok = Tokenizer.load(tok_path)
    full = tok.encode(text, add_eos=True)
    train, val = TokenData.open(out, "train"), TokenData.open(out, "val")
    assert train.tolist() + val.tolist() == full
    assert len(val) == round(0.1 * len(full))
    assert meta["splits"]["train"]["n_documents"] == meta["splits"]["val"]["n_documents"] == 1


def test_prepare_explicit_tail_on_many_documents(tmp_path, tok_path):
    src = write_docs(tmp_path / "c.jsonl", DOCS)
    meta = prepare(PrepareConfig(input=str(src), tokenizer=str(tok_path), out=str(tmp_path / "d"),
                                 split="tail", val_fraction=0.2))
    tok = Tokenizer.load(tok_path)
    full = [i for ids in tok.encode_batch(DOCS, add_eos=True) for i in ids]
    got = TokenData.open(tmp_path / "d", "train").tolist() + TokenData.open(tmp_path / "d", "val").tolist()
    assert got == full
    assert meta["splits"]["train"]["n_documents"] + meta["splits"]["val"]["n_documents"] in (40, 41)


def test_prepare_errors(tmp_path, tok_path):
    src = tmp_path / "one.txt"
    src.write_text("just one document", encoding="utf-8")
    with pytest.raises(LmlabError, match="at least 2 documents"):
        prepare(PrepareConfig(input=str(src), tokenizer=str(tok_path), out=str(tmp_path / "d"),
                              split="documents"))
    with pytest.raises(LmlabError, match="'split' must be"):
        from_dict(PrepareConfig, {"split": "random"})
    with pytest.raises(LmlabError, match=r"'val_fraction' must be in \[0, 1\)"):
        from_dict(PrepareConfig, {"val_fraction": 1.5})
    with pytest.raises(LmlabError, match="tokenizer file not found"):
        prepare(PrepareConfig(input=str(src), tokenizer=str(tmp_path / "nope.json"), out=str(tmp_path / "d")))


def test_prepare_zero_val_fraction(tmp_path, tok_path):
    src = write_docs(tmp_path / "c.jsonl", DOCS)
    meta = prepare(PrepareConfig(input=str(src), tokenizer=str(tok_path), out=str(tmp_path / "d"),
                                 val_fraction=0.0))
    assert meta["splits"]["val"] == {"file": "val.bin", "n_tokens": 0, "n_documents": 0}
    assert len(TokenData.open(tmp_path / "d", "val")) == 0


def test_config_docs():
    docs = field_docs(PrepareConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(PrepareConfig)} and all(docs.values())


def make_shard(tmp_path, tokens, dtype="uint16"):
    arr = np.asarray(tokens, dtype=dtype)
    arr.tofile(tmp_path / "train.bin")
    meta = {"dtype": dtype, "vocab_size": 70000 if dtype == "uint32" else 300,
            "splits": {"train": {"file": "train.bin", "n_tokens": len(arr), "n_documents": 1}}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return arr


def test_open_errors(tmp_path):
    with pytest.raises(LmlabError, match="no meta.json"):
        TokenData.open(tmp_path, "train")
    make_shard(tmp_path, range(100))
    assert TokenData.open(tmp_path, "train").tolist() == list(range(100))
    with pytest.raises(LmlabError, match="split 'val' not in"):
        TokenData.open(tmp_path, "val")
    with open(tmp_path / "train.bin", "r+b") as f:
        f.truncate(150)
    with pytest.raises(LmlabError, match=r"train\.bin holds 150 bytes but meta\.json says 100 uint16 tokens"):
        TokenData.open(tmp_path, "train")
    (tmp_path / "train.bin").unlink()
    with pytest.raises(LmlabError, match="missing"):
        TokenData.open(tmp_path, "train")
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(LmlabError, match="not valid JSON"):
        TokenData.open(tmp_path, "train")


def test_uint32_shard(tmp_path):
    make_shard(tmp_path, [0, 65535, 65536, 69999], dtype="uint32")
    data = TokenData.open(tmp_path, "train")
    assert data.dtype == np.uint32 and data.tolist() == [0, 65535, 65536, 69999]


def test_random_sampler_shift_shape_and_range(tmp_path):
    make_shard(tmp_path, np.arange(1000) % 300)
    data = TokenData.open(tmp_path, "train")
    s = RandomWindowSampler(data, block_size=16, batch_size=8, seed=3)
    x, y = s.batch(0)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])
    starts = np.concatenate([s.starts(k) for k in range(500)])
    assert starts.min() == 0 and starts.max() == 1000 - 16 - 1  # the whole range is reachable
    for k in range(5):
        x, y = s.batch(k)
        for row, st in zip(range(8), s.starts(k)):
            assert x[row].tolist() == (np.arange(st, st + 16) % 300).tolist()
            assert y[row].tolist() == (np.arange(st + 1, st + 17) % 300).tolist()


def test_random_sampler_is_pure_function_of_step():
    data = np.arange(5000, dtype=np.uint16)
    a = RandomWindowSampler(data, 32, 4, seed=11)
    first5 = a.batch(5)
    a.batch(3)
    a.batch(100)
    assert all(torch.equal(u, v) for u, v in zip(a.batch(5), first5))
    b = RandomWindowSampler(data, 32, 4, seed=11)  # a fresh sampler, as after a resume
    assert all(torch.equal(u, v) for u, v in zip(b.batch(5), first5))
    assert not torch.equal(a.batch(6)[0], first5[0])
    assert not torch.equal(RandomWindowSampler(data, 32, 4, seed=12).batch(5)[0], first5[0])


@pytest.mark.parametrize("n_tokens,block,batch", [(1001, 10, 4), (1001, 10, 7), (97, 8, 32)])
def test_epoch_sampler_covers_every_window_once_per_epoch(n_tokens, block, batch):
    data = np.arange(n_tokens, dtype=np.uint32)
    s = EpochSampler(data, block, batch, seed=5)
    n_windows = (n_tokens - 1) // block
    assert s.n_windows == n_windows
    assert s.steps_per_epoch == -(-n_windows // batch)
    steps = -(-3 * n_windows // batch)
    starts = np.concatenate([s.batch(k)[0][:, 0].numpy() for k in range(steps)])
    epochs = [starts[e * n_windows : (e + 1) * n_windows] for e in range(3)]
    for e in epochs:
        assert sorted(e.tolist()) == list(range(0, n_windows * block, block))
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch
    x, y = s.batch(1)
    assert torch.equal(y, x + 1)
    assert s.epoch_of(0) == 0 and s.epoch_of(steps - 1) == (steps - 1) * batch // n_windows


def test_epoch_sampler_is_pure_function_of_step():
    data = np.arange(10_000, dtype=np.uint16)
    a = EpochSampler(data, 16, 8, seed=1)
    first = a.batch(200)
    for k in (0, 3, 77, 500, 1000, 3):
        a.batch(k)
    assert torch.equal(a.batch(200)[0], first[0])
    assert torch.equal(EpochSampler(data, 16, 8, seed=1).batch(200)[0], first[0])


def test_block_too_large(tmp_path):
    make_shard(tmp_path, range(50))
    data = TokenData.open(tmp_path, "train")
    for cls in (RandomWindowSampler, EpochSampler):
        msg = r"block size 50 is larger than the data \(50 tokens in .*train\.bin\)"
        with pytest.raises(LmlabError, match=msg):
            cls(data, block_size=50, batch_size=2, seed=0)
        cls(data, block_size=49, batch_size=2, seed=0).batch(0)  # block + 1 == tokens is the edge that fits
