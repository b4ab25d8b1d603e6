"""The tokenizer: Hugging Face `tokenizers` underneath, lmlab's special tokens on top.

Two kinds are trained here, both lossless (`decode(encode(s)) == s` for any
unicode string):

- `bpe`: byte-level BPE. Text is split into GPT-2-style words (no prefix space
  is added, so a document's first word is not silently changed) and digits are
  split one by one, so numbers are spelled digit by digit and arithmetic does
  not hinge on which digit groups happened to be merged. Every byte is in the
  alphabet, so nothing is ever unknown.
- `char`: one token per character seen in training (ids in sorted character
  order, after the specials), plus 256 byte-fallback tokens `<0x00>..<0xFF>` at
  the end so a character never seen in training is still encoded exactly (as
  its UTF-8 bytes) instead of being dropped.

The special tokens come first in the vocabulary, always in the same order, so
their ids are stable across tokenizers: see `SPECIAL_TOKENS`.

`tokenizer.json` is a plain Hugging Face file (it loads in `tokenizers` and
`transformers` as is); the kind is read back from its structure, so nothing
else has to travel with it. A foreign `tokenizer.json` loads too: specials it
lacks are simply `None` (a few common names such as `<|endoftext|>` and `</s>`
stand in for bos/eos/pad/mask).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from lmlab.data.text import load_documents
from lmlab.errors import LmlabError
from lmlab.io import write_text

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",
    "<|eos|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end_of_turn|>",
    "<|mask|>",
)
"""lmlab's special tokens; they take ids 0..7 in this order in every trained tokenizer."""

# Names used by other tokenizers for the same roles (only for foreign tokenizer.json files).
_ALIASES: dict[str, tuple[str, ...]] = {
    "<|bos|>": ("<|begin_of_text|>", "<s>", "[CLS]"),
    "<|eos|>": ("<|endoftext|>", "<|end_of_text|>", "</s>", "[SEP]"),
    "<|pad|>": ("<pad>", "[PAD]"),
    "<|mask|>": ("<mask>", "[MASK]"),
}

N_BYTES = 256
BPE_MIN_VOCAB = N_BYTES + len(SPECIAL_TOKENS)
"""The smallest byte-level BPE vocabulary: every byte plus the specials."""


def _byte_token(b: int) -> str:
    return f"<0x{b:02X}>"


def _specials_as_added() -> list[AddedToken]:
    return [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]


PIECE_CHARS = 1 << 16
"""Long texts reach the Rust tokenizer in pieces of about this many characters (see `pieces`)."""
BATCH_CHARS = 1 << 20
"""Characters per call of the Rust tokenizer: bounds its memory, still many pieces to spread over threads."""
_CUT = re.compile(r"\S(?=\s)")


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in pieces of at least `size` characters (the last may be shorter), each cut just before a
    whitespace character that follows a non-whitespace one. A text with no such place stays whole."""
    start = 0
    while len(text) - start > size:
        m = _CUT.search(text, start + size)
        if m is None:
            break
        yield text[start:m.end()]
        start = m.end()
    yield text[start:]


def cuts_at_spaces(spec: dict[str, Any]) -> bool:
    """Whether encoding a text in `pieces` gives exactly the ids of encoding it whole. It does for lmlab's two
    kinds and GPT-2-style byte-level BPE: no normalizer, no added token that eats or holds whitespace, and
    either no pre-tokenizer and no merges (a token per character) or only GPT-2's byte-level regex and digit
    splitting, none of whose words holds a non-space followed by a space. Other tokenizers are sent whole."""
    added = spec.get("added_tokens") or []
    if spec.get("normalizer") is not None or any(
            t.get("lstrip") or t.get("rstrip") or any(c.isspace() for c in t.get("content", "")) for t in added):
        return False
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer")
    if pre is None:
        return model.get("type") == "BPE" and not model.get("merges")
    parts = (pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else [pre]
    if not all(p.get("type") in ("ByteLevel", "Digits") for p in parts):
        return False
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    return bool(byte_level) and all(p.get("use_regex", True) and not p.get("add_prefix_space") for p in byte_level)


def _infer_kind(spec: dict[str, Any]) -> str:
    """'char' or 'bpe' for files this module writes; the model type otherwise."""
    model = spec.get("model") or {}
    mtype = str(model.get("type", "unknown")).lower()
    if mtype == "bpe" and model.get("byte_fallback") and not model.get("merges"):
        return "char"
    return mtype


class Tokenizer:
    """A trained or loaded tokenizer; see the module docstring for the two kinds."""

    def __init__(self, hf: HFTokenizer, kind: str | None = None):
        # A foreign tokenizer.json may carry padding/truncation settings (e.g. pad every text to 128);
        # lengths are the caller's business here, so encode() always returns exactly the text's tokens.
        hf.no_padding()
        hf.no_truncation()
        self.hf = hf
        """The underlying `tokenizers.Tokenizer` (for anything not wrapped here)."""
        self.kind = kind or _infer_kind(json.loads(hf.to_str()))
        """'bpe' or 'char' for lmlab tokenizers; the HF model type for foreign ones."""
        self.special_ids: dict[str, int] = {}
        """Special token name (as in `SPECIAL_TOKENS`) -> id, for those this vocabulary has."""
        for name in SPECIAL_TOKENS:
            for candidate in (name, *_ALIASES.get(name, ())):
                tid = hf.token_to_id(candidate)
                if tid is not None:
                    self.special_ids[name] = tid
                    break
        self._encode_batch = getattr(hf, "encode_batch_fast", hf.encode_batch)

    # ---- special ids -------------------------------------------------------------------------
    @property
    def bos_id(self) -> int | None:
        return self.special_ids.get("<|bos|>")

    @property
    def eos_id(self) -> int | None:
        return self.special_ids.get("<|eos|>")

    @property
    def pad_id(self) -> int | None:
        return self.special_ids.get("<|pad|>")

    @property
    def mask_id(self) -> int | None:
        return self.special_ids.get("<|mask|>")

    @property
    def end_of_turn_id(self) -> int | None:
        return self.special_ids.get("<|end_of_turn|>")

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(i)

    # ---- training ----------------------------------------------------------------------------
    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
        """Byte-level BPE with single-digit splitting, `vocab_size` tokens at most.

        The trainer may stop short of `vocab_size` when the text has too few
        pairs occurring `min_frequency` times; the real size is `vocab_size`.
        """
        if vocab_size < BPE_MIN_VOCAB:
            raise LmlabError(
                f"vocab_size {vocab_size} is too small for byte-level BPE: the minimum is "
                f"{BPE_MIN_VOCAB} ({N_BYTES} bytes + {len(SPECIAL_TOKENS)} special tokens)"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=_specials_as_added(),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf, "bpe")

    @classmethod
    def train_char(cls, texts: Iterable[str], vocab_size: int | None = None) -> Tokenizer:
        """One token per distinct character seen, plus 256 byte-fallback tokens.

        `vocab_size`, if given, is an upper bound: an error if the specials,
        characters and fallback bytes need more.
        """
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        needed = len(SPECIAL_TOKENS) + len(chars) + N_BYTES
        if vocab_size is not None and vocab_size < needed:
            raise LmlabError(
                f"vocab_size {vocab_size} is too small for a char tokenizer of this text: it needs "
                f"{needed} ({len(SPECIAL_TOKENS)} specials + {len(chars)} characters + {N_BYTES} bytes)"
            )
        vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        for c in sorted(chars):
            vocab.setdefault(c, len(vocab))
        for b in range(N_BYTES):
            vocab.setdefault(_byte_token(b), len(vocab))
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
        hf.add_special_tokens(_specials_as_added())
        hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        return cls(hf, "char")

    # ---- encode / decode ---------------------------------------------------------------------
    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_id is None:
                raise LmlabError("this tokenizer has no <|bos|> token; cannot add_bos")
            ids.insert(0, self.bos_id)
        if add_eos:
            if self.eos_id is None:
                raise LmlabError("this tokenizer has no <|eos|> token; cannot add_eos")
            ids.append(self.eos_id)
        return ids

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False, template: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings in `text` become their ids. `template` applies the
        file's own post-processor, if it has one (a BERT tokenizer's `[CLS] ... [SEP]`)."""
        if len(text) > PIECE_CHARS and not template and self._cuts_at_spaces:
            return self._wrap(self._encode_pieces([text])[0], add_bos, add_eos)
        ids = self.hf.encode(text, add_special_tokens=template).ids
        return self._wrap(ids, add_bos, add_eos)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False,
                     add_eos: bool = False, template: bool = False) -> list[list[int]]:
        """`encode` over many texts at once, in parallel in Rust; long texts in pieces where that is exact."""
        if not template and self._cuts_at_spaces:
            return [self._wrap(ids, add_bos, add_eos) for ids in self._encode_pieces(list(texts))]
        encs = self._encode_batch(list(texts), add_special_tokens=template)
        return [self._wrap(e.ids, add_bos, add_eos) for e in encs]

    @cached_property
    def _cuts_at_spaces(self) -> bool:
        return cuts_at_spaces(json.loads(self.hf.to_str()))

    def _encode_pieces(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids, the texts cut into pieces (`pieces`) and sent to Rust about BATCH_CHARS at a time:
        Rust keeps ~100 bytes of bookkeeping per token of a call, so a 10 MB document sent whole took over
        a gigabyte (docs/benchmarks.md)."""
        out: list[list[int]] = [[] for _ in texts]
        owners: list[int] = []
        batch: list[str] = []
        size = 0
        for i, text in enumerate(texts):
            for piece in pieces(text, PIECE_CHARS):
                owners.append(i)
                batch.append(piece)
                size += len(piece)
                if size >= BATCH_CHARS:
                    self._encode_into(out, owners, batch)
                    owners, batch, size = [], [], 0
        if batch:
            self._encode_into(out, owners, batch)
        return out

    def _encode_into(self, out: list[list[int]], owners: list[int], batch: list[str]) -> None:
        for i, enc in zip(owners, self._encode_batch(batch, add_special_tokens=False)):
            out[i].extend(enc.ids)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids` (a list, numpy array or 1-D tensor); exact inverse of `encode`."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()  # type: ignore[union-attr]
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def with_tokens(self, tokens: Sequence[str]) -> tuple[Tokenizer, list[str]]:
        """A copy with the given special tokens added where missing (new ids after the existing ones), and
        the tokens it added: how a foreign tokenizer gets lmlab's chat markers."""
        missing = [t for t in tokens if self.hf.token_to_id(t) is None]
        if not missing:
            return self, []
        hf = HFTokenizer.from_str(self.hf.to_str())
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        return Tokenizer(hf, self.kind), missing

    # ---- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json` atomically (to `path`, or into it if it is a directory)."""
        p = Path(path)
        if p.is_dir() or p.suffix != ".json":
            p = p / "tokenizer.json"
        write_text(p, self.hf.to_str(pretty=True))
        return p

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a `tokenizer.json` (or a directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise LmlabError(f"tokenizer file not found: {p} (expected tokenizer.json or a folder with one)")
        try:
            text = p.read_text(encoding="utf-8")
            spec = json.loads(text)
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # bad UTF-8, bad JSON, or a spec `tokenizers` rejects
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LmlabError(f"tokenizer file {p} is not a valid tokenizer.json: {msg}") from None
        return cls(hf, _infer_kind(spec))


@dataclass
class TokenizerConfig:
    """Train a tokenizer on a text input and save it as tokenizer.json."""

    input: str = "runs/world/pretrain.jsonl"
    """Text to train on: a .txt file, a .jsonl file, or a directory of them."""
    field: str = "text"
    """Field holding the document text in .jsonl input."""
    out: str = "runs/tokenizer/tokenizer.json"
    """Where to write tokenizer.json (a .json path, or a directory)."""
    kind: str = "bpe"
    """'bpe' (byte-level BPE, digits split) or 'char' (one token per character + byte fallback)."""
    vocab_size: int = 1024
    """BPE: target vocabulary size (at least 264). char: upper bound, checked against the text."""
    min_frequency: int = 2
    """BPE only: a pair must occur this many times to be merged."""

    def __post_init__(self) -> None:
        if self.kind not in ("bpe", "char"):
            raise LmlabError(f"config key 'kind' must be 'bpe' or 'char', got {self.kind!r}")
        if self.vocab_size < 1:
            raise LmlabError(f"config key 'vocab_size' must be positive, got {self.vocab_size}")


def train_tokenizer(cfg: TokenizerConfig) -> dict[str, Any]:
    """Train the tokenizer `cfg` describes, save it, and return its stats."""
    TokenizerConfig.__post_init__(cfg)
    docs = load_documents(cfg.input, cfg.field)
    t0 = time.perf_counter()
    if cfg.kind == "bpe":
        tok = Tokenizer.train_bpe(docs, cfg.vocab_size, min_frequency=cfg.min_frequency)
    else:
        tok = Tokenizer.train_char(docs, cfg.vocab_size)
    train_s = time.perf_counter() - t0
    out = tok.save(cfg.out)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(docs))
    n_chars = sum(len(d) for d in docs)
    return {
        "out": str(out),
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "n_docs": len(docs),
        "chars": n_chars,
        "tokens": n_tokens,
        "chars_per_token": round(n_chars / max(n_tokens, 1), 4),
        "train_seconds": round(train_s, 3),
    }
