"""Reading a map's results: values, errors, holds, output files and set-up figures.

:class:`MapResults` is the part of :class:`~htcml_jupyter.engine.mapping.Map` that reads
what jobs left behind (through :class:`~htcml_jupyter.engine.outcomes.OutcomeReader`);
it never changes jobs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .chunking import call_key
from .errors import HTCMLError, MapError, RemoteError, WaitTimeout
from .folder_files import inside
from .outcomes import OutcomeReader
from .state import ItemState, TaskStatus, TaskTable
from .store import MapStore

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
    """Results, errors, output files and set-up figures (mixed into ``Map``)."""

    if TYPE_CHECKING:  # provided by Map
        store: MapStore
        meta: dict[str, Any]
        n_items: int
        _lock: threading.RLock
        _table: TaskTable
        _outcomes: OutcomeReader

        @property
        def name(self) -> str: ...

        def refresh(self) -> bool: ...

        def item_states(self) -> list[ItemState]: ...

        def status(self) -> dict[str, int]: ...

        def wait(self, timeout: float | None = None, poll: float = 0.2) -> bool: ...

        def _check_queue(self) -> None: ...

        def _check_index(self, item: int) -> None: ...

        def _status_of(self, item: int) -> TaskStatus: ...

        def _item_state(self, item: int, status: TaskStatus) -> ItemState: ...

        def _error_of(self, item: int, state: ItemState) -> HTCMLError: ...

        def _value_of(self, item: int) -> Any: ...

    @property
    def errors(self) -> dict[int, RemoteError]:
        """Items whose function raised: ``{item: RemoteError}`` with the remote traceback."""
        states = self.item_states()
        with self._lock:
            out = {}
            for i, s in enumerate(states):
                if s is ItemState.FAILED:
                    err = self._error_of(i, s)
                    if isinstance(err, RemoteError):
                        out[i] = err
            return out

    @property
    def holds(self) -> dict[int, str]:
        """Items whose job is on hold: ``{item: HTCondor's hold reason}``."""
        states = self.item_states()
        with self._lock:
            return {i: self._table.tasks[self._table.item_task[i]].hold_reason or "held"
                    for i, s in enumerate(states) if s is ItemState.HELD}

    def results(self, errors: ErrorMode = "raise", timeout: float | None = None) -> list[Any]:
        """Every item's result, in item order (waits for the map first).

        With ``errors="raise"`` a :class:`MapError` names every item without a result
        (its ``.errors`` holds each one); with ``errors="return"`` such items give their
        error object (:class:`RemoteError`, :class:`ItemHeld`, :class:`ItemRemoved`).
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
        if not self.wait(timeout):
            raise WaitTimeout(f"map {self.name!r} is not finished after {timeout} s: "
                              f"{self.status()}")
        states = self.item_states()
        with self._lock:
            out: list[Any] = []
            failures: dict[int, HTCMLError] = {}
            for i, s in enumerate(states):
                try:
                    if s is ItemState.DONE:
                        out.append(self._value_of(i))
                        continue
                    err = self._error_of(i, s)
                except RemoteError as unreadable:  # a result that cannot be unpickled here
                    err = unreadable
                failures[i] = err
                out.append(err)
        if failures and errors == "raise":
            raise MapError(self.name, failures, self.n_items)
        return out

    def error(self, item: int) -> HTCMLError | None:
        """Why ``item`` has no result (RemoteError, ItemHeld, ItemRemoved), or None when it
        is done or still pending.  Reads the state known now; ``refresh()`` reads more."""
        self._check_index(item)
        with self._lock:
            status = self._table.tasks[self._table.item_task[item]]
            state = self._item_state(item, status)
            if state is ItemState.DONE or not state.settled:
                return None
            return self._error_of(item, state)

    def result(self, item: int) -> Any:
        """One item's result (raises its error when it has none)."""
        self._check_index(item)
        state = self.item_states()[item]
        with self._lock:
            if state is ItemState.DONE:
                return self._value_of(item)
            if not state.settled:
                raise HTCMLError(f"item {item} is still {state.value}")
            raise self._error_of(item, state)

    def result_bytes(self, item: int) -> bytes:
        """One done item's result still pickled, as its job wrote it: for passing it on
        (a workflow's next stage) without running the job's pickle here.  Raises the
        item's error when it has no result."""
        self._check_index(item)
        state = self.item_states()[item]
        with self._lock:
            if state is ItemState.DONE:
                return self._outcomes.value_bytes(self._status_of(item), item)
            if not state.settled:
                raise HTCMLError(f"item {item} is still {state.value}")
            raise self._error_of(item, state)

    def as_completed(self, timeout: float | None = None, errors: ErrorMode = "raise",
                     poll: float = 0.2) -> Iterator[tuple[int, Any]]:
        """Yield ``(item, result)`` as items finish, in finishing order.

        A failed, held or removed item raises its error (``errors="raise"``) or is
        yielded with the error object as its result (``errors="return"``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: set[int] = set()
        finished_jobs: set[int] = set()  # every item of these was yielded: not looked at
        while len(seen) < self.n_items:
            self.refresh()
            with self._lock:
                ready = []
                for status in list(self._table.tasks.values()):
                    if status.task in finished_jobs or status.phase.value in ("idle",
                                                                              "running"):
                        continue
                    finished_jobs.add(status.task)
                    for i in self._table.item_task.current(status.task, status.items):
                        if i not in seen:
                            ready.append((i, self._item_state(i, status)))
            for i, s in ready:
                seen.add(i)
                try:
                    with self._lock:
                        if s is ItemState.DONE:
                            value = self._value_of(i)
                        else:
                            err = self._error_of(i, s)
                except RemoteError as unreadable:  # a result that cannot be unpickled here
                    err, s = unreadable, ItemState.FAILED
                if s is ItemState.DONE:
                    yield i, value
                    continue
                if errors == "raise":
                    raise err
                yield i, err
            if len(seen) >= self.n_items:
                return
            self._check_queue()
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"{self.n_items - len(seen)} items of {self.name!r} "
                                  f"unfinished after {timeout} s")
            time.sleep(poll)

    def iter_results(self, errors: ErrorMode = "raise", timeout: float | None = None,
                     poll: float = 0.2) -> Iterator[Any]:
        """Each item's result in item order, as soon as it is there: a job's outcome is
        read once and only a few jobs' records are held at a time, so a million results
        can be consumed without holding them all.  ``errors`` as in :meth:`results`."""
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        for item in range(self.n_items):
            while True:
                with self._lock:
                    state = self._item_state(item, self._status_of(item))
                if state.settled:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"item {item} of {self.name!r} is not finished after "
                                      f"{timeout} s")
                time.sleep(poll)
                self.refresh()
                self._check_queue()
            with self._lock:
                try:
                    if state is ItemState.DONE:
                        yield self._value_of(item)
                        continue
                    err = self._error_of(item, state)
                except RemoteError as unreadable:
                    err = unreadable
            if errors == "raise":
                raise err
            yield err

    # ------------------------------------------------------------------ files
    def call_of(self, item: int) -> int:
        """The first item of the call that handles ``item``: itself, or with
        ``batch_size`` the first item of its batch (in its job's latest attempt)."""
        self._check_index(item)
        batch = self.meta.get("batch_size")
        if not batch:
            return item
        with self._lock:
            status = self._status_of(item)
            calls = self._outcomes.header(status.task).get("calls")  # as the job made them
        return call_key(status.items, item, calls, batch)

    def output_files(self, item: int) -> list[Path | str]:
        """The files that the call handling ``item`` wrote under ``output_dir()``: local
        paths in the map's folder, or paths/URLs under the map's ``output_destination``
        (for a batch, the batch's files).  Empty until the item's job has finished."""
        self._check_index(item)
        self.refresh()
        with self._lock:
            status = self._status_of(item)
            record = self._outcomes.records(status.task).get(item) or {}
        names = [str(n) for n in record.get("files", ())]
        if not names:
            return []
        key = str(record.get("call", self.call_of(item)))
        destination = self.meta["options"].get("output_destination")
        if destination:
            base = f"{str(destination).rstrip('/')}/task-{status.task}"
            if "://" in base:  # names a job reported never climb out of the destination
                return [f"{base}/{inside(Path('/'), key, name).relative_to('/')}"
                        for name in names]
            return [inside(Path(base), key, name) for name in names]
        folder = self.store.files_folder(status.task)
        return [inside(folder, key, name) for name in names]

    def setup_stats(self) -> list[SetupRun]:
        """Every run of the map's ``setup=`` function so far: one per job start that had
        items left (a job restarted after an eviction or checkpoint runs it again)."""
        self.refresh()
        with self._lock:
            runs = []
            for status in self._table.tasks.values():
                for run in self._outcomes.header(status.task).get("setup_runs", ()):
                    runs.append(SetupRun(status.task, status.job_id, str(run.get("host")),
                                         float(run["started"]), float(run["seconds"])))
            return runs
