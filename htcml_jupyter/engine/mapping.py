"""The :class:`Map`: a function mapped over inputs as jobs, and its results."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from .actions import MapActions
from .errors import HTCMLError
from .notes import read_notes
from .options import SubmitOptions
from .outcomes import OutcomeReader, item_output
from .reports import ReportBook
from .results import MapResults
from .state import EventKind, ItemState, TaskEvent, TaskPhase, TaskStatus, TaskTable
from .store import MapStore
from .usage import MapUsage, UsageBook, map_usage

if TYPE_CHECKING:
    from ..backends.protocol import Backend

Chunksize = int | Literal["auto"]

#: How long the event log may stay quiet before the queue is asked about missing jobs
#: (seconds; ``HTCML_QUEUE_CHECK_AFTER`` overrides).
VANISHED_CHECK_AFTER = float(os.environ.get("HTCML_QUEUE_CHECK_AFTER", "60"))


class Map(MapActions, MapResults):
    """A function mapped over inputs as jobs; results gather in the map's folder.

    Build one with :func:`htcml_jupyter.map` or rebuild one from disk with
    :func:`htcml_jupyter.attach`.  All methods are safe to call from several threads.
    """

    def __init__(self, store: MapStore, backend: Backend):
        self.store = store
        self.backend = backend
        meta = store.read_meta()
        self.meta = meta
        self.n_items: int = int(meta["n_items"])
        self.options = SubmitOptions.from_record(meta["options"])
        self._lock = threading.RLock()
        self._table = TaskTable()
        self._outcomes = OutcomeReader(store, meta.get("code_locations", {}))
        self._reports = ReportBook()
        self._usage = UsageBook()
        self._environment: dict[str, Any] = {}
        self._start_seconds: list[float] = []  # each of the first jobs' environment start
        self._reader = backend.event_reader(store)
        # With no event log to read (deleted), ask the queue at the first wait.
        self._last_change = time.time() if store.event_log.exists() else 0.0
        if store.pending_submissions(abandoned_only=True):
            try:
                backend.recover_submissions(store)
            except HTCMLError:
                pass  # the pool is down: settled at the next attach
        self._load_tasks()

    # ------------------------------------------------------------------ basics
    @property
    def name(self) -> str:
        """The map's name (its folder's name); ``attach(name)`` finds it again."""
        return self.store.name

    @property
    def clusters(self) -> list[int]:
        """HTCondor cluster ids of every submission of this map (first, then retries)."""
        return [int(s["cluster"]) for s in self.store.submissions()]

    @property
    def environment(self) -> dict[str, Any]:
        """How the map's jobs get Python and packages: ``kind`` (shared, pack, archive,
        container), ``reason``, and for a packed environment its ``archive``, ``size``
        in bytes, ``files``, ``pack_seconds``, whether it was ``cached``, its ``route``
        (``transfer``: sent to every job; ``common``: once per execute point; ``url``),
        ``bytes_sent`` for the map's jobs and ``job_start_seconds`` (median over the
        first jobs that finished); empty until the first submission chose it (and for
        local processes)."""
        if not self._environment:  # chosen once per map: read until it is there
            record = self.store.read_meta().get("environment")
            self._environment = dict(record) if isinstance(record, dict) else {}
        if self._environment.get("kind") in ("pack", "archive"):
            from .costs import SAMPLED_JOBS, job_start_seconds, summarize

            # what the archive costs: bytes sent for the map's jobs (known from the task
            # table, no file read), each job's start (read until the first jobs gave it)
            with self._lock:
                jobs = len(self._table.tasks)
            if len(self._start_seconds) < min(SAMPLED_JOBS, jobs):
                self._start_seconds = job_start_seconds(self.store.path / "logs")
            return summarize(self._environment, jobs, self._start_seconds)
        return dict(self._environment)

    def __len__(self) -> int:
        return self.n_items

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.status().items() if v)
        return f"<Map {self.name!r}: {self.n_items} items on {self.backend.description}; {counts}>"

    def panel(self) -> Any:
        """Show a live progress panel (ipywidgets) for this map; returns it."""
        from ..views.panel import MapPanel

        return MapPanel(self).show()

    def _repr_html_(self) -> str:
        from ..views.progress import render_html, snapshot

        return render_html(snapshot(self))

    def _load_tasks(self) -> None:
        for task, items in self.store.tasks():
            self._table.add_task(task, items)
        for task, reason in self.store.unsubmitted().items():
            self._table.apply(TaskEvent(task, EventKind.REMOVED, time.time(),
                                        {"reason": reason}))

    # ------------------------------------------------------------------ state
    def refresh(self) -> bool:
        """Read new job events; return True when any job changed state."""
        with self._lock:
            changed = False
            for event in self._reader.read():
                if event.kind is EventKind.REPORTED:
                    changed |= self._add_reports(event)
                else:
                    self._usage.add(event)
                    changed |= self._table.apply(event)
            if changed:
                self._last_change = time.time()
            return changed

    def _add_reports(self, event: TaskEvent) -> bool:
        status = self._table.tasks.get(event.task)
        default_item = status.items[0] if status and status.items else None
        self._reports.add(event.detail.get("records", []), default_item,
                          status.evictions if status else 0)
        return True

    @property
    def reports_seen(self) -> int:
        """How many metric reports have arrived so far (all items)."""
        return self._reports.seen

    def reports(self, item: int) -> list[dict[str, Any]]:
        """What ``item`` reported with ``htcml_jupyter.report()``, oldest first: dicts of
        ``step``, ``time`` and the metrics."""
        self._check_index(item)
        self.refresh()
        with self._lock:
            return list(self._reports.metrics.get(item, []))

    def all_reports(self) -> dict[int, list[dict[str, Any]]]:
        """``{item: reports}`` for every item that reported anything."""
        self.refresh()
        with self._lock:
            return {i: list(r) for i, r in self._reports.metrics.items()}

    def checkpoints(self) -> dict[int, dict[str, Any]]:
        """Per item: ``saved``, the step of the last saved checkpoint; ``restored``, the
        step restored at each restart; ``resumed``, the steps it resumed from after an
        eviction; ``evictions``, how often its job was evicted."""
        self.refresh()
        with self._lock:
            out = {}
            for item, task in self._table.item_task.items():
                summary = self._reports.checkpoint_summary(
                    item, self._table.tasks[task].evictions)
                if summary is not None:
                    out[item] = summary
            return out

    def usage(self, live: bool = True) -> MapUsage:
        """What the map's jobs used: per job and in total, wall time, CPU time, peak
        memory and disk, CPUs and GPUs, against what each requested and was allocated.

        Finished jobs' figures come from their terminate events; with ``live``, running
        jobs' figures so far come from their job ads (one query), else only their wall
        time.  ``usage().summary()`` says it in one line, ``usage().advice()`` names the
        requests every job used under a third of, ``usage().table()`` lists the jobs.
        """
        self.refresh()
        with self._lock:
            tasks = [TaskStatus(**vars(t)) for t in self._table.tasks.values()]
        running = [t.job_id for t in tasks if t.phase is TaskPhase.RUNNING and t.job_id]
        figures: dict[str, dict[str, float]] = {}
        if live and running:
            try:
                figures = self.backend.job_usage(self.store, running)
            except HTCMLError:
                figures = {}  # the pool is out of reach: what the events said
        with self._lock:
            return map_usage(self._usage, tasks, figures)

    def notes(self, last: int | None = None) -> list[str]:
        """Notes about the map for people, oldest first (the ``last`` ones when given):
        how its environment was chosen, packing progress.  They are also logged at INFO
        under the ``htcml_jupyter`` logger; its panel shows the latest."""
        return read_notes(self.store.path, last)

    def _check_queue(self) -> None:
        if time.time() - self._last_change < VANISHED_CHECK_AFTER:
            return
        with self._lock:
            self._last_change = time.time()
            self.refresh()
            table = TaskTable()
            for task, status in self._table.tasks.items():
                table.tasks[task] = TaskStatus(**vars(status))
        events = self.backend.queue_check(self.store, table)  # no lock across the query
        with self._lock:
            self.refresh()  # a job may have finished while the queue was asked
            for event in events:
                event = self._outcome_or(event) if event.kind is EventKind.VANISHED else event
                self._usage.add(event)
                self._table.apply(event)

    def _outcome_or(self, vanished: TaskEvent) -> TaskEvent:
        """A job that left the queue unseen but whose outcome came back finished: the
        outcome file, not the missing log entry, says so."""
        records = self._outcomes.records(vanished.task)
        if not records or any(r.get("lost") for r in records.values()):
            return vanished
        failed = any(not r.get("ok") for r in records.values())
        return TaskEvent(vanished.task, EventKind.FINISHED, vanished.time,
                         {"exit_code": 3 if failed else 0})

    def _item_state(self, item: int, status: TaskStatus) -> ItemState:
        if status.phase is TaskPhase.FINISHED:
            return (ItemState.DONE if self._outcomes.succeeded(status, item)
                    else ItemState.FAILED)
        return ItemState(status.phase.value)

    def item_states(self) -> list[ItemState]:
        """The state of every item, in item order."""
        self.refresh()
        with self._lock:
            states = [ItemState.IDLE] * self.n_items
            index = self._table.item_task
            for status in self._table.tasks.values():
                current = index.current(status.task, status.items)
                if status.phase is TaskPhase.FINISHED:
                    failed = self._outcomes.failed_items(status)
                    for item in current:
                        states[item] = ItemState.FAILED if item in failed else ItemState.DONE
                    continue
                state = ItemState(status.phase.value)
                items = status.items
                if isinstance(items, range) and not index.moved_from(status.task, items):
                    states[items.start:items.stop] = [state] * len(items)
                else:
                    for item in current:
                        states[item] = state
            return states

    def status(self) -> dict[str, int]:
        """Counts of items per state: idle, running, done, failed, held, removed."""
        self.refresh()
        with self._lock:
            counts: Counter[str] = Counter()
            index = self._table.item_task
            for status in self._table.tasks.values():
                held = len(status.items) - index.moved_from(status.task, status.items)
                if status.phase is TaskPhase.FINISHED:
                    failed = sum(1 for i in self._outcomes.failed_items(status)
                                 if index.get(i) == status.task)
                    counts[ItemState.DONE.value] += held - failed
                    counts[ItemState.FAILED.value] += failed
                else:
                    counts[status.phase.value] += held
            counts[ItemState.IDLE.value] += self.n_items - len(index)
            return {state.value: counts.get(state.value, 0) for state in ItemState}

    def tasks(self) -> list[TaskStatus]:
        """What is known of each job of the map (one job may hold several items)."""
        self.refresh()
        with self._lock:
            return [TaskStatus(**vars(t)) for t in self._table.tasks.values()]

    def job_of(self, item: int) -> TaskStatus:
        """The job that holds ``item`` now (its latest attempt)."""
        self._check_index(item)
        self.refresh()
        with self._lock:
            return self._table.tasks[self._table.item_task[item]]

    @property
    def done(self) -> bool:
        """True when every item is settled: done, failed, held or removed."""
        return _settled(self.status()) >= self.n_items

    def wait(self, timeout: float | None = None, poll: float = 0.2,
             progress: Callable[[dict[str, int]], None] | None = None) -> bool:
        """Block until every item is done, failed, held or removed.

        ``progress``, when given, is called with :meth:`status` whenever the counts
        change (and once at the start).  Returns True when all items settled, False
        when ``timeout`` seconds ran out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: dict[str, int] | None = None
        while True:
            counts = self.status()
            if progress is not None and counts != last:
                progress(counts)
                last = counts
            if _settled(counts) >= self.n_items:
                return True
            self._check_queue()
            if deadline is not None and time.monotonic() >= deadline:
                return False
            remaining = poll if deadline is None else min(poll, deadline - time.monotonic())
            time.sleep(max(remaining, 0.01))

    # ------------------------------------------------------------------ results
    def _check_index(self, item: int) -> None:
        if not isinstance(item, int) or not 0 <= item < self.n_items:
            raise IndexError(f"item {item!r} is not in this map (0..{self.n_items - 1})")

    def _status_of(self, item: int) -> TaskStatus:
        return self._table.tasks[self._table.item_task[item]]

    def _error_of(self, item: int, state: ItemState) -> HTCMLError:
        return self._outcomes.error(self._status_of(item), item, state)

    def _value_of(self, item: int) -> Any:
        return self._outcomes.value(self._status_of(item), item)

    # ------------------------------------------------------------------ output
    def stdout(self, item: int) -> str:
        """What ``item`` printed to standard output (its part of the job's output)."""
        return item_output(self.store.stdout_file(self.job_of(item).task), self.call_of(item))

    def stderr(self, item: int) -> str:
        """What ``item`` wrote to standard error, remote tracebacks included."""
        return item_output(self.store.stderr_file(self.job_of(item).task), self.call_of(item))

    def close(self) -> None:
        """Stop reading the event log (the jobs and the map's folder are untouched)."""
        self._reader.close()

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _settled(counts: dict[str, int]) -> int:
    return sum(n for state, n in counts.items() if ItemState(state).settled)
