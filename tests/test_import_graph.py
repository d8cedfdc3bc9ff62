"""No import cycle among the project's modules (hostconfig/, infra/, lab/), lazy imports inside functions included.

A cycle hidden in a function body (`def f(): from a import b`) still works until someone moves the import to the top
or imports the other module first; it also means neither module can be understood or tested without the other.
The graph comes from the source (ast), so the check needs none of the imported packages installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("hostconfig", "infra", "lab")


def project_modules(root: Path = REPO) -> dict[str, Path]:
    """dotted name -> file, for every module and package of PACKAGES."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if node.level:
        base = importer if is_package else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    # `from pkg import name` imports the submodule pkg.name when there is one, else pkg itself
    return {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names} & set(modules)


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source (top level, functions, TYPE_CHECKING)."""
    modules = project_modules(root)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[name] = set().union(*(_imported(node, name, is_package, modules) for node in ast.walk(tree)
                                    if isinstance(node, (ast.Import, ast.ImportFrom))))
        graph[name].discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring modules in progress)."""
    in_progress: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> list[str] | None:
        if module in in_progress:
            return in_progress[in_progress.index(module):] + [module]
        if module in done:
            return None
        in_progress.append(module)
        for imported in sorted(graph[module]):
            cycle = visit(imported)
            if cycle:
                return cycle
        in_progress.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_the_walk_finds_a_lazy_import_cycle(tmp_path):
    pkg = tmp_path / "hostconfig"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from hostconfig.b import g\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("from hostconfig import a\n")
    for other in PACKAGES[1:]:
        (tmp_path / other).mkdir()
    assert find_cycle(import_graph(tmp_path)) == ["hostconfig.a", "hostconfig.b", "hostconfig.c", "hostconfig.a"]
    (pkg / "c.py").write_text("import json\n")
    assert find_cycle(import_graph(tmp_path)) is None


def test_the_graph_sees_the_projects_imports():
    graph = import_graph()
    assert "hostconfig.plan" in graph["hostconfig.render"]
    assert "hostconfig.agent.config" in graph["hostconfig.agent.daemon"]  # a relative import
    assert len(graph) > 60


def test_no_import_cycle_in_hostconfig_infra_and_lab():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())
