"""Build a C source file into a shared library on first use, cached and shared between processes.

lmlab's native kernels (the decode step, the fused training ops) are plain C compiled with the
system compiler the first time they are needed (a second or two), so installing lmlab needs no build
step and a machine without a compiler still runs everything through PyTorch. The library lands in
`$LMLAB_CACHE/native` (default `~/.cache/lmlab/native`, or the temporary directory where home is
read-only), named by a hash of the source, the flags and the machine, and is written with an atomic
rename, so concurrent builds never see half a library.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("LMLAB_CACHE") or Path.home() / ".cache" / "lmlab") / "native"


def _compile(source: Path, flags: list[str], out: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_so = Path(tmp) / out.name
        last = ""
        for arch in (["-march=native"], []):  # -march=native where the compiler knows this CPU
            r = subprocess.run([cc, *flags, *arch, "-o", str(tmp_so), str(source), "-lm"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                os.replace(tmp_so, out)  # atomic: a concurrent build never sees half a library
                return
            last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        raise RuntimeError(f"{cc} failed: {last}")


def build(source: Path, flags: list[str]) -> ctypes.CDLL:
    """The compiled `source`, building it if needed. Raises RuntimeError or OSError when it cannot."""
    key = hashlib.sha256(source.read_bytes() + " ".join(flags).encode() + platform.machine().encode()
                         + platform.node().encode()).hexdigest()[:16]
    path = cache_dir() / f"{source.stem}-{key}.so"
    if not path.exists():
        try:
            _compile(source, flags, path)
        except PermissionError:  # a read-only home: build in the temporary directory instead
            path = Path(tempfile.gettempdir()) / f"lmlab-{os.getuid()}" / "native" / path.name
            if not path.exists():
                _compile(source, flags, path)
    return ctypes.CDLL(str(path))


def try_build(source: Path, flags: list[str], what: str, fallback: str) -> tuple[ctypes.CDLL | None, str | None]:
    """(library, None), or (None, why) with a warning: "{what} unavailable (why); {fallback}", `what`
    ending in "is" or "are". `LMLAB_NATIVE=0` turns every native path off (no warning)."""
    if os.environ.get("LMLAB_NATIVE", "1") == "0":
        return None, "turned off by LMLAB_NATIVE=0"
    try:
        return build(source, flags), None
    except (OSError, RuntimeError) as e:
        warnings.warn(f"{what} unavailable ({e}); {fallback}", stacklevel=3)
        return None, str(e)
