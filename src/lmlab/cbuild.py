"""Build a C source file into a shared library on first use, cached and shared between processes.

lmlab's native kernels (the decode step, the fused training ops) are plain C compiled with the
system compiler the first time they are needed (a second or two), so installing lmlab needs no build
step and a machine without a compiler still runs everything through PyTorch. The library lands in
`$LMLAB_CACHE/native` (default `~/.cache/lmlab/native`, or the temporary directory where home is
read-only; both created private, 0700, and checked to be this user's before anything is loaded
from them), named by a hash of the source, the flags, the target architecture, the compiler and the
CPU (model and instruction-set flags), so a library built with `-march=native` on one CPU is never
loaded on another that shares the home directory. It is written with an atomic rename, so concurrent
builds never see half a library. A build that fails is remembered in a `.failed` file beside where
the library would be, so later processes fall back at once instead of retrying the compiler.

`LMLAB_MARCH` picks the target (default `native`; e.g. `x86-64-v3` for a plain AVX2 build, which the
tests build as well so that the kernels are checked on the instruction set most machines have).
"""

from __future__ import annotations

import ctypes
import functools
import getpass
import hashlib
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16", "i8mm")
"""The instruction-set flags that change what a `-march=native` build contains or may run."""


def cache_dir() -> Path:
    return Path(os.environ.get("LMLAB_CACHE") or Path.home() / ".cache" / "lmlab") / "native"


def parse_cpuinfo(text: str) -> tuple[str, list[str]]:
    """(model name, the flags of _FEATURES it lists) from the text of Linux's /proc/cpuinfo."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Hardware") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, sorted(f for f in _FEATURES if f in flags)


@functools.cache
def cpu_info() -> dict:
    """The CPU's model name, the instruction-set flags lmlab cares about, and the logical CPU count."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    model, flags = parse_cpuinfo(text)
    if sys.platform == "darwin":
        try:
            r = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
            model = r.stdout.strip() or model
        except OSError:
            pass
    return {"model": model or platform.processor() or platform.machine(), "machine": platform.machine(),
            "flags": flags, "logical_cpus": os.cpu_count()}


def cpu_key() -> str:
    """A short hash naming this kind of CPU (model and flags): what builds and measurements are keyed by."""
    info = cpu_info()
    return hashlib.sha256(f"{info['model']}|{info['machine']}|{','.join(info['flags'])}".encode()).hexdigest()[:12]


def march() -> str:
    """The compiler target: `LMLAB_MARCH`, default `native` (the CPU at hand)."""
    value = os.environ.get("LMLAB_MARCH", "native").strip() or "native"
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", value):
        raise RuntimeError(f"LMLAB_MARCH={value!r} is not an architecture name")
    return value


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@functools.cache
def compiler_version(cc: str | None = None) -> str:
    cc = cc or compiler()
    if cc is None:
        return "none"
    try:
        r = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unusable ({e})"
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else "unknown"


def _variants(flags: list[str], arch: str) -> list[list[str]]:
    """Flag sets to try, best first: the target architecture (dropped where the compiler does not know
    `native`), and without OpenMP where the compiler lacks it (Apple clang): the kernels then run on one
    thread, and the measured choice keeps PyTorch's ops wherever that loses."""
    archs = [[f"-march={arch}"], []] if arch == "native" else [[f"-march={arch}"]]
    omp = [flags, [f for f in flags if f != "-fopenmp"]] if "-fopenmp" in flags else [flags]
    return [[*f, *a] for f in omp for a in archs]


def _compile(source: Path, flags: list[str], arch: str, out: Path) -> None:
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_so = Path(tmp) / out.name
        last = ""
        for variant in _variants(flags, arch):
            try:
                r = subprocess.run([cc, *variant, "-o", str(tmp_so), str(source), "-lm"], capture_output=True,
                                   text=True)
            except OSError as e:
                raise RuntimeError(f"{cc} could not run: {e}") from e
            if r.returncode == 0:
                os.chmod(tmp_so, 0o755)
                os.replace(tmp_so, out)  # atomic: a concurrent build never sees half a library
                return
            last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        raise RuntimeError(f"{cc} failed: {last}")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        return str(os.getuid()) if hasattr(os, "getuid") else "user"


def library_path(source: Path, flags: list[str], root: Path | None = None) -> Path:
    """Where the build of `source` with `flags` for this CPU, compiler and LMLAB_MARCH lives."""
    arch = march()
    key = hashlib.sha256(b"|".join([source.read_bytes(), " ".join(flags).encode(), arch.encode(),
                                    cpu_key().encode(), compiler_version().encode()])).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    return (root or cache_dir()) / f"{source.stem}-{arch}-{key}{suffix}"


def _failure(path: Path) -> Path:
    return path.with_suffix(".failed")


def private_dir(path: Path) -> Path:
    """`path`, created 0700 if missing, and refused unless this user owns it and no one else can write it.

    A library is code: one loaded from a directory that others can write (a predictable name under /tmp
    that someone else created first) could be anyone's code.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid"):
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise RuntimeError(f"{path} is not a directory of this user's; native kernels are not built or "
                               f"loaded there")
        if st.st_mode & 0o077:
            os.chmod(path, 0o700)  # ours, made before this rule: close it
    return path


def _check_library(path: Path) -> Path:
    """Refuse a library file that is a link or someone else's; make sure no one else can write it."""
    if hasattr(os, "getuid"):
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise RuntimeError(f"{path} is not a regular file of this user's; not loading it")
        if st.st_mode & 0o022:
            os.chmod(path, 0o755)  # built under a group-writable umask: close it
    return path


def _build_at(source: Path, flags: list[str], path: Path) -> Path:
    private_dir(path.parent)
    failed = _failure(path)
    if failed.exists():
        raise RuntimeError(f"{failed.read_text(errors='replace').strip()} (an earlier build failed; delete "
                           f"{failed} to try again)")
    if not path.exists():
        try:
            _compile(source, flags, march(), path)
        except RuntimeError as e:
            try:
                failed.write_text(str(e) + "\n")
            except OSError:
                pass
            raise
    return _check_library(path)


def build(source: Path, flags: list[str]) -> ctypes.CDLL:
    """The compiled `source`, building it if needed. Raises RuntimeError or OSError when it cannot."""
    path = library_path(source, flags)
    try:
        path = _build_at(source, flags, path)
    except PermissionError:  # a read-only home: build in the temporary directory instead
        root = private_dir(Path(tempfile.gettempdir()) / f"lmlab-{_user()}")
        path = _build_at(source, flags, library_path(source, flags, root / "native"))
    return ctypes.CDLL(str(path))


OFF = "turned off by LMLAB_NATIVE=0"
"""The reason `try_build` gives when the native paths are switched off."""


def try_build(source: Path, flags: list[str], what: str, fallback: str) -> tuple[ctypes.CDLL | None, str | None]:
    """(library, None), or (None, why) with a warning: "{what} unavailable (why); {fallback}", `what`
    ending in "is" or "are". `LMLAB_NATIVE=0` turns every native path off (no warning)."""
    if os.environ.get("LMLAB_NATIVE", "1") == "0":
        return None, OFF
    try:
        return build(source, flags), None
    except (OSError, RuntimeError) as e:
        warnings.warn(f"{what} unavailable ({e}); {fallback}", stacklevel=3)
        return None, str(e)
