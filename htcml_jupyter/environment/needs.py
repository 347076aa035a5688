"""Which installed distributions a map's jobs need: those its function uses.

A job imports what the pickled function and its inputs name, and what those import in
turn.  Three sources, together:

1. **names in the pickles** (:func:`pickle_names`): the modules of the globals the
   function uses, the names its code mentions (``import torch`` inside it included),
   and the classes its inputs are made of (a numpy array names ``numpy``); read with
   :mod:`pickletools`, nothing is unpickled;
2. **an import probe**: those of the names that are installed top-level modules are
   imported in a child process of this interpreter, and every module that import loads
   from site-packages counts (so a package's undeclared, import-time needs come along);
3. **package metadata**: everything the distributions found so far require, their
   extras included (``transformers`` imports ``torch`` lazily, declared only in its
   ``torch`` extra), as far as it is installed.

A function that names no installed package needs none: its jobs get the interpreter and
the standard library alone (a few MB instead of a GB).  ``pack_include=`` adds what a
function reaches only in ways none of this sees (a module name built at run time).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from ..jobside.wire import read_header
from .lean import NOTEBOOK_ONLY, REQUIREMENT_NAME, closure, installed, normalize, pickle_names
from .packing import default_cache_dir

#: Seconds the import probe may take (importing torch and transformers takes a few).
PROBE_TIMEOUT = 180.0

_PROBE = r"""
import importlib, json, sys
roots = [p.rstrip("/") + "/" for p in json.loads(sys.argv[2])]
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except BaseException:
        pass
found = set()
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None) or ""
    for root in roots:
        if path.startswith(root):
            found.add(path[len(root):].split("/")[0].removesuffix(".py"))
sys.stdout.write("\n" + json.dumps(sorted(found)))
"""


def _extras_required(site_dirs: Iterable[Path]) -> dict[str, set[str]]:
    """``{distribution: what its extras name}`` for every installed distribution."""
    found: dict[str, set[str]] = {}
    for dist in metadata.distributions(path=[str(p) for p in site_dirs]):
        names = found.setdefault(normalize(dist.metadata["Name"] or ""), set())
        for text in dist.requires or ():
            match = REQUIREMENT_NAME.match(text.partition(";")[0])
            if match and "extra" in text.partition(";")[2]:
                names.add(normalize(match.group(1)))
    return found


def probe_imports(modules: Iterable[str], site_dirs: Iterable[Path],
                  timeout: float = PROBE_TIMEOUT) -> set[str]:
    """Top-level names under ``site_dirs`` that importing ``modules`` loads, in a child
    process of this interpreter (empty when the probe cannot run)."""
    wanted = sorted(set(modules))
    if not wanted:
        return set()
    roots = [os.path.realpath(p) for p in site_dirs] + [str(p) for p in site_dirs]
    # the same names in an unchanged environment give the same answer: kept by a key of
    # the names, the interpreter and the site folders' times (an install changes them)
    key = hashlib.sha256(json.dumps([wanted, roots, sys.executable, [
        os.stat(p).st_mtime_ns for p in site_dirs if os.path.isdir(p)]]).encode())
    memo = default_cache_dir() / f"probe-{key.hexdigest()[:24]}.json"
    try:
        return set(json.loads(memo.read_text()))
    except (OSError, ValueError):
        pass
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    env["MPLBACKEND"] = "Agg"
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(wanted),
                               json.dumps(roots)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=os.path.expanduser("~"))
        found = set(json.loads(proc.stdout.rsplit("\n", 1)[-1]))
    except (OSError, subprocess.SubprocessError, ValueError):
        return set()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps(sorted(found)))
    except OSError:
        pass
    return found


def needed_distributions(names: Iterable[str], site_dirs: tuple[Path, ...],
                         include: Iterable[str] = ()) -> set[str]:
    """The normalized names of the distributions a function naming ``names`` needs (see
    the module's docstring), plus ``include`` and what they require."""
    dists = installed(site_dirs)
    owner = {top: name for name, d in dists.items() for top in d.top_names}
    mentioned = {n for n in names if n in owner and n != "htcml_jupyter"}
    # what the interpreter loads before any import (a .pth file's hook) is no need
    loaded = probe_imports(mentioned, site_dirs) - probe_imports({"sys"}, site_dirs)
    asked = {owner[t] for t in mentioned | loaded if t in owner}
    asked |= {normalize(n) for n in include}
    asked.discard("htcml-jupyter")  # jobs get the job-side modules with their runner
    # an extra names what a package may import lazily (transformers' torch): followed
    # when installed, except into the notebook's own tools (a "test" extra's pytest)
    extras = _extras_required(site_dirs)
    roots = {n for n in NOTEBOOK_ONLY if n in dists}
    notebook_side = closure(roots, dists) - asked
    needed: set[str] = set()
    todo = set(asked)
    while todo:
        name = todo.pop()
        if name in needed or name not in dists:
            continue
        needed.add(name)
        todo |= set(dists[name].requires) - needed
        todo |= extras.get(name, set()) - needed - notebook_side
    needed.discard("htcml-jupyter")
    return needed


def names_in_files(paths: Iterable[Path], limit: int = 4 << 20) -> set[str]:
    """:func:`pickle_names` of each file's first ``limit`` bytes after its header line
    and JSON line (the map's function file and input files)."""
    found: set[str] = set()
    for path in paths:
        try:
            with open(path, "rb") as f:
                read_header(f)
                found |= pickle_names(f.read(limit))
        except (OSError, ValueError):
            continue
    return {n for n in found if re.fullmatch(r"[A-Za-z_]\w*", n)}
