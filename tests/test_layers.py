"""The import structure: layers that only point down, no cycles, and plan/ free of torch.

Read from the source with `ast` (nothing is imported), so a deferred import inside a function counts as
much as one at the top: hiding an upward arrow in a function does not make it point down.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = [
    # the ground every layer stands on: errors, files, recipes, devices, run directories, native builds
    {"lmlab", "lmlab.errors", "lmlab.io", "lmlab.config", "lmlab.device", "lmlab.rundir", "lmlab.summary",
     "lmlab.figures", "lmlab.cbuild", "lmlab.usercode"},
    {"lmlab.data"},
    {"lmlab.model", "lmlab.plan"},
    {"lmlab.train", "lmlab.infer"},
    {"lmlab.post", "lmlab.testtime", "lmlab.evals", "lmlab.scale", "lmlab.doctor"},
    {"lmlab.report", "lmlab.serve", "lmlab.ledger", "lmlab.quickstart", "lmlab.cli"},
]
"""Bottom to top, after the issue that set them: data -> model (checkpoints beside it) -> train / infer ->
post, testtime, evals -> report, serve, quickstart, cli. A module may import its own layer and those below."""


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "lmlab").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def layer_of(module: str) -> int:
    for rank, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members if m != "lmlab"):
            return rank
    assert module == "lmlab", f"{module} is in no layer: add it to LAYERS"
    return 0


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The lmlab modules `module` imports anywhere in its file (resolved to modules that exist)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from lmlab.model import autotune` imports the module lmlab.model.autotune, not the package
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("lmlab") and name not in (module, "lmlab"):
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_every_import_points_down_or_sideways():
    upward = sorted(f"{m} -> {t}" for m, targets in graph().items() for t in targets if layer_of(t) > layer_of(m))
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_plan_is_torch_free():
    """`lmlab size` is arithmetic: plan/ imports neither torch nor a module that does at its top."""
    known = modules()
    for name, path in known.items():
        if not name.startswith("lmlab.plan"):
            continue
        tree = ast.parse(path.read_text())
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "torch" not in roots, f"{name} imports torch"


def test_the_check_sees_a_cycle_and_an_upward_arrow(tmp_path, monkeypatch):
    """The checks above can fail: a planted upward import and cycle are found."""
    pkg = tmp_path / "lmlab"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("def f():\n    from lmlab.cli import main\n")
    (pkg / "cli.py").write_text("from lmlab.data.a import f\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    edges = graph()
    assert "lmlab.cli" in edges["lmlab.data.a"] and "lmlab.data.a" in edges["lmlab.cli"]
    assert layer_of("lmlab.cli") > layer_of("lmlab.data.a")
