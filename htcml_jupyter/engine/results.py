"""Reading a map's results: values, errors, holds, output files and set-up figures.

:class:`MapResults` is the part of a :class:`~htcml_jupyter.engine.mapping.Map` that
reads what jobs left behind (through
:class:`~htcml_jupyter.engine.outcomes.OutcomeReader`); it never changes jobs and never
reads events itself: the handle refreshes its table first, or hands its ``refresh`` to
the calls that wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .chunking import call_key
from .errors import HTCMLError, RemoteError, WaitTimeout
from .folder_files import inside
from .outcomes import OutcomeReader
from .state import ItemState
from .store import MapStore
from .table import MapTable

ErrorMode = Literal["raise", "return"]


@dataclass(frozen=True)
class SetupRun:
    """One run of a map's per-job set-up: which job, where, when and how long."""

    task: int
    job_id: str | None
    host: str
    started: float
    seconds: float


class MapResults:
    """Results, errors, output files and set-up figures of one map.

    Parameters
    ----------
    table
        The map's task table (states, which job holds each item).
    outcomes
        The reader of its outcome files.
    store
        The map's folder (output files).
    batch_size
        The map's ``batch_size`` (items per call), or None.
    output_destination
        Where jobs send their output files, or None (the map's folder).
    """

    def __init__(self, table: MapTable, outcomes: OutcomeReader, store: MapStore,
                 batch_size: int | None, output_destination: str | None):
        self.table = table
        self.outcomes = outcomes
        self.store = store
        self.batch_size = batch_size
        self.output_destination = output_destination

    # ------------------------------------------------------------ one item
    def value(self, item: int) -> Any:
        """The value of a done item (unpickled here; raises :class:`RemoteError` when it
        cannot be).  The caller knows the item is done: no state is read."""
        with self.table.lock:
            return self.outcomes.value(self.table.status_of(item), item)

    def value_bytes(self, item: int) -> bytes:
        """The still-pickled value of a done item."""
        with self.table.lock:
            return self.outcomes.value_bytes(self.table.status_of(item), item)

    def error_for(self, item: int, state: ItemState) -> HTCMLError:
        """Why ``item``, settled in ``state`` without a result, has none."""
        with self.table.lock:
            return self.outcomes.error(self.table.status_of(item), item, state)

    def error(self, item: int) -> HTCMLError | None:
        """Why ``item`` has no result, or None when it is done or still pending."""
        self.table.check_index(item)
        with self.table.lock:
            state = self.table.item_state(item, self.table.status_of(item))
            if state is ItemState.DONE or not state.settled:
                return None
            return self.error_for(item, state)

    def result(self, item: int, state: ItemState) -> Any:
        """The result of ``item`` in ``state`` (raises its error when it has none)."""
        if state is ItemState.DONE:
            return self.value(item)
        if not state.settled:
            raise HTCMLError(f"item {item} is still {state.value}")
        raise self.error_for(item, state)

    def result_bytes(self, item: int, state: ItemState) -> bytes:
        """As :meth:`result`, the value still pickled."""
        if state is ItemState.DONE:
            return self.value_bytes(item)
        if not state.settled:
            raise HTCMLError(f"item {item} is still {state.value}")
        raise self.error_for(item, state)

    def _outcome(self, item: int, state: ItemState) -> tuple[bool, Any]:
        """(True, value) for a done item, else (False, its error)."""
        try:
            if state is ItemState.DONE:
                return True, self.value(item)
            return False, self.error_for(item, state)
        except RemoteError as unreadable:  # a result that cannot be unpickled here
            return False, unreadable

    # ------------------------------------------------------------ every item
    def errors(self, states: list[ItemState]) -> dict[int, RemoteError]:
        """``{item: RemoteError}`` of the failed items among ``states``."""
        out = {}
        for i, s in enumerate(states):
            if s is ItemState.FAILED:
                err = self.error_for(i, s)
                if isinstance(err, RemoteError):
                    out[i] = err
        return out

    def holds(self, states: list[ItemState]) -> dict[int, str]:
        """``{item: hold reason}`` of the held items among ``states``."""
        with self.table.lock:
            return {i: self.table.status_of(i).hold_reason or "held"
                    for i, s in enumerate(states) if s is ItemState.HELD}

    def collect(self, states: list[ItemState]) -> tuple[list[Any], dict[int, HTCMLError]]:
        """Every item's value or error, and the errors by item."""
        out: list[Any] = []
        failures: dict[int, HTCMLError] = {}
        with self.table.lock:
            for i, s in enumerate(states):
                ok, value = self._outcome(i, s)
                if not ok:
                    failures[i] = value
                out.append(value)
        return out, failures

    def as_completed(self, timeout: float | None, errors: ErrorMode, poll: float,
                     refresh: Callable[[], object], check_queue: Callable[[], None],
                     name: str) -> Iterator[tuple[int, Any]]:
        """``(item, result)`` as items finish (see ``Map.as_completed``); ``refresh`` and
        ``check_queue`` are the handle's."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: set[int] = set()
        finished_jobs: set[int] = set()  # every item of these was yielded: not looked at
        table = self.table
        while len(seen) < table.n_items:
            refresh()
            with table.lock:
                ready = []
                for status in list(table.table.tasks.values()):
                    if status.task in finished_jobs or status.phase.value in ("idle",
                                                                              "running"):
                        continue
                    finished_jobs.add(status.task)
                    for i in table.table.item_task.current(status.task, status.items):
                        if i not in seen:
                            ready.append((i, table.item_state(i, status)))
            for i, s in ready:
                seen.add(i)
                ok, value = self._outcome(i, s)
                if ok:
                    yield i, value
                    continue
                if errors == "raise":
                    raise value
                yield i, value
            if len(seen) >= table.n_items:
                return
            check_queue()
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"{table.n_items - len(seen)} items of {name!r} "
                                  f"unfinished after {timeout} s")
            time.sleep(poll)

    def iter_results(self, errors: ErrorMode, timeout: float | None, poll: float,
                     refresh: Callable[[], object], check_queue: Callable[[], None],
                     name: str) -> Iterator[Any]:
        """Each item's result in item order (see ``Map.iter_results``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        table = self.table
        for item in range(table.n_items):
            while True:
                state = table.item_state(item, table.status_of(item))
                if state.settled:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"item {item} of {name!r} is not finished after "
                                      f"{timeout} s")
                time.sleep(poll)
                refresh()
                check_queue()
            ok, value = self._outcome(item, state)
            if not ok and errors == "raise":
                raise value
            yield value

    # ------------------------------------------------------------ files
    def call_of(self, item: int) -> int:
        """The first item of the call that handles ``item``."""
        self.table.check_index(item)
        if not self.batch_size:
            return item
        with self.table.lock:
            status = self.table.status_of(item)
            calls = self.outcomes.header(status.task).get("calls")  # as the job made them
        return call_key(status.items, item, calls, self.batch_size)

    def output_files(self, item: int) -> list[Path | str]:
        """The files the call handling ``item`` wrote (see ``Map.output_files``)."""
        self.table.check_index(item)
        with self.table.lock:
            status = self.table.status_of(item)
            record = self.outcomes.records(status.task).get(item) or {}
        names = [str(n) for n in record.get("files", ())]
        if not names:
            return []
        key = str(record.get("call", self.call_of(item)))
        destination = self.output_destination
        if destination:
            base = f"{str(destination).rstrip('/')}/task-{status.task}"
            if "://" in base:  # names a job reported never climb out of the destination
                return [f"{base}/{inside(Path('/'), key, name).relative_to('/')}"
                        for name in names]
            return [inside(Path(base), key, name) for name in names]
        folder = self.store.files_folder(status.task)
        return [inside(folder, key, name) for name in names]

    def setup_stats(self) -> list[SetupRun]:
        """Every run of the map's ``setup=`` function so far."""
        runs = []
        for status in self.table.task_list():
            for run in self.outcomes.header(status.task).get("setup_runs", ()):
                runs.append(SetupRun(status.task, status.job_id, str(run.get("host")),
                                     float(run["started"]), float(run["seconds"])))
        return runs
