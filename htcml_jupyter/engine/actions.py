"""Acting on a map's jobs: cancel, abort, evict, release and retry.

:class:`MapActions` is the part of :class:`~htcml_jupyter.engine.mapping.Map` that
changes jobs; it acts through the map's backend only (the :class:`Backend` protocol).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .chunking import items_per_job
from .options import SubmitOptions
from .state import EventKind, ItemState, TaskEvent, TaskPhase, TaskStatus, TaskTable
from .store import MapStore
from .submission import read_arguments, submission_lock, submit_tasks, write_tasks

if TYPE_CHECKING:
    from ..backends.protocol import Backend


class MapActions:
    """Cancel, abort, vacate, release and retry (mixed into ``Map``)."""

    if TYPE_CHECKING:  # provided by Map
        store: MapStore
        backend: Backend
        meta: dict[str, Any]
        options: SubmitOptions
        n_items: int
        _lock: threading.RLock
        _table: TaskTable

        @property
        def name(self) -> str: ...

        def refresh(self) -> bool: ...

        def item_states(self) -> list[ItemState]: ...

        def _check_index(self, item: int) -> None: ...

        def _status_of(self, item: int) -> TaskStatus: ...

    def _job_ids(self, phases: tuple[TaskPhase, ...]) -> list[str]:
        return [t.job_id for t in self._table.tasks.values()
                if t.phase in phases and t.job_id is not None]

    def cancel(self) -> None:
        """Remove every unfinished job of the map; finished results stay on disk."""
        self.refresh()
        with self._lock:
            clusters = {int(s["cluster"]) for s in self.store.submissions()}
        self.backend.remove_clusters(self.store, clusters, "cancelled by htcml_jupyter")

    def abort(self, items: Iterable[int], reason: str = "aborted") -> list[int]:
        """Stop unfinished items on purpose (e.g. early stopping): their jobs are removed
        and they are recorded as aborted with ``reason``; returns the items stopped."""
        states = self.item_states()
        with self._lock:
            stopped = []
            job_ids = []
            for item in items:
                self._check_index(item)
                if states[item].settled:
                    continue
                status = self._table.tasks[self._table.item_task[item]]
                self.store.add_abort(item, reason)
                stopped.append(item)
                if status.job_id:
                    job_ids.append(status.job_id)
                else:
                    job_ids.append(self._planned_job_id(status.task))
        ids = [j for j in dict.fromkeys(job_ids) if j]
        if ids:
            self.backend.remove_jobs(self.store, ids, f"aborted by htcml_jupyter: {reason}")
        return stopped

    def _planned_job_id(self, task: int) -> str:
        for sub in self.store.submissions():
            if task in sub["tasks"]:
                return self.backend.job_id(int(sub["cluster"]), sub["tasks"].index(task), task)
        return ""

    @property
    def aborted(self) -> dict[int, str]:
        """Items stopped on purpose with :meth:`abort`: ``{item: reason}``."""
        return self.store.aborted()

    def vacate(self, items: Iterable[int] | None = None) -> int:
        """Evict running jobs (as preemption would): they go back to the queue and run
        again, from their last checkpoint when they save one.  Returns how many."""
        states = self.item_states()
        wanted = range(self.n_items) if items is None else items
        with self._lock:
            ids = {self._table.tasks[self._table.item_task[i]].job_id for i in wanted
                   if states[i] is ItemState.RUNNING}
        ids.discard(None)
        self.backend.vacate(self.store, sorted(j for j in ids if j))
        return len(ids)

    def release(self) -> int:
        """Release held jobs so they run again; returns how many were released."""
        self.refresh()
        with self._lock:
            ids = self._job_ids((TaskPhase.HELD,))
        self.backend.release(self.store, ids)
        return len(ids)

    def retry(self, items: Iterable[int] | None = None) -> list[int]:
        """Run failed, held and removed items again as new jobs; returns their indexes.

        Held jobs are removed first.  ``items`` restricts the retry to those items.  One
        retry at a time (in any process: the map's submission lock): a retry that
        waited for another sees the jobs it queued and does not queue them again.
        """
        wanted = set(range(self.n_items)) if items is None else set(items)
        for i in wanted:
            self._check_index(i)
        with submission_lock(self.store):
            self._load_new_tasks()  # what a retry in another process queued meanwhile
            states = self.item_states()
            again = sorted(i for i in wanted if states[i] in (
                ItemState.FAILED, ItemState.HELD, ItemState.REMOVED))
            if again:
                self._resubmit(again, states)
        return again

    def extend(self, arguments: Sequence[Any],
               on_written: Callable[[list[int]], None] | None = None) -> list[int]:
        """Add items to the map, one job each, queued as one new cluster of the map;
        returns their indexes (numbered on from the last item).

        The same submission path and lock as :meth:`retry`: the new count goes into the
        map's record before its jobs are recorded, so a process that follows the map
        (:meth:`follow_new_items`) never sees a job of an item it does not count.
        ``on_written(indexes)`` is called once the jobs are written, before they are
        queued (to record what the new items are for).
        """
        if not arguments:
            return []
        with submission_lock(self.store):
            self.follow_new_items()
            with self._lock:
                meta = self.store.read_meta()
                first = max(int(meta["n_items"]), self.n_items)
                indexes = list(range(first, first + len(arguments)))
                meta["n_items"] = first + len(arguments)
                self.store.write_meta(meta)
                self.meta, self.n_items = meta, meta["n_items"]
                tasks = write_tasks(self.store, dict(zip(indexes, arguments, strict=True)),
                                    indexes, 1, first_task=self._table.next_task_id())
                for task, chunk in tasks:
                    self._table.add_task(task, chunk)
            if on_written is not None:
                on_written(indexes)
            self._submit_new(tasks, "submitting the new items failed")
        return indexes

    def follow_new_items(self) -> None:
        """Follow the items and jobs that another process added (:meth:`extend`) or
        queued (:meth:`retry`): jobs first, then the count they belong to."""
        self._load_new_tasks()
        n_items = int(self.store.read_meta()["n_items"])
        with self._lock:
            self.n_items = max(self.n_items, n_items)

    def _load_new_tasks(self) -> None:
        """Follow the jobs that another process recorded in the map's folder."""
        with self._lock:
            for task, task_items in self.store.tasks():
                if task not in self._table.tasks:
                    self._table.add_task(task, task_items)
            for task, reason in self.store.unsubmitted().items():
                status = self._table.tasks.get(task)
                if status is not None and status.phase is TaskPhase.IDLE:
                    self._table.apply(TaskEvent(task, EventKind.REMOVED, time.time(),
                                                {"reason": reason}))

    def _resubmit(self, again: list[int], states: list[ItemState]) -> None:
        with self._lock:
            held = [self._status_of(i).job_id for i in again if states[i] is ItemState.HELD]
        held_ids = [j for j in dict.fromkeys(held) if j]
        if held_ids:
            self.backend.remove_jobs(self.store, held_ids, "retried by htcml_jupyter")
        arguments = read_arguments(self.store, again)
        size = self._chunksize_for(len(again))
        with self._lock:
            tasks = write_tasks(self.store, arguments, again, size,
                                first_task=self._table.next_task_id())
            for task, chunk in tasks:
                self._table.add_task(task, chunk)
        self._submit_new(tasks, "submitting the retry failed")

    def _submit_new(self, tasks: list[tuple[int, Sequence[int]]], failure: str) -> None:
        try:
            submit_tasks(self.store, self.backend, tasks, self.options,
                         self.meta.get("batch_name", self.name))
        except BaseException as exc:  # nothing was queued: the new jobs must not wait
            reason = f"{failure}: {exc}"
            new = [task for task, _ in tasks]
            self.store.add_unsubmitted(new, reason)
            with self._lock:
                for task in new:
                    self._table.apply(TaskEvent(task, EventKind.REMOVED, time.time(),
                                                {"reason": reason}))
            raise

    def _chunksize_for(self, n: int) -> int:
        """Items per job of a retry of ``n`` items: as the map was created (whole
        batches)."""
        return items_per_job(self.meta.get("chunksize", 1), n, self.meta.get("batch_size"),
                             lambda: self.backend.capacity(self.options))

