"""What a non-editable install (a wheel) must carry besides Python: the C sources built on first use."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]


def test_every_c_source_is_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lmlab"]
    pkg = ROOT / "src" / "lmlab"
    shipped = {p for pattern in patterns for p in pkg.glob(pattern)}
    sources = set(pkg.rglob("*.c"))
    assert sources, "no C sources found"
    assert sources <= shipped, f"not in [tool.setuptools.package-data]: {sorted(map(str, sources - shipped))}"
