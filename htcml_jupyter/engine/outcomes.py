"""What a finished job left behind: its outcome file, per item, and its output text.

The job runner writes one outcome file per job (records keyed by item index, format in
:mod:`htcml_jupyter.jobside.wire`); this module reads them back into values and
errors for the :class:`~htcml_jupyter.engine.mapping.Map`.

An outcome file is data: which items succeeded comes from its header line alone, and
the records are JSON.  Only :meth:`OutcomeReader.value` unpickles (one item's value,
when a caller asks for results); an error's pickled exception is unpickled only by
:meth:`RemoteError.original`.  Outcome files of the earlier, pickled format are not
read (their items count as failed, with the reason).
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..jobside.wire import (
    EXIT_ENVIRONMENT_FAILED,
    JOB_LOST,
    MAGIC,
    decode_outcome,
    ok_items,
    read_outcome_header,
    split_item_output,
)
from .errors import HTCMLError, ItemHeld, ItemRemoved, RemoteError
from .payload import restore_source_lines
from .state import ItemState, TaskStatus
from .store import MapStore


def tail(path: Path, limit: int = 4000) -> str:
    """The last ``limit`` characters of a text file ('' when it is missing)."""
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def item_output(path: Path, item: int) -> str:
    """What ``item`` printed in a job's stdout or stderr file."""
    try:
        return split_item_output(path.read_text(errors="replace"), item)
    except OSError:
        return ""


class OutcomeReader:
    """Reads the outcome records of a map's finished jobs.

    The records of the most recently read jobs are cached, up to :attr:`CACHE_RECORDS`
    items, so reading a million results in order reads each job's file once without
    holding every record; which items of each job have no result is kept for all jobs.
    """

    #: Item records kept in memory at most (the newest job's are always kept).
    CACHE_RECORDS = 250_000

    def __init__(self, store: MapStore, code_locations: dict[str, str]):
        self.store = store
        self.code_locations = code_locations
        self._cache: OrderedDict[int, dict[int, dict[str, Any]]] = OrderedDict()
        self._cached = 0
        self._failed: dict[int, frozenset[int]] = {}
        self._headers: dict[int, dict[str, Any]] = {}
        self._problems: dict[int, str] = {}
        self._packed: bool | None = None  # whether the jobs ran a packed environment

    def records(self, task: int) -> dict[int, dict[str, Any]]:
        """``{item: record}`` of one job, values and exceptions as bytes (nothing is
        unpickled); empty while it has no readable outcome (why is kept for
        :meth:`error`).  Nothing in a damaged file escapes as an exception."""
        cached = self._cache.get(task)
        if cached is not None:
            self._cache.move_to_end(task)
            return cached
        path = self.store.output_file(task)
        try:
            header, records = decode_outcome(path.read_bytes())
            outcome = {int(r["index"]): r for r in records}
        except FileNotFoundError:
            return {}
        except Exception as exc:  # a damaged file: truncated, corrupted, hostile
            self._problems[task] = self._problem(path, exc)
            return {}
        self._problems.pop(task, None)
        self._headers[task] = header
        self._cache[task] = outcome
        self._cached += len(outcome)
        while self._cached > self.CACHE_RECORDS and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= len(dropped)
        return outcome

    def failed_items(self, status: TaskStatus) -> frozenset[int]:
        """The items of a finished job that have no result (read once per job, from the
        outcome file's header line alone)."""
        known = self._failed.get(status.task)
        if known is not None:
            return known
        header = self.header(status.task)
        if not header:
            return frozenset(status.items)  # not there yet: read again next time
        try:
            ok = ok_items(header)
        except (TypeError, ValueError, IndexError) as exc:
            self._problems[status.task] = self._problem(self.store.output_file(status.task),
                                                        exc)
            ok = set()
        items = status.items
        if isinstance(items, range) and ok.issuperset(items):
            failed: frozenset[int] = frozenset()
        else:
            failed = frozenset(i for i in items if i not in ok)
        self._failed[status.task] = failed
        return failed

    def header(self, task: int) -> dict[str, Any]:
        """The outcome file's header (host, Python, set-up runs, the items with a value);
        empty when there is none or it is damaged.  Reads the header line only."""
        known = self._headers.get(task)
        if known is not None:
            return known
        path = self.store.output_file(task)
        try:
            with path.open("rb") as f:
                header = read_outcome_header(f)
        except FileNotFoundError:
            return {}
        except Exception as exc:
            self._problems[task] = self._problem(path, exc)
            return {}
        self._problems.pop(task, None)
        self._headers[task] = header
        return header

    @staticmethod
    def _problem(path: Path, exc: Exception) -> str:
        try:
            with path.open("rb") as f:
                old = f.read(len(MAGIC)) == MAGIC
        except OSError:
            old = False
        if old:
            return (f"its outcome file {path} has the earlier, pickled format, which is "
                    f"not read because reading it would run code the job wrote; retry() "
                    f"the map to run it again")
        return f"its outcome file {path} cannot be read ({type(exc).__name__}: {exc})"

    def succeeded(self, status: TaskStatus, item: int) -> bool:
        """Whether ``item`` of a finished job has a result: its own record says so (an
        exit code of 0 alone is not enough)."""
        return item not in self.failed_items(status)

    def value_bytes(self, status: TaskStatus, item: int) -> bytes:
        """The pickled result of a done item, as its job wrote it (not unpickled)."""
        value = self.records(status.task).get(item, {}).get("value")
        if not isinstance(value, bytes):
            raise RemoteError(item, {
                "type": "htcml_jupyter.UnreadableResult",
                "message": f"item {item} finished, but its outcome holds no result",
                "traceback": "", "host": status.host}, status.job_id)
        return value

    def value(self, status: TaskStatus, item: int) -> Any:
        """The result of a done item; :class:`RemoteError` when it cannot be unpickled
        here (a module missing in the notebook, a damaged record)."""
        try:
            return pickle.loads(self.records(status.task)[item]["value"])
        except BaseException as exc:  # unpickling may raise anything, SystemExit too
            if isinstance(exc, KeyboardInterrupt):
                raise
            return_type = type(exc).__name__
            raise RemoteError(item, {
                "type": "htcml_jupyter.UnreadableResult",
                "message": f"item {item} finished, but its result cannot be unpickled "
                           f"here ({return_type}: {exc}); install what it needs in the "
                           f"notebook's environment and read it again",
                "traceback": "", "host": status.host}, status.job_id) from exc

    def error(self, status: TaskStatus, item: int, state: ItemState) -> HTCMLError:
        """Why a settled item has no result."""
        if state is ItemState.HELD:
            return ItemHeld(item, status.hold_reason or "held", status.hold_code,
                            status.job_id)
        if state is ItemState.REMOVED:
            return ItemRemoved(item, status.removed_reason or "removed")
        record = self.records(status.task).get(item)
        if record is None and status.exit_code == EXIT_ENVIRONMENT_FAILED:
            stderr = tail(self.store.stderr_file(status.task))
            said = [line for line in stderr.splitlines() if line.startswith("htcml: ")]
            return RemoteError(item, {
                "type": "htcml_jupyter.EnvironmentFailed",
                "message": said[-1].removeprefix("htcml: ") if said else
                "the job's environment could not start on the execute machine",
                "traceback": stderr, "host": status.host}, status.job_id)
        if record is None:
            problem = self._problems.get(status.task)
            why = (problem if problem is not None else
                   "without writing an outcome for this item" if status.exit_code == 0
                   else "without writing an outcome")
            return RemoteError(item, {
                "type": JOB_LOST,
                "message": f"the job exited with code {status.exit_code}, but {why}; "
                           f"see stderr({item})",
                "traceback": tail(self.store.stderr_file(status.task)),
                "host": status.host}, status.job_id)
        given = record.get("error")
        given = given if isinstance(given, dict) else {
            "type": JOB_LOST, "message": "the job's outcome gives this item neither a "
                                         "value nor an error"}
        error: dict[str, Any] = {key: str(given[key]) for key in
                                 ("type", "message", "host", "python") if key in given}
        error["exception"] = given.get("exception") if isinstance(
            given.get("exception"), bytes) else None
        error["traceback"] = restore_source_lines(str(given.get("traceback", "")),
                                                  self.code_locations)
        if str(error.get("type", "")).endswith("ModuleNotFoundError"):
            error["message"] = str(error.get("message", "")) + self._packing_hint(
                str(error.get("message", "")))
        return RemoteError(item, error, status.job_id)

    def _packing_hint(self, message: str) -> str:
        """How to get a module the packed environment left out into the jobs."""
        if self._packed is None:  # read once: every failed item may ask
            environment = self.store.read_record().environment or {}
            self._packed = environment.get("kind") == "pack"
        if not self._packed:
            return ""
        match = re.search(r"No module named '([\w.]+)'", message)
        name = match.group(1).split(".")[0] if match else "<the package>"
        return (f" (the packed environment holds what the function names, what that "
                f"imports and what those require; add this one with "
                f"pack_include=[{name!r}])")

