"""The package's layout rules, read from its source with ``ast`` (nothing is imported).

* No import cycles between the modules of ``htcml_jupyter`` (imports inside functions
  count; those under ``if TYPE_CHECKING:`` do not, as they never run). Importing
  ``pkg.sub.mod`` runs ``pkg/sub/__init__.py`` too, so that is an import of ``pkg.sub``.
* No module is longer than :data:`MAX_LINES` lines.
* ARCHITECTURE.md's tree of the package (its Layers section) names every module, each
  under its subpackage, and no module that is gone.
* ``jobside/`` runs on the execute node with a bare interpreter: it imports the standard
  library and its own modules only, plus a few optional packages inside functions.
* The layers ARCHITECTURE.md draws: each part of the package (a subpackage, or a
  top-level module) imports only the parts :data:`LAYERS` gives it, and a few parts are
  imported only by the modules :data:`IMPORTED_ONLY_BY` names.  An import placed inside
  a function counts like any other (moving an import into a function to dodge a cycle
  does not make the layers any cleaner); the few kept exceptions are :data:`ALLOWED`,
  each with its reason.
* The backend protocol is the only seam to a pool: outside ``backends/`` no code reads
  a backend's pool configuration (``backend.config``) or tests its ``kind`` against a
  name (kept exceptions: :data:`ALLOWED_REACHES`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from .import_scan import (
    EVERYTHING,
    JOBSIDE,
    JOBSIDE_OPTIONAL,
    Allowed,
    Crossing,
    Module,
    backend_reaches,
    crossings,
    describe_cycle,
    find_cycles,
    guard_violations,
    import_graph,
    jobside_violations,
    layer_violations,
    load_modules,
    part_of,
    unused_allowances,
)

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "htcml_jupyter"
ARCHITECTURE_MD = PACKAGE_DIR.parent / "ARCHITECTURE.md"
MAX_LINES = 400

#: Part of the package (or one module of it) -> the parts and modules it may import at
#: run time (its own part always).  Listed from the bottom up: a part imports only parts
#: listed before it (the sweeps' watcher job aside).
LAYERS: dict[str, frozenset[str]] = {
    # runs on the execute node: the standard library only (its own test)
    "jobside": frozenset(),
    "paths": frozenset(),
    # the map itself: reaches a pool only through the Backend it is given (a type here)
    "engine": frozenset({"jobside", "paths"}),
    # how a job gets Python: reads the map's options, knows no backend
    "environment": frozenset({"engine", "jobside", "paths"}),
    # the project's own pool: nothing of the rest
    "devpool": frozenset({"paths"}),
    # where jobs run, behind one protocol
    "backends": frozenset({"engine", "environment", "jobside", "paths", "devpool"}),
    # Outside backends/, a backend is reached through what backends/ offers for that:
    # the protocol (the type), the pool chooser, CondorBackend (to subclass or narrow
    # to) and what a pool offers; never its bindings, event reader or submit description.
    # Sweeps submit their watcher job (workflows.watcher_job), nothing else of workflows.
    "training": frozenset({"engine", "backends.protocol", "paths", "workflows.watcher_job"}),
    # what HTCondor runs after the notebook is gone: the watcher rebuilds a sweep
    "workflows": frozenset({"engine", "environment", "backends.protocol", "backends.pools",
                            "backends.condor", "jobside", "paths", "training"}),
    "multinode": frozenset({"engine", "environment", "backends.protocol", "backends.pools",
                            "backends.condor", "jobside", "paths"}),
    # the public Python API
    "executor": frozenset({"engine", "backends.protocol", "backends.pools", "paths"}),
    "joblib_backend": frozenset({"engine", "backends.protocol", "backends.pools",
                                 "executor", "paths"}),
    "api": frozenset({"engine", "backends.protocol", "backends.pools", "backends.resources",
                      "training", "workflows", "multinode", "paths"}),
    # what people see: magics, panels; the Jupyter server's endpoints
    "views": frozenset({"api", "engine", "training", "multinode", "paths"}),
    "server": frozenset({"api", "engine", "training", "paths"}),
    # the top: the package's lazy public names, the command line, the demo
    "__init__": frozenset({EVERYTHING}),
    "cli": frozenset({EVERYTHING}),
    "demo": frozenset({EVERYTHING}),
}

#: A part (or module) -> the only parts and modules outside it that may import it.
IMPORTED_ONLY_BY: dict[str, tuple[str, ...]] = {
    # the project's pool is chosen by the pool chooser and driven by `htcml pool`
    "devpool": ("backends.pools", "cli"),
    # a pool's configuration and the calls made under it stay behind the Backend protocol
    "backends.bindings": ("cli",),
}

#: Imports kept against the rules above, each with its reason.
ALLOWED: tuple[Allowed, ...] = (
    # A handle shows itself when a person asks: the view loads only then, so a script,
    # a job or the watcher never imports ipywidgets or the views.
    Allowed("engine.mapping", "Map.panel", "views.panel",
            "Map.panel() builds its panel on request"),
    Allowed("engine.mapping", "Map._repr_html_", "views.progress",
            "Jupyter asks the handle itself for its HTML (_repr_html_)"),
    Allowed("training.sweeps", "Sweep.panel", "views.sweep_panel",
            "Sweep.panel() builds its panel on request"),
    Allowed("multinode.run", "TorchrunRun.panel", "views.torchrun_panel",
            "TorchrunRun.panel() builds its panel on request"),
)

#: Places outside ``backends/`` that read a backend's configuration or kind, kept (none:
#: a caller asks the protocol, e.g. ``filesystem_domains()``, ``can_run_watcher``).
ALLOWED_REACHES: tuple[Allowed, ...] = ()


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


@pytest.fixture(scope="module")
def found(modules: dict[str, Module]) -> list[Crossing]:
    return crossings(modules)


def _listed(crossings_: Sequence[Crossing]) -> str:
    return "\n  " + "\n  ".join(str(c) for c in crossings_)


def test_every_part_has_a_layer(modules: dict[str, Module]) -> None:
    parts = {part_of(name.partition(".")[2]) for name in modules}
    assert {"engine", "jobside", "api", "__init__"} <= parts, sorted(parts)
    missing = sorted(parts - set(LAYERS))
    assert not missing, (f"parts of htcml_jupyter with no entry in LAYERS: {missing}; "
                         "say what each may import (and add it to ARCHITECTURE.md's Layers)")


@pytest.mark.parametrize("part", sorted(LAYERS))
def test_layers(part: str, found: list[Crossing]) -> None:
    bad = layer_violations(found, LAYERS, ALLOWED).get(part, [])
    rules = {key: sorted(v) for key, v in LAYERS.items() if key.split(".")[0] == part}
    assert not bad, (f"{part} may import only {rules} (LAYERS in this file, as "
                     f"ARCHITECTURE.md's Layers draws them); it imports:{_listed(bad)}\n"
                     "move the code to the part it belongs to, or pass what it needs in")


@pytest.mark.parametrize("guarded", sorted(IMPORTED_ONLY_BY))
def test_imported_only_by(guarded: str, modules: dict[str, Module],
                          found: list[Crossing]) -> None:
    names = {name.partition(".")[2] for name in modules}
    assert any(n == guarded or n.startswith(guarded + ".") for n in names), guarded
    bad = guard_violations(found, guarded, IMPORTED_ONLY_BY[guarded], ALLOWED)
    assert not bad, (f"{guarded} is imported only by {', '.join(IMPORTED_ONLY_BY[guarded])} "
                     f"(and inside its own part); these import it too:{_listed(bad)}")


def test_only_backends_read_a_backends_pool_or_kind(modules: dict[str, Module]) -> None:
    reaches = backend_reaches(modules, "backends")
    bad = [r for r in reaches if not any(a.matches(r) for a in ALLOWED_REACHES)]
    assert not bad, ("outside backends/, code asks the Backend protocol (add a method or "
                     "property there) instead of reading its configuration or kind:"
                     + _listed(bad))


def test_every_allowed_import_is_still_made(modules: dict[str, Module],
                                            found: list[Crossing]) -> None:
    stale = [*unused_allowances(found, ALLOWED),
             *unused_allowances(backend_reaches(modules, "backends"), ALLOWED_REACHES)]
    assert not stale, ("drop these entries from ALLOWED (or ALLOWED_REACHES), no module "
                       "does that any more:\n  " + "\n  ".join(
                           f"{a.importer} ({a.function or 'module level'}) -> {a.imported}"
                           for a in stale))
    assert all(a.reason for a in (*ALLOWED, *ALLOWED_REACHES))


def documented_modules(markdown: str) -> dict[str, set[str]]:
    """subpackage ("" for the top level) -> the ``*.py`` files the Layers tree names
    under it."""
    block = markdown.split("## Layers", 1)[1].split("```", 2)[1]
    named: dict[str, set[str]] = {}
    section = ""
    for line in block.splitlines():
        heading = re.match(r"^  (\w+)/(\s|$)", line)
        if heading:
            section = heading.group(1)
        elif re.match(r"^  \S", line):
            section = ""
        named.setdefault(section, set()).update(re.findall(r"(\w+\.py)(?![\w.])", line))
    return named


def test_architecture_md_names_every_module(modules: dict[str, Module]) -> None:
    named = documented_modules(ARCHITECTURE_MD.read_text())
    present: dict[str, set[str]] = {}
    for module in modules.values():
        rel = module.path.relative_to(PACKAGE_DIR)
        present.setdefault(rel.parts[0] if len(rel.parts) > 1 else "", set()).add(rel.name)
    missing = sorted(f"{part}/{name}".lstrip("/") for part, names in present.items()
                     for name in names - named.get(part, set()) if name != "__init__.py")
    gone = sorted(f"{part}/{name}".lstrip("/") for part, names in named.items()
                  for name in names - present.get(part, set()))
    assert "engine" in named and "mapping.py" in named["engine"], sorted(named)
    assert not missing, ("ARCHITECTURE.md's Layers tree does not name these modules (add a "
                         f"line under their folder saying what each is): {missing}")
    assert not gone, f"ARCHITECTURE.md's Layers tree names modules that are gone: {gone}"


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
        "x.py": "import pkg.sub.e\n",
    })
    graph = import_graph(modules)
    assert graph["pkg.x"] == {"pkg.sub": 1, "pkg.sub.e": 1}  # importing e runs sub's __init__
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


def test_layer_checks_flag_what_the_table_does_not_allow(tmp_path: Path) -> None:
    modules = _package(tmp_path, {
        "__init__.py": "from .top import run\n",
        "top.py": "from .low import a\nfrom .mid import b\n",
        "low/__init__.py": "",
        "low/a.py": "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from ..top import run\n"
                    "class A:\n    def show(self):\n        from ..top import view\n"
                    "def helper():\n    from ..mid import b\n",
        "mid/__init__.py": "",
        "mid/b.py": "from ..low import a\nfrom ..secret import c\n",
        "mid/c.py": "from ..secret import c\n",
        "secret/__init__.py": "",
        "secret/c.py": "from ..low.a import A\n",
    })
    found = crossings(modules)
    layers = {"low": frozenset(), "mid": frozenset({"low", "secret"}),
              "secret": frozenset({"low"}), "top": frozenset({EVERYTHING}),
              "__init__": frozenset({"top"})}
    bad = layer_violations(found, layers)
    assert sorted(bad) == ["low"]
    assert [str(c) for c in bad["low"]] == [
        "pkg/low/a.py:6 (in A.show) imports top",  # inside a function: it counts
        "pkg/low/a.py:8 (in helper) imports mid.b",
    ]  # the TYPE_CHECKING import does not
    keep = (Allowed("low.a", "A.show", "top", "shows itself on request"),)
    assert [str(c) for c in layer_violations(found, layers, keep)["low"]] == [
        "pkg/low/a.py:8 (in helper) imports mid.b"]
    assert [str(c) for c in guard_violations(found, "secret", ("mid.b",))] == [
        "pkg/mid/c.py:1 imports secret.c"]
    assert guard_violations(found, "secret", ("mid",)) == []
    gone = Allowed("low.a", "helper", "secret", "no such import")
    assert unused_allowances(found, (*keep, gone)) == [gone]
    assert layer_violations(found, {**layers, "mid": frozenset({"low"})}) \
        .get("mid") == [c for c in found if c.importer.startswith("mid")
                        and c.imported.startswith("secret")]


def test_seam_check_flags_code_that_reads_a_backends_pool_or_kind(tmp_path: Path) -> None:
    modules = _package(tmp_path, {
        "__init__.py": "",
        "backends/__init__.py": "",
        "backends/condor.py": "class B:\n    def f(self):\n        return self.config\n",
        "user.py": ("def f(backend, m):\n"
                    "    if backend.kind == 'condor':\n"
                    "        return m.backend.config\n"
                    "    return getattr(self._backend, 'config', None)\n"
                    "x = backend.kind\n"  # reading the kind for words is fine
                    "y = record['config']\n"
                    "class R:\n    def g(self):\n        return 'x' != self.map.backend.kind\n"),
    })
    found = backend_reaches(modules, "backends")
    assert [str(r) for r in found] == [
        "pkg/user.py:2 (in f) reads backend.kind",
        "pkg/user.py:3 (in f) reads backend.config",
        "pkg/user.py:4 (in f) reads backend.config",
        "pkg/user.py:9 (in R.g) reads backend.kind",
    ]
    keep = Allowed("user", "R.g", "backend.kind", "says which")
    assert keep.matches(found[-1]) and not keep.matches(found[0])
