"""Text input: turn a file or a folder into a list of documents.

Three shapes are accepted, because they cover what people actually have:

- a `.txt` file is one document (a novel, tinyshakespeare);
- a `.jsonl` file holds one document per line, the text under a field
  (default `"text"`), which is what corpus tools and the built-in world write;
- a directory is every `.txt`/`.jsonl` file below it, in sorted path order,
  so the document order (and so a seeded split) does not depend on the disk.

Documents that hold no non-whitespace text are dropped. Problems name the file
and where in it (byte offset for bad UTF-8, line number for bad JSON) so they
can be fixed without guessing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from lmlab.errors import LmlabError

SUFFIXES = (".txt", ".jsonl")


def _check_utf8(data: bytes, path: Path, base: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LmlabError(
            f"{path}: not valid UTF-8 at byte offset {base + e.start} ({e.reason}); "
            "expected UTF-8 text"
        ) from None


def input_files(path: str | Path) -> list[Path]:
    """The text files `path` names: itself, or every .txt/.jsonl file below it."""
    p = Path(path)
    if not p.exists():
        raise LmlabError(f"text input not found: {p} (expected a .txt or .jsonl file, or a directory)")
    if p.is_dir():
        files = sorted(
            (f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES),
            key=lambda f: f.relative_to(p).parts,
        )
        if not files:
            raise LmlabError(f"directory {p} holds no .txt or .jsonl files")
        return files
    if p.suffix.lower() not in SUFFIXES:
        raise LmlabError(f"unsupported text input {p}: expected a .txt or .jsonl file, or a directory")
    return [p]


def read_utf8(path: Path) -> str:
    """A whole file as text; bad UTF-8 is an error naming the file and the byte offset."""
    return _check_utf8(path.read_bytes(), path)


def _iter_txt(path: Path) -> Iterator[str]:
    yield read_utf8(path).removeprefix("\ufeff")


def parse_json_line(line: str, where: str) -> object:
    """One JSONL line parsed; every way json.loads can refuse a line is an error naming `where`."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise LmlabError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise LmlabError(f"{where}: invalid JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer longer than Python's int-conversion limit
        raise LmlabError(f"{where}: invalid JSON ({e})") from None


def jsonl_records(path: Path, expected: str = "a JSON object") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; errors name the file and line."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _check_utf8(raw, path, offset)
            offset += len(raw)
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            row = parse_json_line(line, f"{path}:{lineno}")
            if not isinstance(row, dict):
                raise LmlabError(f"{path}:{lineno}: expected {expected}, got {type(row).__name__}")
            yield lineno, row


def _iter_jsonl(path: Path, field: str) -> Iterator[str]:
    for lineno, row in jsonl_records(path, f"a JSON object with a '{field}' field"):
        if field not in row:
            keys = ", ".join(repr(k) for k in list(row)[:8]) or "none"
            raise LmlabError(f"{path}:{lineno}: missing field '{field}' (keys: {keys})")
        value = row[field]
        if not isinstance(value, str):
            raise LmlabError(
                f"{path}:{lineno}: field '{field}' must be a string, got {type(value).__name__}"
            )
        yield value


def iter_documents(path: str | Path, field: str = "text") -> Iterator[str]:
    """Stream the documents under `path` (see the module docstring), skipping blank ones.

    Streaming keeps memory flat for big .jsonl corpora; it does not check that
    the input holds any text at all (`load_documents` does).
    """
    for f in input_files(path):
        docs = _iter_jsonl(f, field) if f.suffix.lower() == ".jsonl" else _iter_txt(f)
        for doc in docs:
            if doc.strip():
                yield doc


def load_documents(path: str | Path, field: str = "text") -> list[str]:
    """All documents under `path` as a list; an error if there is no text at all."""
    docs = list(iter_documents(path, field))
    if not docs:
        raise LmlabError(f"text input {path} is empty: no non-whitespace text found")
    return docs
