"""How the runner calls the mapped function: a set-up once per job, items one at a time
or in batches, per-item files made local, and an output folder per call.

Standard library only: shipped with every job inside ``jobside.pyz``.  :class:`File` is
defined here so that a pickled ``htcml_jupyter.File`` loads on an execute node where the
package is not installed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: How deep :func:`localize` looks for :class:`File` values inside an item
#: (``File``, ``(File, label)``, ``{"image": File}``, ``[[File, ...], ...]``).
MAX_DEPTH = 3


class File:
    """A file or URL that travels with one item (or, as a keyword argument, once with
    every job), instead of inside the pickled inputs.

    ``htcml_jupyter.File("data/img-17.png")`` or ``File("https://host/img-17.png")`` or
    ``File("osdf:///ospool/ap40/data/img-17.png")``: HTCondor transfers it into the job's
    folder (URLs through its file-transfer plugins), and the function receives a
    :class:`pathlib.Path` to the local copy in its place.
    """

    __slots__ = ("source",)

    def __init__(self, source: str | os.PathLike[str]):
        text = os.fspath(source)
        if not isinstance(text, str) or not text:
            raise TypeError(f"File needs a path or URL, not {source!r}")
        self.source = text

    @property
    def is_url(self) -> bool:
        """True for ``scheme://...`` sources (transferred by an HTCondor plugin)."""
        return "://" in self.source and not self.source.startswith("file://")

    @property
    def name(self) -> str:
        """The file's name in the job's folder (the last part of its path)."""
        if self.is_url:
            from urllib.parse import urlparse  # loaded only by a job that has URLs

            path = urlparse(self.source).path
        else:
            path = self.source
        return os.path.basename(path.rstrip("/"))

    def __fspath__(self) -> str:
        return self.source

    def __eq__(self, other: object) -> bool:
        return isinstance(other, File) and other.source == self.source

    def __hash__(self) -> int:
        return hash(("File", self.source))

    def __repr__(self) -> str:
        return f"File({self.source!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (File, (self.source,))


class Pickled:
    """A value passed on still pickled (a workflow stage's result, as the next stage's
    input): it is unpickled in the job that receives it, never on the submit side."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = bytes(data)

    def __repr__(self) -> str:
        return f"Pickled(<{len(self.data)} bytes>)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Pickled, (self.data,))


def find_files(value: Any, depth: int = 0) -> list[File]:
    """Every :class:`File` in ``value`` (itself, or inside lists, tuples and dict values
    down to :data:`MAX_DEPTH`)."""
    if isinstance(value, File):
        return [value]
    if depth >= MAX_DEPTH:
        return []
    if isinstance(value, (list, tuple)):
        return [f for v in value for f in find_files(v, depth + 1)]
    if isinstance(value, dict):
        return [f for v in value.values() for f in find_files(v, depth + 1)]
    return []


def localize(value: Any, folder: str = ".", depth: int = 0) -> Any:
    """``value`` with each :class:`File` replaced by the path of its copy in ``folder``
    (and each :class:`Pickled` by its value)."""
    if isinstance(value, Pickled):
        import pickle

        return localize(pickle.loads(value.data), folder, depth)
    if isinstance(value, File):
        from pathlib import Path

        return Path(os.path.abspath(os.path.join(folder, value.name)))
    if depth >= MAX_DEPTH or not isinstance(value, (list, tuple, dict)):
        return value
    if isinstance(value, dict):
        return {k: localize(v, folder, depth + 1) for k, v in value.items()}
    items = [localize(v, folder, depth + 1) for v in value]
    if isinstance(value, tuple):
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return items


@dataclass
class Payload:
    """What the function file holds: the function, its keyword arguments, the per-job
    set-up and the batch size (None: one item per call)."""

    function: Callable[..., Any]
    kwargs: dict[str, Any]
    setup: Callable[[], Any] | None = None
    batch_size: int | None = None

    @classmethod
    def from_pickled(cls, loaded: Any) -> Payload:
        """Read both forms: ``(function, kwargs)`` and the dict with every field."""
        if isinstance(loaded, dict):
            return cls(loaded["function"], dict(loaded.get("kwargs") or {}),
                       loaded.get("setup"), loaded.get("batch_size"))
        function, kwargs = loaded
        return cls(function, dict(kwargs))


@dataclass
class SetupResult:
    """The value the set-up returned and how long it took."""

    value: Any
    seconds: float


def run_setup(payload: Payload) -> SetupResult | None:
    """Run the set-up once (None when the map has none); its errors propagate."""
    if payload.setup is None:
        return None
    started = time.time()
    value = payload.setup()
    return SetupResult(value, time.time() - started)


def calls_of(items: Sequence[tuple[int, Any]], batch_size: int | None
             ) -> list[list[tuple[int, Any]]]:
    """The items, grouped into the calls the function gets (in order)."""
    size = batch_size or 1
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def call_function(payload: Payload, setup: SetupResult | None,
                  call: list[tuple[int, Any]]) -> list[Any]:
    """Call the function on one call's items (files made local) and return one value per
    item; a batch whose function returns the wrong number of values raises."""
    extra = () if setup is None else (setup.value,)
    arguments = [localize(argument) for _, argument in call]
    if payload.batch_size is None:
        return [payload.function(arguments[0], *extra, **payload.kwargs)]
    values = payload.function(arguments, *extra, **payload.kwargs)
    try:
        count = len(values)
    except TypeError:
        raise TypeError(f"with batch_size={payload.batch_size} the function must return a "
                        f"list with one value per item, not {type(values).__name__}") from None
    if count != len(call):
        raise ValueError(f"with batch_size={payload.batch_size} the function must return "
                         f"one value per item: it got {len(call)} items and returned "
                         f"{count} values")
    return list(values)


def output_folder(root: str, key: int) -> str:
    """The folder the call whose first item is ``key`` writes its output files to."""
    return os.path.join(root, str(key))


def written_files(folder: str) -> list[str]:
    """The files a call wrote (paths relative to its folder, sorted)."""
    found = []
    for base, _, names in os.walk(folder):
        for name in names:
            found.append(os.path.relpath(os.path.join(base, name), folder))
    return sorted(found)
