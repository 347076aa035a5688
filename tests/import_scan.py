"""What the modules of a package import, read from their source with ``ast`` (nothing is
imported), and the checks ``test_architecture.py`` applies to it: import cycles, the job
side's standard-library rule, the layers between subpackages, and code outside the
backends that reads a backend's pool configuration or kind."""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    function: str = ""  # qualified name of the enclosing function ("" at module level)


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
        self.scope: list[str] = []  # names of the classes and functions we are inside

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.scope.append(getattr(node, "name", "<lambda>"))
        self.generic_visit(node)
        self.scope.pop()
        self.depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function
    visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def _where(self) -> str:
        return ".".join(self.scope) if self.depth else ""

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for stmt in node.orelse:  # only the else branch runs
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.imports.append(Import(alias.name, (), False, self.depth > 0, node.lineno,
                                       self._where()))

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
        self.imports.append(Import(module, names, node.level > 0, self.depth > 0, node.lineno,
                                   self._where()))


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


def imported_modules(imp: Import, modules: dict[str, Module]) -> list[str]:
    """The modules of the package an import names.

    ``from pkg import name`` names ``pkg.name`` when that is a module, else ``pkg``
    itself; ``import pkg.sub`` names ``pkg.sub``.
    """
    if not imp.names:
        return [imp.module] if imp.module in modules else []
    found: list[str] = []
    for item in imp.names:
        sub = f"{imp.module}.{item}"
        target = sub if sub in modules else imp.module
        if target in modules and target not in found:
            found.append(target)
    return found


def _packages_run_by(target: str, importer: str, modules: dict[str, Module]) -> list[str]:
    """The packages whose ``__init__`` importing ``target`` runs for ``importer``: each
    package above ``target`` that ``importer`` is not inside (the top package excepted:
    every module of it is inside it)."""
    parts = target.split(".")
    packages = [".".join(parts[:i]) for i in range(2, len(parts))]
    return [p for p in packages if p in modules and modules[p].is_package
            and importer != p and not importer.startswith(p + ".")]


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, within the package.

    Importing ``pkg.sub.mod`` also runs ``pkg/sub/__init__.py``: that is an edge to the
    package ``pkg.sub`` too (for a module outside it).
    """
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, module in modules.items():
        for imp in module.imports:
            for target in imported_modules(imp, modules):
                for reached in [*_packages_run_by(target, name, modules), target]:
                    if reached != name:
                        graph[name].setdefault(reached, imp.line)
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


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class Crossing:
    """One module of the package importing another of another part, named relative to
    the package (``engine.mapping``; ``""`` is the package's ``__init__``)."""

    importer: str
    imported: str
    function: str  # the function holding the import ("Map.panel"), "" at module level
    path: str  # the importer's file, relative to the package's parent folder
    line: int

    def __str__(self) -> str:
        inside = f" (in {self.function})" if self.function else ""
        return f"{self.path}:{self.line}{inside} imports {self.imported or '(the package)'}"


@dataclass(frozen=True)
class Allowed:
    """An import that breaks a layer rule and is kept, for ``reason``.  ``importer`` and
    ``function`` name where it is (module relative to the package, and the function's
    qualified name or ``""`` for module level); ``imported`` the module (or a package
    covering it).  ``being_removed``: the code around it is being reworked to drop it."""

    importer: str
    function: str
    imported: str
    reason: str
    being_removed: bool = False

    def matches(self, crossing: Crossing) -> bool:
        return (crossing.importer == self.importer and crossing.function == self.function
                and covers(self.imported, crossing.imported))


#: The part of the package every other part may import (an entry of a layer table).
EVERYTHING = "*"


def covers(entry: str, name: str) -> bool:
    """Whether ``entry`` (a part, a module, or :data:`EVERYTHING`) covers module ``name``."""
    return entry == EVERYTHING or name == entry or name.startswith(entry + ".")


def part_of(name: str) -> str:
    """A module's part: its subpackage, or the top-level module's own name (``__init__``
    for the package itself)."""
    return name.split(".")[0] if name else "__init__"


def crossings(modules: dict[str, Module]) -> list[Crossing]:
    """Every import of a module of one part by a module of another (inside functions
    included, ``if TYPE_CHECKING:`` left out), first by importer and line."""
    found: list[Crossing] = []
    for name, module in sorted(modules.items()):
        top = name.split(".")[0]
        importer = name[len(top) + 1:]
        path = str(module.path.relative_to(modules[top].path.parent.parent))
        for imp in module.imports:
            for target in imported_modules(imp, modules):
                imported = target[len(top) + 1:]
                if part_of(imported) != part_of(importer):
                    found.append(Crossing(importer, imported, imp.function, path, imp.line))
    return found


def rules_for(importer: str, layers: dict[str, frozenset[str]]) -> frozenset[str]:
    """What ``importer`` may import: the entries of every key of ``layers`` covering it
    (``backends`` and ``backends.pools`` both apply to ``backends.pools``)."""
    allowed: set[str] = set()
    for key, entries in layers.items():
        if covers(key, importer) or (key == "__init__" and importer == ""):
            allowed |= entries
    return frozenset(allowed)


def layer_violations(found: list[Crossing], layers: dict[str, frozenset[str]],
                     allowed: tuple[Allowed, ...] = ()) -> dict[str, list[Crossing]]:
    """part -> its imports that :data:`layers` does not allow (and no :class:`Allowed`
    keeps); a part missing from ``layers`` may import nothing of the others."""
    bad: dict[str, list[Crossing]] = {}
    for crossing in found:
        rules = rules_for(crossing.importer, layers)
        if any(covers(entry, crossing.imported) for entry in rules):
            continue
        if any(a.matches(crossing) for a in allowed):
            continue
        bad.setdefault(part_of(crossing.importer), []).append(crossing)
    return bad


def guard_violations(found: list[Crossing], guarded: str, importers: tuple[str, ...],
                     allowed: tuple[Allowed, ...] = ()) -> list[Crossing]:
    """Imports of ``guarded`` (a part or a module) from outside it by anything but
    ``importers`` (parts or modules) and the :class:`Allowed` ones."""
    return [c for c in found
            if covers(guarded, c.imported) and not covers(guarded, c.importer)
            and not any(covers(who, c.importer) for who in importers)
            and not any(a.matches(c) for a in allowed)]


def unused_allowances(found: Sequence[Crossing],
                      allowed: tuple[Allowed, ...]) -> list[Allowed]:
    """The :class:`Allowed` entries that no import matches any more."""
    return [a for a in allowed if not any(a.matches(c) for c in found)]


# --------------------------------------------------------------------------- the seam


class Reach(Crossing):
    """Code reading what only a backend should know of itself: ``imported`` is what it
    reads (``backend.config``, ``backend.kind``)."""

    def __str__(self) -> str:
        inside = f" (in {self.function})" if self.function else ""
        return f"{self.path}:{self.line}{inside} reads {self.imported}"


#: What a backend keeps to itself: its pool's configuration (``config``) and its
#: ``kind`` tested against a name (callers ask the protocol what they need instead).
BACKEND_PRIVATE = ("config", "kind")


def _is_backend(node: ast.expr) -> bool:
    """``backend``, ``self.backend``, ``m.backend``, ``self._backend``: by its name."""
    last = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return isinstance(last, str) and last.lower().endswith("backend")


class _ReachCollector(ast.NodeVisitor):
    def __init__(self) -> None:
        self.scope: list[str] = []
        self.depth = 0  # functions we are inside
        self.found: list[tuple[str, str, int]] = []  # (function, what, line)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.visit_ClassDef(node)
        self.depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def _add(self, what: str, line: int) -> None:
        function = ".".join(self.scope) if self.depth else ""
        self.found.append((function, f"backend.{what}", line))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == "config" and _is_backend(node.value):
            self._add("config", node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2 and _is_backend(node.args[0])
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in BACKEND_PRIVATE):
            self._add(str(node.args[1].value), node.lineno)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        sides = [node.left, *node.comparators]
        if (any(isinstance(s, ast.Attribute) and s.attr == "kind" and _is_backend(s.value)
                for s in sides)
                and any(isinstance(s, ast.Constant) and isinstance(s.value, str)
                        for s in sides)):
            self._add("kind", node.lineno)
        self.generic_visit(node)


def backend_reaches(modules: dict[str, Module], inside: str) -> list[Reach]:
    """Where code outside the part ``inside`` (the backends) reads a backend's
    :data:`BACKEND_PRIVATE` attributes, named relative to the package."""
    found: list[Reach] = []
    for name, module in sorted(modules.items()):
        top = name.split(".")[0]
        relative = name[len(top) + 1:]
        if part_of(relative) == inside:
            continue
        collector = _ReachCollector()
        collector.visit(ast.parse(module.path.read_text(), filename=str(module.path)))
        path = str(module.path.relative_to(modules[top].path.parent.parent))
        found.extend(Reach(relative, what, function, path, line)
                     for function, what, line in collector.found)
    return found
