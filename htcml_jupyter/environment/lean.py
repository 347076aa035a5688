"""Which installed distributions a job needs: the notebook's front end stays behind.

A notebook's environment holds the Jupyter server and lab, the kernel machinery, linters,
test and browser tools and their front-end assets; a job running a mapped function needs
none of them.  The choice is made from package metadata (``importlib.metadata``):

1. the *roots* left out are the installed distributions of :data:`NOTEBOOK_ONLY` (and
   whatever ``exclude=`` names);
2. what the roots require goes with them unless a kept distribution requires it too:
   every distribution outside the roots' requirements is kept with all it requires (so
   ``jedi`` goes with ``ipython``, but ``numpy`` stays as long as a kept package such as
   ``scikit-learn`` requires it, and ``setuptools`` stays where ``torch`` requires it);
   a distribution installed by name (pip's ``REQUESTED`` marker) is kept as well;
3. ``include=`` names (and what they require) are always kept, and so are the
   distributions whose modules a map's pickled function names (see :func:`pickle_names`:
   the module of every global it uses and every name its code mentions, imports inside
   it included).

Inside the packages that are kept, files no job reads are left out too: ``__pycache__``,
type stubs (``*.pyi``), the packages' own test suites (``tests/`` and ``test/``
folders) and :data:`SKIPPED_PATHS`.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Distributions a job never needs: the notebook's front end, kernel, test and
#: development tools.  Names are normalized (lower case, ``-`` for ``_`` and ``.``).
NOTEBOOK_ONLY: frozenset[str] = frozenset({
    # the Jupyter server, lab, notebook and their extensions
    "jupyterlab", "jupyterlab-server", "jupyter-server", "jupyter-server-terminals",
    "jupyter-lsp", "notebook", "notebook-shim", "nbclassic", "jupyter", "voila",
    "jupyter-builder", "jupyterlab-widgets", "widgetsnbextension", "jupyterlab-pygments",
    "jupyter-console", "qtconsole", "jupyter-events", "jupyter-resource-usage",
    "dask-labextension", "optuna-dashboard",
    # the kernel and notebook tooling
    "ipykernel", "ipywidgets", "ipython", "nbconvert", "nbclient", "debugpy", "bqplot",
    # this package and its bindings (jobs get the job-side modules with their runner)
    "htcml-jupyter", "htcondor",
    # packaging, linters, type checkers, tests, browsers
    "pip", "setuptools", "wheel", "build", "mypy", "ruff", "black", "flake8", "pylint",
    "isort", "pre-commit", "pytest", "coverage", "hypothesis", "playwright", "selenium",
    "tox", "nox", "sphinx", "dask-jobqueue",
})

#: Folder names inside a kept package whose files no job imports.
SKIPPED_FOLDERS: frozenset[str] = frozenset({"tests", "test", "__pycache__"})
#: Folders (relative to site-packages) left out of a lean pack: torch's C++ headers and
#: build files (9,400 files; only building C++ extensions and ``torch.compile``'s CPU
#: code generation read them: ``include=["torch/include"]`` keeps them).
SKIPPED_PATHS: frozenset[str] = frozenset({"torch/include", "torch/share/cmake"})
#: File suffixes no job reads.
SKIPPED_SUFFIXES: tuple[str, ...] = (".pyc", ".pyo", ".pyi")


def normalize(name: str) -> str:
    """A distribution name as packaging compares them: ``"Jupyter_Server"`` ->
    ``"jupyter-server"``."""
    return re.sub(r"[-_.]+", "-", name).lower()


REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _required_names(requires: Iterable[str]) -> set[str]:
    """The names a distribution always requires (requirements behind an ``extra`` or a
    marker that does not hold here are left aside)."""
    out: set[str] = set()
    for text in requires:
        name_part, _, marker = text.partition(";")
        if "extra" in marker:
            continue
        if marker.strip():
            try:
                from packaging.markers import Marker

                if not Marker(marker.strip()).evaluate():
                    continue
            except Exception:
                pass  # keep the requirement when the marker cannot be judged
        match = REQUIREMENT_NAME.match(name_part)
        if match:
            out.add(normalize(match.group(1)))
    return out


@dataclass(frozen=True)
class Installed:
    """One installed distribution: what it requires and the top-level names it owns."""

    name: str
    requires: frozenset[str]
    top_names: frozenset[str]
    requested: bool = False


@dataclass(frozen=True)
class LeanChoice:
    """What a lean pack leaves out.

    Attributes
    ----------
    excluded
        Normalized names of the distributions left out.
    top_names
        The top-level names in site-packages (packages, modules, ``.dist-info``
        folders) that belong only to them.
    """

    excluded: frozenset[str] = frozenset()
    top_names: frozenset[str] = field(default_factory=frozenset)


def installed(site_dirs: Iterable[Path]) -> dict[str, Installed]:
    """The distributions installed in ``site_dirs``, by normalized name (first wins)."""
    out: dict[str, Installed] = {}
    for dist in metadata.distributions(path=[str(p) for p in site_dirs]):
        name = dist.metadata["Name"]
        if not name or normalize(name) in out:
            continue
        tops: set[str] = set()
        for file in dist.files or ():
            first = file.parts[0] if file.parts else ""
            if first and first not in ("..", "/") and not first.endswith(".data"):
                tops.add(first.removesuffix(".py"))
        info = getattr(dist, "_path", None)
        requested = False
        if isinstance(info, Path):
            tops.add(info.name)
            requested = (info / "REQUESTED").exists()  # installed by name, not as a need
        out[normalize(name)] = Installed(normalize(name), frozenset(
            _required_names(dist.requires or ())), frozenset(tops), requested)
    return out


def closure(names: Iterable[str], dists: dict[str, Installed]) -> set[str]:
    """``names`` and everything they require, transitively (installed ones only)."""
    seen: set[str] = set()
    todo = [normalize(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen or name not in dists:
            continue
        seen.add(name)
        todo.extend(dists[name].requires)
    return seen


def choose(dists: dict[str, Installed], *, include: Iterable[str] = (),
           exclude: Iterable[str] = ()) -> LeanChoice:
    """Decide which of ``dists`` a job does without (see the module's docstring).

    Parameters
    ----------
    dists
        What :func:`installed` found.
    include
        Distribution names to keep whatever the rules say (with what they require).
    exclude
        Distribution names to leave out as well (roots, like :data:`NOTEBOOK_ONLY`).
    """
    roots = {n for n in (*NOTEBOOK_ONLY, *map(normalize, exclude)) if n in dists}
    notebook_side = closure(roots, dists)
    asked = {n for n, d in dists.items() if d.requested} - roots
    seeds = (set(dists) - notebook_side) | asked | {normalize(n) for n in include}
    kept = closure(seeds, dists)
    out = set(dists) - kept
    kept_tops: set[str] = set()
    for name, dist in dists.items():
        if name not in out:
            kept_tops |= dist.top_names
    tops = set().union(*(dists[n].top_names for n in out)) - kept_tops if out else set()
    return LeanChoice(frozenset(out), frozenset(tops))


def choose_needed(dists: dict[str, Installed], needs: Iterable[str]) -> LeanChoice:
    """Leave out every distribution of ``dists`` but ``needs`` (see :mod:`.needs`)."""
    keep = {normalize(n) for n in needs}
    out = set(dists) - keep
    kept_tops = set().union(*(d.top_names for n, d in dists.items() if n in keep)) \
        if keep else set()
    tops = set().union(*(dists[n].top_names for n in out)) - kept_tops if out else set()
    return LeanChoice(frozenset(out), frozenset(tops))


def left_out(source: Any) -> list[str]:
    """The distributions a lean pack of ``source`` (an ``EnvSource``) leaves out, sorted."""
    if not source.lean:
        return []
    if source.needs is not None:
        return sorted(choose_needed(installed(source.site_dirs), source.needs).excluded)
    return sorted(choose(installed(source.site_dirs), include=source.include,
                         exclude=source.exclude).excluded)


def pickle_names(data: bytes) -> set[str]:
    """The top-level names a pickle stream mentions (module names of its globals, the
    names a pickled function's code uses), read with :mod:`pickletools` -- nothing is
    unpickled.  A damaged stream gives what was read before the damage."""
    import pickletools

    names: set[str] = set()
    try:
        for _op, arg, _pos in pickletools.genops(data):
            if isinstance(arg, str) and 0 < len(arg) < 200:
                for word in re.split(r"[\s.]+", arg):
                    if word.isidentifier():
                        names.add(word)
    except Exception:
        pass
    return names
