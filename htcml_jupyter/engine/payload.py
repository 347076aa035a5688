"""Submit side of the payload: pickle a function once and the items of each job."""

from __future__ import annotations

import os
import pickle
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle

from ..jobside.runner import python_version, write_payload


class PickleError(TypeError):
    """The function, its keyword arguments or an item cannot be pickled."""


def payload_header(**extra: Any) -> dict[str, Any]:
    """The versions that must match on the execute side, plus ``extra`` fields."""
    return {"python": python_version(), "cloudpickle": cloudpickle.__version__, **extra}


def _installed_roots() -> tuple[str, ...]:
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    roots = {os.path.realpath(p) for p in (sysconfig.get_path(n) for n in names) if p}
    roots |= {os.path.realpath(p) for p in sys.path if "site-packages" in p}
    return tuple(roots)


def _by_value_module(function: Callable[..., Any]) -> ModuleType | None:
    """The function's module when it is the user's own file (not installed), else None.

    Such a module may not exist on the execute node, so it is pickled by value.
    """
    name = getattr(function, "__module__", None)
    module = sys.modules.get(name or "")
    if module is None or name == "__main__" or name in sys.builtin_module_names:
        return None
    path = getattr(module, "__file__", None)
    if not path:
        return None
    real = os.path.realpath(path)
    if any(real.startswith(root + os.sep) for root in _installed_roots()):
        return None
    return module


@contextmanager
def _pickled_by_value(*modules: ModuleType | None) -> Iterator[None]:
    registered = []
    for module in modules:
        if module is None:
            continue
        try:
            cloudpickle.register_pickle_by_value(module)
        except ValueError:  # already registered, or not importable by name
            continue
        registered.append(module)
    try:
        yield
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


def code_locations(function: Callable[..., Any]) -> dict[str, str]:
    """``{code name: source file}`` for the function, its nested code and the functions
    of its globals that it calls: cloudpickle drops file names, so remote tracebacks
    name ``<dynamic-code>``; this lets the submit side show the source lines again."""
    found: dict[str, str] = {}
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        code = getattr(obj, "__code__", None)
        if code is None or id(code) in seen or depth > 3:
            return
        seen.add(id(code))
        stack = [code]
        while stack:
            c = stack.pop()
            found.setdefault(c.co_name, c.co_filename)
            stack.extend(k for k in c.co_consts if hasattr(k, "co_filename"))
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                walk(cell.cell_contents, depth + 1)
            except ValueError:  # an empty cell
                continue
        module_globals = getattr(obj, "__globals__", {})
        for name in code.co_names:
            candidate = module_globals.get(name)
            if callable(candidate) and hasattr(candidate, "__code__"):
                walk(candidate, depth + 1)

    walk(function, 0)
    return found


def restore_source_lines(traceback_text: str, locations: dict[str, str]) -> str:
    """Put file names and source lines back into a remote traceback's dynamic frames."""
    import linecache
    import re

    pattern = re.compile(r'^(\s*)File "<dynamic-code>", line (\d+), in (\S+)$')
    out: list[str] = []
    for line in traceback_text.splitlines():
        m = pattern.match(line)
        filename = locations.get(m.group(3)) if m else None
        if m is None or filename is None:
            out.append(line)
            continue
        indent, lineno = m.group(1), int(m.group(2))
        out.append(f'{indent}File "{filename}", line {lineno}, in {m.group(3)}')
        source = linecache.getline(filename, lineno).strip()
        if source:
            out.append(f"{indent}  {source}")
    return "\n".join(out) + ("\n" if traceback_text.endswith("\n") else "")


def dump_function(function: Callable[..., Any], kwargs: dict[str, Any], path: Path, *,
                  setup: Callable[[], Any] | None = None,
                  batch_size: int | None = None) -> int:
    """Pickle the function, its keyword arguments, the per-job ``setup`` and the
    ``batch_size`` to ``path``; raise :class:`PickleError` with the fix."""
    if not callable(function):
        raise TypeError(f"the function to map must be callable, not {type(function).__name__}")
    if setup is not None and not callable(setup):
        raise TypeError(f"setup must be a function that takes no arguments (use "
                        f"functools.partial for its arguments), not {type(setup).__name__}")
    content: Any = (function, kwargs) if setup is None and batch_size is None else {
        "function": function, "kwargs": kwargs, "setup": setup, "batch_size": batch_size}
    by_value = {_by_value_module(function), _by_value_module(setup) if setup else None}
    try:
        with _pickled_by_value(*by_value):
            body = cloudpickle.dumps(content, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        name = getattr(function, "__qualname__", repr(function))
        also = " and the set-up" if setup is not None else ""
        raise PickleError(
            f"cannot send {name}{also} to the pool: {type(exc).__name__}: {exc}. The "
            f"function, its keyword arguments{also} and everything they refer to (globals, "
            f"closures) must be picklable: open files, locks, sockets and live connections "
            f"are not. Create such objects inside the function instead (or in setup=, "
            f"which runs once per job).") from exc
    write_payload(str(path), payload_header(), body)
    return len(body)


def dump_items(items: Sequence[tuple[int, Any]], path: Path) -> None:
    """Pickle the ``(index, argument)`` pairs of one job to ``path``; the header names the
    items (as ``[first, count]`` when they are a run, so it stays small)."""
    try:
        body = cloudpickle.dumps(list(items), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        first = items[0][0] if items else "?"
        raise PickleError(f"cannot pickle the inputs of items starting at {first}: "
                          f"{type(exc).__name__}: {exc}") from exc
    indexes = [i for i, _ in items]
    contiguous = bool(indexes) and indexes == list(range(indexes[0],
                                                          indexes[0] + len(indexes)))
    where = ({"span": [indexes[0], len(indexes)]} if contiguous and len(indexes) > 1
             else {"items": indexes})
    write_payload(str(path), payload_header(**where), body)
