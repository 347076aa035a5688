"""Errors as data: a remote Python error, an HTCondor hold, and a map's composite error."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any


class HTCMLError(Exception):
    """Base class of every error htcml_jupyter raises."""


class PoolUnavailable(HTCMLError):
    """No HTCondor pool can be reached (and the local fallback is off)."""


class MapNotFound(HTCMLError, LookupError):
    """No map of that name exists under the map root."""


class WaitTimeout(HTCMLError):
    """``wait(timeout=...)`` ran out before every item settled."""


class RemoteError(HTCMLError):
    """An item's function raised on the execute node.

    Attributes hold the remote type name, message and traceback text, the host and job
    id, so the error is useful even when the original exception class cannot be
    imported here.  In IPython the remote traceback is what gets shown.
    """

    def __init__(self, item: int, record: Mapping[str, Any], job_id: str | None = None):
        self.item = item
        self.type_name: str = str(record.get("type", "Exception"))
        self.message: str = str(record.get("message", ""))
        self.traceback_text: str = str(record.get("traceback", ""))
        self.host: str | None = record.get("host")
        self.python: str | None = record.get("python")
        self.job_id = job_id
        self._exception_bytes: bytes | None = record.get("exception")
        super().__init__(f"item {item} raised {self.short_type}: {self.message}")

    @property
    def short_type(self) -> str:
        return self.type_name.rsplit(".", 1)[-1]

    def original(self) -> BaseException | None:
        """The exception object raised remotely, when it can be unpickled here."""
        if not self._exception_bytes:
            return None
        try:
            exc = pickle.loads(self._exception_bytes)
        except Exception:
            return None
        return exc if isinstance(exc, BaseException) else None

    def _render_traceback_(self) -> list[str]:
        where = f" on {self.host}" if self.host else ""
        job = f", job {self.job_id}" if self.job_id else ""
        head = f"Item {self.item} failed{where}{job}. Remote traceback:"
        return [head, *self.traceback_text.rstrip("\n").splitlines()]

    def __reduce__(self) -> tuple[Any, ...]:
        record = {"type": self.type_name, "message": self.message,
                  "traceback": self.traceback_text, "host": self.host, "python": self.python,
                  "exception": self._exception_bytes}
        return (RemoteError, (self.item, record, self.job_id))


class ItemHeld(HTCMLError):
    """An item's job is on hold in HTCondor: not a Python error, the job is stuck.

    ``reason`` is HTCondor's hold reason; ``release()`` or ``retry()`` on the map acts.
    """

    def __init__(self, item: int, reason: str, code: int | None = None,
                 job_id: str | None = None):
        self.item = item
        self.reason = reason
        self.code = code
        self.job_id = job_id
        super().__init__(f"item {item} is held: {reason}")


class ItemRemoved(HTCMLError):
    """An item's job was removed from the queue before it finished."""

    def __init__(self, item: int, reason: str = "removed"):
        self.item = item
        self.reason = reason
        super().__init__(f"item {item} was removed: {reason}")


class MapError(HTCMLError):
    """Some items of a map did not produce a result; ``errors`` maps each to its error."""

    def __init__(self, map_name: str, errors: Mapping[int, HTCMLError], total: int):
        self.map_name = map_name
        self.errors: dict[int, HTCMLError] = dict(errors)
        self.total = total
        lines = [f"{len(self.errors)} of {total} items of map {map_name!r} gave no result:"]
        for index, err in sorted(self.errors.items())[:20]:
            lines.append(f"  item {index}: {err}")
        if len(self.errors) > 20:
            lines.append(f"  ... and {len(self.errors) - 20} more (see .errors)")
        super().__init__("\n".join(lines))

    def _render_traceback_(self) -> list[str]:
        out = [str(self)]
        first = next((e for e in self.errors.values() if isinstance(e, RemoteError)), None)
        if first is not None:
            out += ["", *first._render_traceback_()]
        return out
