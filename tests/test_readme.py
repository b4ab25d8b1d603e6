"""The README's code map lists every source, test and benchmark file, so a newcomer finds each one there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_map() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Code map")
    return text[start:text.index("\n## ", start + 1)]


def listed(section: str) -> set[str]:
    """The file names listed (one per line, two spaces in) under the `section/` line of the map."""
    lines = code_map().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(section))
    names = set()
    for line in lines[at + 1:]:
        m = re.match(r"^  (\S+)", line)
        if not m:
            break
        names.add(m.group(1))
    return names


def test_every_source_file_is_in_the_code_map():
    src = ROOT / "src" / "lmlab"
    files = {str(p.relative_to(src)) for p in src.rglob("*")
             if p.suffix in (".py", ".c") and "__pycache__" not in p.parts}
    assert files - listed("src/lmlab/") == set()
    assert listed("src/lmlab/") - files == set(), "the map lists files that are gone"


def test_every_test_and_benchmark_is_in_the_code_map():
    tests = {p.name for p in (ROOT / "tests").glob("*.py")}
    benchmarks = {p.name for p in (ROOT / "benchmarks").iterdir() if p.is_file()}
    assert tests == listed("tests/")
    assert benchmarks == listed("benchmarks/")
