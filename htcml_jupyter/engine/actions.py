"""Acting on a map's jobs: cancel, abort, evict, release, retry and new items.

:class:`MapActions` is the part of a :class:`~htcml_jupyter.engine.mapping.Map` that
changes jobs; it acts through the map's backend only (the :class:`Backend` protocol) and
keeps the map's :class:`~htcml_jupyter.engine.table.MapTable` in step with what it queued.
It reads no events itself: each action that needs the items' states is handed them (or
the handle's ``item_states``) by the handle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .chunking import items_per_job
from .record import MapRecord
from .state import ItemState, TaskPhase
from .store import MapStore
from .submission import read_arguments, submission_lock, submit_tasks, write_tasks
from .table import MapTable

if TYPE_CHECKING:
    from ..backends.protocol import Backend


class MapActions:
    """Cancel, abort, vacate, release, retry and extend one map.

    Parameters
    ----------
    table
        The map's task table: new jobs are added to it, states are read from it.
    store
        The map's folder.
    backend
        Where its jobs run.
    record
        The map's record as the handle read it: its options (retries and new items are
        queued with them), ``chunksize``, ``batch_size`` and ``batch_name``.
    """

    def __init__(self, table: MapTable, store: MapStore, backend: Backend,
                 record: MapRecord):
        self.table = table
        self.store = store
        self.backend = backend
        self.record = record
        self.options = record.options

    def cancel(self) -> None:
        """Remove every unfinished job of the map."""
        clusters = {int(s["cluster"]) for s in self.store.submissions()}
        self.backend.remove_clusters(self.store, clusters, "cancelled by htcml_jupyter")

    def abort(self, items: Iterable[int], states: list[ItemState], reason: str) -> list[int]:
        """Stop the unsettled ``items`` (``states`` as read now); returns them."""
        table = self.table
        with table.lock:
            stopped = []
            job_ids = []
            for item in items:
                table.check_index(item)
                if states[item].settled:
                    continue
                status = table.status_of(item)
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

    def vacate(self, items: Iterable[int] | None, states: list[ItemState]) -> int:
        """Evict the running jobs of ``items`` (all when None); returns how many."""
        wanted = range(self.table.n_items) if items is None else items
        with self.table.lock:
            ids = {self.table.status_of(i).job_id for i in wanted
                   if states[i] is ItemState.RUNNING}
        ids.discard(None)
        self.backend.vacate(self.store, sorted(j for j in ids if j))
        return len(ids)

    def release(self) -> int:
        """Release the held jobs; returns how many."""
        ids = self.table.job_ids((TaskPhase.HELD,))
        self.backend.release(self.store, ids)
        return len(ids)

    def retry(self, items: Iterable[int] | None,
              item_states: Callable[[], list[ItemState]]) -> list[int]:
        """Queue the failed, held and removed ``items`` again (all when None) under the
        map's submission lock; ``item_states`` is the handle's (it reads new events)."""
        wanted = set(range(self.table.n_items)) if items is None else set(items)
        for i in wanted:
            self.table.check_index(i)
        with submission_lock(self.store):
            self.table.load_new_tasks()  # what a retry in another process queued meanwhile
            states = item_states()
            again = sorted(i for i in wanted if states[i] in (
                ItemState.FAILED, ItemState.HELD, ItemState.REMOVED))
            if again:
                self._resubmit(again, states)
        return again

    def extend(self, arguments: Sequence[Any],
               on_written: Callable[[list[int]], None] | None,
               follow_new_items: Callable[[], None]) -> list[int]:
        """Add items, one job each, queued as one new cluster (see ``Map.extend``);
        ``follow_new_items`` is the handle's."""
        if not arguments:
            return []
        table = self.table
        with submission_lock(self.store):
            follow_new_items()
            with table.lock:
                record = self.store.read_record()
                first = max(record.n_items, table.n_items)
                indexes = list(range(first, first + len(arguments)))
                n_items = first + len(arguments)
                self.store.write_record(record.replace(n_items=n_items))
                table.grow(n_items)
                tasks = write_tasks(self.store, dict(zip(indexes, arguments, strict=True)),
                                    indexes, 1, first_task=table.next_task_id())
                table.add_tasks(tasks)
            if on_written is not None:
                on_written(indexes)
            self._submit_new(tasks, "submitting the new items failed")
        return indexes

    def follow_new_items(self) -> None:
        """Follow the jobs and items another process added: jobs first, then the count."""
        self.table.load_new_tasks()
        self.table.grow(self.store.read_record().n_items)

    def _resubmit(self, again: list[int], states: list[ItemState]) -> None:
        with self.table.lock:
            held = [self.table.status_of(i).job_id for i in again
                    if states[i] is ItemState.HELD]
        held_ids = [j for j in dict.fromkeys(held) if j]
        if held_ids:
            self.backend.remove_jobs(self.store, held_ids, "retried by htcml_jupyter")
        arguments = read_arguments(self.store, again)
        size = self._chunksize_for(len(again))
        with self.table.lock:
            tasks = write_tasks(self.store, arguments, again, size,
                                first_task=self.table.next_task_id())
            self.table.add_tasks(tasks)
        self._submit_new(tasks, "submitting the retry failed")

    def _submit_new(self, tasks: list[tuple[int, Sequence[int]]], failure: str) -> None:
        try:
            submit_tasks(self.store, self.backend, tasks, self.options,
                         self.record.batch_name or self.store.name)
        except BaseException as exc:  # nothing was queued: the new jobs must not wait
            reason = f"{failure}: {exc}"
            new = [task for task, _ in tasks]
            self.store.add_unsubmitted(new, reason)
            self.table.mark_unsubmitted(new, reason)
            raise

    def _chunksize_for(self, n: int) -> int:
        """Items per job of a retry of ``n`` items: as the map was created (whole
        batches)."""
        return items_per_job(self.record.chunksize, n, self.record.batch_size,
                             lambda: self.backend.capacity(self.options))
