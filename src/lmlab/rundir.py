"""The directories lmlab writes: never over someone else's files, one run at a time, no leftovers.

- `output_dir`: a verb's output directory (a checkpoint, a Hugging Face export, token shards) is
  replaced as a whole only when everything in it is the verb's own. Any other file there makes it an
  error; with `force` the verb's files are written beside the others, and nothing else is touched.
  Writing into a directory the verb reads from is always refused.
- `run_lock`: an exclusive lock on a run directory for the life of a run. A second run on it fails
  at once, naming the holder's pid. The kernel drops the lock when its holder dies, so a killed run
  never leaves a stale lock behind.
- `clean_stale`: what dead runs left (temporary files and half-swapped directories), tidied once the
  lock is held, so nothing alive can still be writing them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from lmlab.errors import LmlabError
from lmlab.io import atomic_dir, recover_dir, sync_tree, temp_dir_beside

QUICKSTART_OUT = "runs/quickstart"
"""Where `lmlab quickstart` writes; its checkpoint is what the inference verbs read unless told."""
PRETRAIN_OUT = "runs/pretrain"
"""Where `lmlab pretrain` writes unless told."""
DEFAULT_CHECKPOINT = f"{QUICKSTART_OUT}/checkpoint"

LOCK = ".lmlab.lock"
"""The lock file in a run directory; it holds the pid of the run that has it."""

_STALE_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
"""What `lmlab.io`'s atomic writes name their temporary files and directories (tempfile's 8 characters)."""

R = TypeVar("R")

_held: dict[Path, int] = {}
"""Run directories this process has locked, with their nesting depth (quickstart runs pretrain in its own
directory; a second flock from the same process would fail against itself)."""


def _names(names: list[str], limit: int = 4) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def refuse_overlap(out: Path, reads: Iterable[str | Path], verb: str) -> None:
    """Writing `out` must not replace or land inside a directory the verb reads from."""
    target = out.resolve()
    for src in reads:
        source = Path(src).resolve()
        if target == source or target.is_relative_to(source):
            raise LmlabError(f"{verb}: the output {out} is {'the same as' if target == source else 'inside'} "
                             f"its input {src}; choose an output directory outside it")


def _refuse_other_header(header: Path, verb: str, fmt: str) -> None:
    """A header file of the verb's name but another format (a checkpoint's meta.json met by `prepare`)."""
    try:
        found = json.loads(header.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != fmt:
        raise LmlabError(f"{verb}: {header} is not {verb}'s own (its format is {found!r}, not {fmt!r}); "
                         f"{verb} does not replace another kind of output, even with --force")


def check_output(path: Path, verb: str, own: tuple[str, ...], reads: Iterable[str | Path] = (),
                 force: bool = False, header_format: str | None = None) -> list[str]:
    """Refuse an output directory `output_dir` would refuse; the foreign files it holds (allowed by `force`).

    `header_format`, when given, is the "format" value of the verb's JSON header (`own[-1]`); an existing
    header with another one is refused even with `force`. Verbs that train call this before they start,
    so that a refusal never comes after hours of work.
    """
    refuse_overlap(path, reads, verb)
    if header_format and (path / own[-1]).is_file():
        _refuse_other_header(path / own[-1], verb, header_format)
    recover_dir(path)
    if path.exists() and not path.is_dir():
        raise LmlabError(f"{verb}: the output {path} exists and is not a directory")
    foreign = sorted(p.name for p in path.iterdir() if p.name not in own) if path.is_dir() else []
    if foreign and not force:
        raise LmlabError(f"{verb}: {path} already holds files that {verb} did not write ({_names(foreign)}); "
                         f"choose a new directory, or pass --force to write {verb}'s files beside them "
                         f"(nothing else there is touched)")
    return foreign


@contextmanager
def output_dir(path: str | Path, verb: str, own: tuple[str, ...], reads: Iterable[str | Path] = (),
               force: bool = False, header_format: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory to fill with (some of) the `own` files; then put them at `path`.

    `own[-1]` is the header that says the directory is complete: with `force` it is removed first and
    written last, so a crash part-way leaves a directory that reads as unfinished, never as wrong.
    """
    path = Path(path)
    if not check_output(path, verb, own, reads, force, header_format):
        with atomic_dir(path) as tmp:
            yield tmp
        return
    tmp = temp_dir_beside(path)
    try:
        yield tmp
        sync_tree(tmp)
        (path / own[-1]).unlink(missing_ok=True)
        for name in own:
            if (tmp / name).exists():
                os.replace(tmp / name, path / name)
            elif (path / name).is_file() or (path / name).is_symlink():
                (path / name).unlink()  # a file of the verb's previous output that this one lacks
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clean_stale(directory: str | Path) -> list[str]:
    """Remove dead runs' temporary files and finish their interrupted directory swaps; names what it removed."""
    directory = Path(directory)
    removed = []
    for p in sorted(directory.iterdir()) if directory.is_dir() else []:
        if p.name.endswith(".old") and p.name.startswith(".") and p.is_dir():
            recover_dir(directory / p.name[1:-len(".old")])  # put back the only copy, if it is one
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        elif _STALE_TMP.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def _try_lock(f: IO[str]) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: lock the first byte instead
        import msvcrt
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


@contextmanager
def run_lock(directory: str | Path) -> Iterator[list[str]]:
    """Hold `directory` for one run; yields the stale files it cleaned. Nested use in one process is allowed."""
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield []
        finally:
            _held[key] -= 1
        return
    f = open(directory / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    if not _try_lock(f):
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise LmlabError(f"{directory} is in use by another lmlab run (pid {holder}); wait for it to finish, "
                         f"or give this run another output directory")
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _held[key] = 1
    try:
        yield clean_stale(directory)
    finally:
        del _held[key]
        f.seek(0)
        f.truncate()
        if created and [p.name for p in directory.iterdir()] == [LOCK]:
            with contextlib.suppress(OSError):  # Windows cannot remove an open file: the directory stays
                (directory / LOCK).unlink()  # a run that failed before writing anything leaves no directory
                directory.rmdir()
        f.close()  # closing the file releases the lock


def locked_run(verb: Callable[..., R]) -> Callable[..., R]:
    """Make `verb(cfg, ...)` hold the run lock on `cfg.out` while it runs (and clean what dead runs left there)."""

    @functools.wraps(verb)
    def run(cfg: Any, *args: Any, **kwargs: Any) -> R:
        if os.environ.get("RANK", "0") != "0":  # a torchrun worker: rank 0 holds the lock for the run
            return verb(cfg, *args, **kwargs)
        with run_lock(cfg.out):
            return verb(cfg, *args, **kwargs)

    return run


def require_checkpoint(path: str | Path) -> Path:
    """`path` if it is a directory; else an error naming it, and, when the default is missing but
    `lmlab pretrain` has written its own default checkpoint, the flag that points at that one."""
    p = Path(path)
    recover_dir(p)  # a checkpoint swap that a crash interrupted is still a checkpoint
    if p.is_dir():
        return p
    msg = f"checkpoint not found: {p}"
    if p == Path(DEFAULT_CHECKPOINT):
        pretrained = Path(PRETRAIN_OUT) / "checkpoint"
        msg += " (the default: `lmlab quickstart` writes it)"
        if pretrained.is_dir():
            msg += f"; `lmlab pretrain` wrote {pretrained}: pass --checkpoint {pretrained}"
    raise LmlabError(msg)
