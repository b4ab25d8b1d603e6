"""Token shards on disk and the samplers that cut training batches from them.

`prepare` tokenises a text input once and writes, into one directory:

- `train.bin`, `val.bin`: every token of the split as one flat little-endian
  `uint16` array (`uint32` when the vocabulary exceeds 65,536), each document
  followed by the eos token, so a model learns where documents end;
- `meta.json`: dtype, vocab size, eos id, token and document counts per split,
  the tokenizer's path and sha256, and the source path;
- `tokenizer.json`: a copy of the tokenizer used, so the folder is self-contained.

Shards are read back as read-only `np.memmap`s (`TokenData.open`), so a corpus
larger than memory costs nothing to open and the OS page cache is the loader.

The samplers are pure functions of the step: batch `k` depends only on
(data, block, batch, seed, k), never on what was drawn before. A resumed run
therefore sees exactly the batches an uninterrupted run would, and the only
data state a checkpoint must hold is the step number.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.data.text import load_documents
from lmlab.data.tokenizer import Tokenizer
from lmlab.errors import LmlabError
from lmlab.io import confined, sha256_file, write_json
from lmlab.rundir import output_dir

SPLITS = ("train", "val")
META = "meta.json"
FORMAT = "lmlab-tokens"
OWN_FILES = ("train.bin", "val.bin", "tokenizer.json", META)
"""What `prepare` writes, the header last: a directory without it reads as not prepared."""


@dataclass
class PrepareConfig:
    """Tokenise a text input into train/val token shards."""

    input: str = "runs/world/pretrain.jsonl"
    """Text to tokenise: a .txt file, a .jsonl file, or a directory of them."""
    field: str = "text"
    """Field holding the document text in .jsonl input."""
    tokenizer: str = "runs/tokenizer/tokenizer.json"
    """The tokenizer.json to use (or a directory holding one)."""
    out: str = "runs/data"
    """Output directory for train.bin, val.bin, meta.json and a copy of tokenizer.json."""
    val_fraction: float = 0.1
    """Fraction held out for validation (of documents, or of the token stream for 'tail')."""
    split: str = "auto"
    """'documents' (hold out whole shuffled documents), 'tail' (the last tokens, nanoGPT-style),
    or 'auto' (tail for a single document, documents otherwise)."""
    seed: int = 1337
    """Seed for choosing the held-out documents."""
    force: bool = False
    """Write into an output directory that holds other files too (only prepare's own files are replaced)."""

    def __post_init__(self) -> None:
        if self.split not in ("auto", "tail", "documents"):
            raise LmlabError(f"config key 'split' must be 'auto', 'tail' or 'documents', got {self.split!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise LmlabError(f"config key 'val_fraction' must be in [0, 1), got {self.val_fraction}")


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a `vocab_size` vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def _tokenize(tok: Any, docs: list[str], dtype: np.dtype, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """All documents as one flat array (eos after each) and each document's length in tokens."""
    parts, lengths = [], []
    for i in range(0, len(docs), chunk):
        encs = tok.encode_batch(docs[i : i + chunk], add_eos=True)
        lens = [len(e) for e in encs]
        parts.append(np.fromiter(itertools.chain.from_iterable(encs), dtype=dtype, count=sum(lens)))
        lengths.extend(lens)
    return np.concatenate(parts), np.asarray(lengths, dtype=np.int64)


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Tokenise `cfg.input`, write the shards and meta.json into `cfg.out`, return the meta."""
    PrepareConfig.__post_init__(cfg)
    tok_path = Path(cfg.tokenizer)
    if tok_path.is_dir():
        tok_path = tok_path / "tokenizer.json"
    tok = Tokenizer.load(tok_path)
    if tok.eos_id is None:
        raise LmlabError(f"tokenizer {tok_path} has no end-of-sequence token to separate documents")
    docs = load_documents(cfg.input, cfg.field)
    n_docs = len(docs)
    mode = cfg.split if cfg.split != "auto" else ("tail" if n_docs == 1 else "documents")
    dtype = dtype_for(tok.vocab_size)
    tokens, lengths = _tokenize(tok, docs, dtype)

    if mode == "tail":
        n_val = int(round(len(tokens) * cfg.val_fraction))
        cut = len(tokens) - n_val
        if cut < 1:
            raise LmlabError(f"val_fraction {cfg.val_fraction} leaves no training tokens in {cfg.input}")
        starts = np.cumsum(lengths) - lengths
        split_tokens = {"train": tokens[:cut], "val": tokens[cut:]}
        split_docs = {"train": int((starts < cut).sum()), "val": int((starts + lengths > cut).sum())}
    else:
        n_val = int(round(n_docs * cfg.val_fraction))
        if cfg.val_fraction > 0:
            if n_docs < 2:
                raise LmlabError(
                    f"split 'documents' needs at least 2 documents, {cfg.input} has {n_docs}; use split=tail"
                )
            n_val = min(max(n_val, 1), n_docs - 1)
        perm = np.random.default_rng(cfg.seed % 2**64).permutation(n_docs)
        is_val = np.zeros(n_docs, dtype=bool)
        is_val[perm[:n_val]] = True
        token_is_val = np.repeat(is_val, lengths)
        split_tokens = {"train": tokens[~token_is_val], "val": tokens[token_is_val]}
        split_docs = {"train": n_docs - n_val, "val": n_val}

    meta = {
        "format": FORMAT,
        "version": 1,
        "dtype": dtype.name,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "bos_id": tok.bos_id,
        "splits": {
            s: {"file": f"{s}.bin", "n_tokens": int(len(split_tokens[s])), "n_documents": split_docs[s]}
            for s in SPLITS
        },
        "split": mode,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "source": str(cfg.input),
        "n_documents": n_docs,
        "n_chars": sum(len(d) for d in docs),
        "tokenizer": {
            "path": str(tok_path),
            "sha256": sha256_file(tok_path),
            "kind": tok.kind,
            "copy": "tokenizer.json",
        },
    }
    with output_dir(cfg.out, "prepare", OWN_FILES, force=cfg.force, header_format=FORMAT) as tmp:
        for split, arr in split_tokens.items():
            np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<")).tofile(tmp / f"{split}.bin")
        (tmp / "tokenizer.json").write_bytes(tok_path.read_bytes())
        write_json(tmp / META, meta)
    return meta


class TokenData:
    """Read side of `prepare`'s output directory."""

    @staticmethod
    def read_meta(directory: str | Path) -> dict[str, Any]:
        path = Path(directory) / META
        if not path.is_file():
            raise LmlabError(f"no {META} in {directory}: prepare the data first (lmlab prepare)")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise LmlabError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(meta, dict) or "dtype" not in meta or "splits" not in meta:
            raise LmlabError(f"{path} is not an lmlab token header (expected 'dtype' and 'splits' keys)")
        return meta

    @staticmethod
    def open(directory: str | Path, split: str = "train") -> np.memmap:
        """The tokens of `split` as a read-only memmap (an empty array if the split has none)."""
        meta = TokenData.read_meta(directory)
        info = meta["splits"].get(split)
        if info is None:
            have = ", ".join(meta["splits"])
            raise LmlabError(f"split '{split}' not in {Path(directory) / META}; it has: {have}")
        try:
            dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        except TypeError:
            raise LmlabError(f"{Path(directory) / META}: unknown dtype {meta['dtype']!r}") from None
        path = confined(directory, info.get("file", f"{split}.bin"), str(Path(directory) / META))
        if not path.is_file():
            raise LmlabError(f"token shard {path} is missing (listed in {META})")
        n = int(info["n_tokens"])
        size = path.stat().st_size
        if size != n * dtype.itemsize:
            raise LmlabError(
                f"token shard {path} holds {size} bytes but {META} says {n} {dtype.name} tokens "
                f"({n * dtype.itemsize} bytes): the shard is truncated or stale; prepare the data again"
            )
        if n == 0:
            return np.empty(0, dtype=dtype)  # type: ignore[return-value]
        return np.memmap(path, dtype=dtype, mode="r", shape=(n,))

    @staticmethod
    def max_id(tokens: np.ndarray, chunk: int = 1 << 22) -> int:
        """The largest token id (-1 for no tokens), a chunk at a time: a big memmap is never one big temporary."""
        top = -1
        for i in range(0, len(tokens), chunk):
            top = max(top, int(tokens[i : i + chunk].max()))
        return top

    @staticmethod
    def check_ids(directory: str | Path, splits: dict[str, np.ndarray]) -> None:
        """Every id must be below the header's vocab_size, which sizes the model's embedding: a larger id
        fails deep inside training on a CPU, and on a GPU may read out of bounds."""
        meta = TokenData.read_meta(directory)
        vocab = meta.get("vocab_size")
        if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
            raise LmlabError(f"{Path(directory) / META}: 'vocab_size' must be a positive integer, got {vocab!r}")
        for split, tokens in splits.items():
            top = TokenData.max_id(tokens)
            if top >= vocab:
                raise LmlabError(
                    f"token shard for split '{split}' in {directory} holds token id {top}, but {META} says "
                    f"vocab_size {vocab} (ids must be below it): the shards and their header disagree; "
                    "prepare the data again with the tokenizer the header names"
                )


def _check_tokens(data: Any, block_size: int, batch_size: int) -> tuple[np.ndarray, str]:
    name = str(getattr(data, "filename", None) or "<array>")
    arr = np.asarray(data)  # drops the memmap subclass: cheaper indexing, same memory
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise LmlabError(f"token data {name} must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    if block_size < 1 or batch_size < 1:
        raise LmlabError(f"block_size and batch_size must be positive, got {block_size} and {batch_size}")
    if block_size + 1 > len(arr):
        raise LmlabError(f"block size {block_size} is larger than the data ({len(arr)} tokens in {name})")
    return arr, name


class _WindowSampler:
    """Shared gather: windows of block+1 tokens, x = first block, y = last block."""

    def __init__(self, data: Any, block_size: int, batch_size: int, seed: int = 0):
        self.data, self.name = _check_tokens(data, block_size, batch_size)
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed % 2**64
        self._offsets = np.arange(block_size + 1)

    def starts(self, step: int) -> np.ndarray:
        raise NotImplementedError

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors of shape (batch, block); y[:, t] is the token after x[:, t]."""
        w = self.data[self.starts(step)[:, None] + self._offsets].astype(np.int64)
        x, y = np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])
        return torch.from_numpy(x), torch.from_numpy(y)


class RandomWindowSampler(_WindowSampler):
    """Windows starting uniformly at random in [0, len - block - 1].

    The starts come from a generator seeded by (seed, step), so any step's
    batch can be recomputed without replaying the ones before it.
    """

    def starts(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.data) - self.block_size, size=self.batch_size)


class EpochSampler(_WindowSampler):
    """Every non-overlapping window exactly once per epoch, in a seeded order per epoch.

    Window `w` is tokens [w*block, w*block + block] (x and its shifted y). The
    windows of all epochs form one stream (epoch e is a permutation seeded by
    (seed, e)) that is cut into full batches, so a batch may straddle two
    epochs and no window is ever dropped or repeated within an epoch.
    """

    def __init__(self, data: Any, block_size: int, batch_size: int, seed: int = 0):
        super().__init__(data, block_size, batch_size, seed)
        self.n_windows = (len(self.data) - 1) // block_size
        """Windows per epoch."""
        self._perms: dict[int, np.ndarray] = {}

    @property
    def steps_per_epoch(self) -> int:
        """Steps to see every window at least once (the last may start the next epoch)."""
        return math.ceil(self.n_windows / self.batch_size)

    def epoch_of(self, step: int) -> int:
        """The epoch of the first window of batch `step`."""
        return step * self.batch_size // self.n_windows

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) >= 4:  # a small cache: steps move forward, epochs change rarely
                self._perms.pop(next(iter(self._perms)))
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perms[epoch] = perm
        return perm

    def windows(self, step: int) -> np.ndarray:
        """The window indices of batch `step`."""
        g = step * self.batch_size + np.arange(self.batch_size)
        epochs, pos = np.divmod(g, self.n_windows)
        if epochs[0] == epochs[-1]:
            return self._perm(int(epochs[0]))[pos]
        return np.array([self._perm(int(e))[p] for e, p in zip(epochs, pos)])

    def starts(self, step: int) -> np.ndarray:
        return self.windows(step) * self.block_size
