"""What one process knows of a map's jobs: the task table, read from the job events.

:class:`MapTable` is the part of a :class:`~htcml_jupyter.engine.mapping.Map` that
holds its :class:`~htcml_jupyter.engine.state.TaskTable` under one lock and keeps it up
to date: it reads new job events (:meth:`MapTable.refresh`), settles the submissions a
dead process left unconfirmed (at the first refresh, never when a handle is built), asks
the queue about jobs the event log stopped talking about, and says which state each
item is in.  The other parts (results, actions) take it explicitly and use only the
methods and attributes documented here.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import HTCMLError
from .outcomes import OutcomeReader
from .reports import ReportBook
from .state import EventKind, ItemState, TaskEvent, TaskPhase, TaskStatus, TaskTable
from .store import MapStore
from .usage import MapUsage, UsageBook, map_usage

if TYPE_CHECKING:
    from ..backends.protocol import Backend

#: Seconds between two tries to settle abandoned submissions while the pool is down.
RECOVER_RETRY = 30.0


class MapTable:
    """The task table of one map, its lock, and what reads the jobs' events into it.

    Parameters
    ----------
    store
        The map's folder.
    backend
        Where its jobs run: the event reader comes from it, and the queue is asked
        through it.
    outcomes
        The reader of its outcome files (a finished job's items are done or failed by
        what their outcome says).
    n_items
        How many items the map has now (:meth:`grow` when items are added).

    Every attribute that changes is read and written under :attr:`lock` (re-entrant);
    the methods take it themselves.
    """

    def __init__(self, store: MapStore, backend: Backend, outcomes: OutcomeReader,
                 n_items: int):
        self.store = store
        self.backend = backend
        self.outcomes = outcomes
        #: How many items the map has (grows with ``extend``).
        self.n_items = n_items
        #: The lock every reader and writer of the table holds.
        self.lock = threading.RLock()
        #: The jobs and which item each holds now.
        self.table = TaskTable()
        #: Metric reports and checkpoint notes, per item.
        self.reports = ReportBook()
        #: What finished jobs used (their terminate events).
        self.usage_book = UsageBook()
        self._reader = backend.event_reader(store)
        # With no event log to read (deleted), ask the queue at the first wait.
        self._last_change = time.time() if store.event_log.exists() else 0.0
        # Submissions a dead process noted but never confirmed: settled by the first
        # refresh (a schedd call), so building a handle calls nothing.
        self._unsettled = bool(store.pending_submissions(abandoned_only=True))
        self._settle_after = 0.0
        self._settling = threading.Lock()
        self.load_new_tasks()

    # ------------------------------------------------------------ reading events
    def refresh(self) -> bool:
        """Read new job events (settling abandoned submissions first, once); return
        True when any job changed state."""
        changed = self.settle_submissions()
        with self.lock:
            for event in self._reader.read():
                if event.kind is EventKind.REPORTED:
                    changed |= self._add_reports(event)
                else:
                    self.usage_book.add(event)
                    changed |= self.table.apply(event)
            if changed:
                self._last_change = time.time()
            return changed

    def settle_submissions(self) -> bool:
        """Find the jobs of submissions that a process noted but never confirmed (it
        died while submitting), or record that they were never queued.  Tried once,
        again every :data:`RECOVER_RETRY` seconds while the pool is out of reach;
        returns True when it changed the table."""
        if not self._unsettled or time.monotonic() < self._settle_after:
            return False
        with self._settling:
            if not self._unsettled:
                return False
            try:
                self.backend.recover_submissions(self.store)
            except HTCMLError:  # the pool is down: tried again later
                self._settle_after = time.monotonic() + RECOVER_RETRY
                return False
            self._unsettled = False
        self.load_new_tasks()
        return True

    def _add_reports(self, event: TaskEvent) -> bool:
        status = self.table.tasks.get(event.task)
        default_item = status.items[0] if status and status.items else None
        self.reports.add(event.detail.get("records", []), default_item,
                         status.evictions if status else 0)
        return True

    def load_new_tasks(self) -> None:
        """Follow the jobs recorded in the map's folder that the table does not hold
        yet (another process's retry or new items), and mark the ones never queued."""
        with self.lock:
            for task, task_items in self.store.tasks():
                if task not in self.table.tasks:
                    self.table.add_task(task, task_items)
            for task, reason in self.store.unsubmitted().items():
                status = self.table.tasks.get(task)
                if status is not None and status.phase is TaskPhase.IDLE:
                    self.table.apply(TaskEvent(task, EventKind.REMOVED, time.time(),
                                               {"reason": reason}))

    def add_tasks(self, tasks: Sequence[tuple[int, Sequence[int]]]) -> None:
        """Add new jobs (just written to the folder) to the table."""
        with self.lock:
            for task, items in tasks:
                self.table.add_task(task, items)

    def mark_unsubmitted(self, tasks: list[int], reason: str) -> None:
        """Record that ``tasks`` were never queued (their items count as removed)."""
        with self.lock:
            for task in tasks:
                self.table.apply(TaskEvent(task, EventKind.REMOVED, time.time(),
                                           {"reason": reason}))

    def next_task_id(self) -> int:
        """The number the next new job gets."""
        with self.lock:
            return self.table.next_task_id()

    def grow(self, n_items: int) -> None:
        """The map has ``n_items`` items now (never fewer than before)."""
        with self.lock:
            self.n_items = max(self.n_items, n_items)

    # ------------------------------------------------------------ the queue
    def check_queue(self, quiet_for: float, refresh: Callable[[], bool]) -> None:
        """When the event log has been quiet for ``quiet_for`` seconds, ask the queue
        about jobs that left it unseen; ``refresh`` is the handle's (a subclass may
        read more)."""
        if time.time() - self._last_change < quiet_for:
            return
        with self.lock:
            self._last_change = time.time()
            refresh()
            table = TaskTable()
            for task, status in self.table.tasks.items():
                table.tasks[task] = TaskStatus(**vars(status))
        events = self.backend.queue_check(self.store, table)  # no lock across the query
        with self.lock:
            refresh()  # a job may have finished while the queue was asked
            for event in events:
                event = self._outcome_or(event) if event.kind is EventKind.VANISHED else event
                self.usage_book.add(event)
                self.table.apply(event)

    def _outcome_or(self, vanished: TaskEvent) -> TaskEvent:
        """A job that left the queue unseen but whose outcome came back finished: the
        outcome file, not the missing log entry, says so."""
        records = self.outcomes.records(vanished.task)
        if not records or any(r.get("lost") for r in records.values()):
            return vanished
        failed = any(not r.get("ok") for r in records.values())
        return TaskEvent(vanished.task, EventKind.FINISHED, vanished.time,
                         {"exit_code": 3 if failed else 0})

    # ------------------------------------------------------------ states (no refresh)
    def check_index(self, item: int) -> None:
        """Raise ``IndexError`` unless ``item`` is an item of the map."""
        if not isinstance(item, int) or not 0 <= item < self.n_items:
            raise IndexError(f"item {item!r} is not in this map (0..{self.n_items - 1})")

    def status_of(self, item: int) -> TaskStatus:
        """The job that holds ``item`` now (the table's own record: read it under
        :attr:`lock`)."""
        with self.lock:
            return self.table.tasks[self.table.item_task[item]]

    def item_state(self, item: int, status: TaskStatus) -> ItemState:
        """The state of ``item`` of the job ``status``."""
        if status.phase is TaskPhase.FINISHED:
            return (ItemState.DONE if self.outcomes.succeeded(status, item)
                    else ItemState.FAILED)
        return ItemState(status.phase.value)

    def item_states(self) -> list[ItemState]:
        """The state of every item, in item order, from what was read so far."""
        with self.lock:
            states = [ItemState.IDLE] * self.n_items
            index = self.table.item_task
            for status in self.table.tasks.values():
                current = index.current(status.task, status.items)
                if status.phase is TaskPhase.FINISHED:
                    failed = self.outcomes.failed_items(status)
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

    def counts(self) -> dict[str, int]:
        """Items per state (every :class:`ItemState` named), from what was read so far."""
        with self.lock:
            counts: Counter[str] = Counter()
            index = self.table.item_task
            for status in self.table.tasks.values():
                held = len(status.items) - index.moved_from(status.task, status.items)
                if status.phase is TaskPhase.FINISHED:
                    failed = sum(1 for i in self.outcomes.failed_items(status)
                                 if index.get(i) == status.task)
                    counts[ItemState.DONE.value] += held - failed
                    counts[ItemState.FAILED.value] += failed
                else:
                    counts[status.phase.value] += held
            counts[ItemState.IDLE.value] += self.n_items - len(index)
            return {state.value: counts.get(state.value, 0) for state in ItemState}

    def task_list(self) -> list[TaskStatus]:
        """A copy of every job's record."""
        with self.lock:
            return [TaskStatus(**vars(t)) for t in self.table.tasks.values()]

    def item_tasks(self) -> dict[int, int]:
        """``{item: the job that holds it now}``."""
        with self.lock:
            return dict(self.table.item_task)

    def job_ids(self, phases: tuple[TaskPhase, ...]) -> list[str]:
        """The ids of the jobs in ``phases``."""
        with self.lock:
            return [t.job_id for t in self.table.tasks.values()
                    if t.phase in phases and t.job_id is not None]

    # ------------------------------------------------------------ reports and usage
    def reports_of(self, item: int) -> list[dict[str, Any]]:
        """What ``item`` reported so far, oldest first."""
        with self.lock:
            return list(self.reports.metrics.get(item, []))

    def all_reports(self) -> dict[int, list[dict[str, Any]]]:
        """``{item: reports}`` of every item that reported anything so far."""
        with self.lock:
            return {i: list(r) for i, r in self.reports.metrics.items()}

    def checkpoints(self) -> dict[int, dict[str, Any]]:
        """Per item, what its checkpoints and evictions were (see ``Map.checkpoints``)."""
        with self.lock:
            out = {}
            for item, task in self.table.item_task.items():
                summary = self.reports.checkpoint_summary(item, self.table.tasks[task].evictions)
                if summary is not None:
                    out[item] = summary
            return out

    def usage(self, live: bool) -> MapUsage:
        """What the jobs used (see ``Map.usage``); one queue query when ``live``."""
        tasks = self.task_list()
        running = [t.job_id for t in tasks if t.phase is TaskPhase.RUNNING and t.job_id]
        figures: dict[str, dict[str, float]] = {}
        if live and running:
            try:
                figures = self.backend.job_usage(self.store, running)
            except HTCMLError:
                figures = {}  # the pool is out of reach: what the events said
        with self.lock:
            return map_usage(self.usage_book, tasks, figures)

    def close(self) -> None:
        """Stop reading the event log."""
        self._reader.close()
