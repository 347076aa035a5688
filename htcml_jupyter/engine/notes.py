"""Notes for people about a map: how its environment was chosen, packing progress.

A note is informational: it goes to the map's log (``logs/notes.log`` in its folder),
to Python's :mod:`logging` at INFO under the ``htcml_jupyter`` logger, and to the panel
(which shows the latest), never to stderr.  Stderr is kept for warnings a person must
act on (:func:`warnings.warn`).

Code that runs while a map's jobs are submitted (the environment's choice and packing)
does not know the map: :func:`recording_notes` names it for the duration, and
:func:`note` files each line there.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator
from pathlib import Path

#: The notes file, under the map folder's ``logs/``.
NOTES_FILE = "notes.log"

_current: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "htcml_notes_folder", default=None)


@contextlib.contextmanager
def recording_notes(folder: Path) -> Iterator[None]:
    """Notes made inside the ``with`` block go to the map whose folder is ``folder``."""
    token = _current.set(folder)
    try:
        yield
    finally:
        _current.reset(token)


def note(text: str, logger: str = "htcml_jupyter") -> None:
    """Log ``text`` at INFO on ``logger`` and add it to the notes of the map being
    submitted, if any (a line the map's folder cannot take is only logged)."""
    logging.getLogger(logger).info(text)
    folder = _current.get()
    if folder is None:
        return
    line = " ".join(text.split())
    try:
        with (folder / "logs" / NOTES_FILE).open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\t{line}\n")
    except OSError:
        pass


def read_notes(folder: Path, last: int | None = None) -> list[str]:
    """The notes of the map in ``folder``, oldest first (the ``last`` ones only when
    given), each ``"<date> <time>  <text>"``."""
    try:
        lines = (folder / "logs" / NOTES_FILE).read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []
    lines = [line.replace("\t", "  ", 1) for line in lines if line.strip()]
    return lines[-last:] if last else lines
