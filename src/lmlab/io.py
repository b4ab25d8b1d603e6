"""Atomic file writes: a reader never sees a half-written file.

Everything is written to a temporary sibling, flushed, fsynced and renamed
over the target; `os.replace` is atomic on POSIX and Windows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def confined(base: str | Path, name: Any, where: str) -> Path:
    """`base / name` for a file name read from a file (`where`), refused unless it stays inside `base`.

    Names in headers and indexes are data, not the user's choice: an absolute path, a `..` or a
    symlink leading out of `base` would let a downloaded directory read any file on the machine.
    """
    if not isinstance(name, str) or not name or "\0" in name:
        raise LmlabError(f"{where}: file name {name!r} is not a file name")
    path = Path(base) / name
    root = Path(base).resolve()
    if Path(name).is_absolute() or not path.resolve().is_relative_to(root) or path.resolve() == root:
        raise LmlabError(f"{where}: {name!r} points outside {base}; only files inside it are read")
    return path


def recover_dir(path: str | Path) -> None:
    """Finish an `atomic_dir` swap that a crash interrupted between its two renames."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.is_dir():
        os.replace(old, path)


def sync_tree(directory: Path) -> None:
    """Give every file under `directory` the usual permissions and flush it to disk."""
    for p in directory.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, 0o666 & ~_UMASK)  # some writers (safetensors) make 0600 files
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def temp_dir_beside(path: Path) -> Path:
    """A fresh hidden directory next to `path`, on the same file system, so renames out of it are atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` as a whole.

    The old directory (if any) is renamed aside, the new one renamed into place,
    and only then is the old one deleted. A crash between the two renames leaves
    the old version at `.<name>.old`, which `recover_dir` (called here and by
    readers such as checkpoint loading) puts back; a failed rename is undone at once.
    """
    path = Path(path)
    recover_dir(path)
    tmp = temp_dir_beside(path)
    try:
        yield tmp
        sync_tree(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
