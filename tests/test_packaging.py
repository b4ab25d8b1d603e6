"""What a non-editable install (a wheel) must carry besides Python: the C sources built on first use, the
playground page."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("suffix", ["*.c", "*.html"])
def test_every_c_source_and_page_is_package_data(suffix):
    """C sources are compiled on first use; the server's playground page is read at start."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lmlab"]
    pkg = ROOT / "src" / "lmlab"
    shipped = {p for pattern in patterns for p in pkg.glob(pattern)}
    sources = set(pkg.rglob(suffix))
    assert sources, f"no {suffix} files found"
    assert sources <= shipped, f"not in [tool.setuptools.package-data]: {sorted(map(str, sources - shipped))}"


@pytest.mark.slow
def test_a_wheel_carries_the_built_in_recipes(tmp_path):
    """`--config NAME` must work from a non-editable install too: setup.py copies configs/ into the package."""
    import shutil
    import subprocess
    import sys
    import zipfile

    pytest.importorskip("setuptools")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    for name in ("src", "configs"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "dist"), str(tree)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("lmlab-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("lmlab/configs/")}
    assert shipped == {f"lmlab/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
