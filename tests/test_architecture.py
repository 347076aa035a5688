"""The package's layout rules, read from its source with ``ast`` (nothing is imported).

* No import cycles between the modules of ``htcml_jupyter`` (imports inside functions
  count; those under ``if TYPE_CHECKING:`` do not, as they never run).
* No module is longer than :data:`MAX_LINES` lines.
* ``jobside/`` runs on the execute node with a bare interpreter: it imports the standard
  library and its own modules only, plus a few optional packages inside functions.
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "htcml_jupyter"
MAX_LINES = 400
JOBSIDE = "htcml_jupyter.jobside"
#: What a job-side module may import besides the standard library and its siblings,
#: and only inside a function (so the runner starts without them).
JOBSIDE_OPTIONAL = ("cloudpickle", "htchirp", "htcondor2.htchirp", "torch")


@dataclass(frozen=True)
class Import:
    """One imported name: the module it comes from, as written and resolved."""

    module: str  # absolute dotted name ("" for a relative import that leaves the tree)
    names: tuple[str, ...]  # what ``from module import ...`` took; () for ``import module``
    relative: bool
    in_function: bool
    line: int


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    imports: list[Import] = field(default_factory=list)


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


class _ImportCollector(ast.NodeVisitor):
    """Every import of a module, except those guarded by ``if TYPE_CHECKING:``."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.is_package = is_package
        self.imports: list[Import] = []
        self.depth = 0  # functions we are inside

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function
    visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for stmt in node.orelse:  # only the else branch runs
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.imports.append(Import(alias.name, (), False, self.depth > 0, node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        names = tuple(alias.name for alias in node.names)
        if node.level == 0:
            module = node.module or ""
        else:
            base = self.module.split(".")
            if not self.is_package:
                base = base[:-1]
            up = node.level - 1
            base = base[:len(base) - up] if up <= len(base) else []
            module = ".".join([*base, *([node.module] if node.module else [])]) if base else ""
        self.imports.append(Import(module, names, node.level > 0, self.depth > 0, node.lineno))


def load_modules(package_dir: Path) -> dict[str, Module]:
    """Every module under ``package_dir`` (named from the package's folder name) with
    the imports it makes."""
    modules: dict[str, Module] = {}
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        collector = _ImportCollector(name, is_package)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        modules[name] = Module(name, path, is_package, collector.imports)
    return modules


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, within the package.

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
    ``pkg`` itself; ``import pkg.sub`` is an edge to ``pkg.sub``.
    """
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, module in modules.items():
        for imp in module.imports:
            targets: list[str] = []
            if imp.names:
                for item in imp.names:
                    sub = f"{imp.module}.{item}"
                    targets.append(sub if sub in modules else imp.module)
            else:
                targets.append(imp.module)
            for target in targets:
                if target in modules and target != name:
                    graph[name].setdefault(target, imp.line)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                connect(node)
    finally:
        sys.setrecursionlimit(limit)
    return [_cycle_in(graph, set(group), group[0]) for group in sorted(groups)]


def _cycle_in(graph: dict[str, dict[str, int]], group: set[str], start: str) -> list[str]:
    """The shortest path from ``start`` back to itself inside ``group`` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt not in group:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group has one


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    """``a -> b -> a`` and, below it, the line of each import in the cycle."""
    steps = [f"{a}:{graph[a][b]} imports {b}" for a, b in itertools.pairwise(cycle)]
    return " -> ".join(cycle) + "\n      " + "\n      ".join(steps)


def jobside_violations(modules: dict[str, Module], jobside: str = JOBSIDE) -> Iterator[str]:
    """Imports of the job-side modules other than the standard library, each other, and
    :data:`JOBSIDE_OPTIONAL` inside functions."""
    mine = {name for name in modules if name == jobside or name.startswith(jobside + ".")}
    siblings = {name.rsplit(".", 1)[-1] for name in mine if name != jobside}
    for name in sorted(mine):
        module = modules[name]
        for imp in module.imports:
            full = [f"{imp.module}.{n}" for n in imp.names] if imp.names else [imp.module]
            for what in full if imp.module and not imp.relative else [imp.module]:
                if _jobside_allows(what, imp, mine, siblings):
                    continue
                where = "inside a function" if imp.in_function else "at module level"
                shown = what or "(a relative import outside the package)"
                yield f"{module.path.name}:{imp.line} imports {shown} {where}"


def _jobside_allows(what: str, imp: Import, mine: set[str], siblings: set[str]) -> bool:
    if imp.relative:
        return any(what == m or what.startswith(m + ".") for m in mine)
    top = what.split(".")[0]
    if any(what == m or what.startswith(m + ".") for m in mine):
        return True
    if top in siblings and imp.module.split(".")[0] in siblings:
        return True  # ``from wire import ...``: run as a script next to its siblings
    if imp.module.split(".")[0] in sys.stdlib_module_names:
        return True
    return imp.in_function and any(what == opt or what.startswith(opt + ".")
                                   for opt in JOBSIDE_OPTIONAL)


# --------------------------------------------------------------------------- the rules


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    found = load_modules(PACKAGE_DIR)
    assert f"{JOBSIDE}.runner" in found and "htcml_jupyter.api" in found, sorted(found)
    return found


def test_no_import_cycles(modules: dict[str, Module]) -> None:
    graph = import_graph(modules)
    assert sum(len(edges) for edges in graph.values()) > len(modules)  # it did read them
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between modules of htcml_jupyter:\n  " + "\n  ".join(
        describe_cycle(c, graph) for c in cycles)


def test_modules_are_at_most_400_lines(modules: dict[str, Module]) -> None:
    sizes = {name: len(m.path.read_text().splitlines()) for name, m in modules.items()}
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{modules[name].path.relative_to(PACKAGE_DIR.parent)} ({n} lines)"
        for name, n in sorted(too_long.items()))


def test_jobside_imports_only_the_standard_library(modules: dict[str, Module]) -> None:
    problems = list(jobside_violations(modules))
    assert not problems, ("jobside/ must run with only the standard library (optional "
                          f"packages {', '.join(JOBSIDE_OPTIONAL)} inside functions):\n  "
                          + "\n  ".join(problems))


# --------------------------------------------------------------------------- the checks


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return load_modules(root)


def test_cycle_check_sees_function_imports_and_skips_type_checking(tmp_path: Path) -> None:
    modules = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import thing\n",
        "b.py": "def f():\n    from . import c\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n"
                "else:\n    import pkg.d\n",
        "d.py": "from pkg import a\n",
        "sub/__init__.py": "from .. import a\nfrom ..sub import e\n",
        "sub/e.py": "from . import g\n",
    })
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b": 1}
    assert graph["pkg.b"] == {"pkg.c": 2}
    assert graph["pkg.c"] == {"pkg.d": 5}  # the TYPE_CHECKING import is not an edge
    assert graph["pkg.sub"] == {"pkg.a": 1, "pkg.sub.e": 2}
    assert graph["pkg.sub.e"] == {"pkg.sub": 1}  # ``g`` is no module: the package itself
    cycles = find_cycles(graph)
    assert sorted(cycles) == [["pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.a"],
                              ["pkg.sub", "pkg.sub.e", "pkg.sub"]]
    assert "pkg.b:2 imports pkg.c" in describe_cycle(cycles[0], graph)


def test_jobside_check_flags_what_a_bare_interpreter_lacks(tmp_path: Path) -> None:
    modules = _package(tmp_path, {
        "__init__.py": "",
        "engine.py": "",
        "jobside/__init__.py": "",
        "jobside/wire.py": "import json\nfrom typing import Any\n",
        "jobside/runner.py": (
            "import os\nfrom .wire import X\nfrom wire import X\n"
            "import pkg.jobside.wire\n"
            "def f():\n    import cloudpickle\n    import torch.nn\n"
            "    from htcondor2.htchirp import HTChirp\n    from htcondor2 import htchirp\n"
            "    import numpy\n    import htcondor2\n"
            "import cloudpickle\nfrom ..engine import y\nimport pkg\n"),
    })
    found = list(jobside_violations(modules, "pkg.jobside"))
    assert found == [
        "runner.py:10 imports numpy inside a function",
        "runner.py:11 imports htcondor2 inside a function",
        "runner.py:12 imports cloudpickle at module level",
        "runner.py:13 imports pkg.engine at module level",
        "runner.py:14 imports pkg at module level",
    ], found
