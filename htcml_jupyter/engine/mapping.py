"""The :class:`Map`: a function mapped over inputs as jobs, and its results.

A ``Map`` holds three parts (:class:`MapParts`): its table (the jobs' states), its reader
of outcomes and its actions.  Its methods delegate; those that read new events go
through :meth:`Map.refresh` and :meth:`Map.wait`, which subclasses extend.  Building a
handle reads the map's folder only: the schedd is first asked at the first refresh.
Every live handle is followed by the process's one monitor thread (``engine.monitor``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import HTCMLError, MapError, RemoteError, WaitTimeout
from .monitor import MONITOR
from .notes import read_notes
from .outcomes import item_output
from .parts import MapParts
from .results import ErrorMode, SetupRun
from .state import ItemState, TaskStatus
from .store import MapStore
from .usage import MapUsage

if TYPE_CHECKING:
    from ..backends.protocol import Backend

Chunksize = int | Literal["auto"]

#: How long the event log may stay quiet before the queue is asked about missing jobs
#: (seconds; ``HTCML_QUEUE_CHECK_AFTER`` overrides).
VANISHED_CHECK_AFTER = float(os.environ.get("HTCML_QUEUE_CHECK_AFTER", "60"))


class Map:
    """A function mapped over inputs as jobs; results gather in the map's folder.

    Build one with :func:`htcml_jupyter.map` or rebuild one from disk with
    :func:`htcml_jupyter.attach`.  All methods are safe to call from several threads.
    """

    def __init__(self, store: MapStore, backend: Backend):
        self.store = store
        self.backend = backend
        #: The map's record (``map.json``) as read when the handle was made: its kind,
        #: options, backend spec, and a sweep's, stage's or run's own part (the item
        #: count as it grows: :attr:`n_items`).
        self.record = store.read_record()
        self.options = self.record.options
        #: Its table, reader of outcomes and actions (:class:`~.parts.MapParts`).
        self.parts = MapParts.build(store, backend, self.record)
        self._environment: dict[str, Any] = {}
        self._start_seconds: list[float] = []  # each of the first jobs' environment start
        MONITOR.register(self)  # the process's one monitor thread follows it while it lives

    # ------------------------------------------------------------------ basics
    @property
    def name(self) -> str:
        """The map's name (its folder's name); ``attach(name)`` finds it again."""
        return self.store.name

    @property
    def n_items(self) -> int:
        """How many items the map has (grows when items are added)."""
        return self.parts.table.n_items

    @property
    def clusters(self) -> list[int]:
        """HTCondor cluster ids of every submission of this map (first, then retries);
        submissions a dead process left unconfirmed are looked up first."""
        self.parts.table.settle_submissions()
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
            self._environment = dict(self.store.read_record().environment or {})
        if self._environment.get("kind") in ("pack", "archive"):
            from .costs import SAMPLED_JOBS, job_start_seconds, summarize

            # what the archive costs: bytes sent for the map's jobs (known from the task
            # table, no file read), each job's start (read until the first jobs gave it)
            jobs = len(self.parts.table.table.tasks)
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

    # ------------------------------------------------------------------ state
    def refresh(self) -> bool:
        """Read new job events; return True when any job changed state."""
        return self.parts.table.refresh()

    @property
    def reports_seen(self) -> int:
        """How many metric reports have arrived so far (all items)."""
        return self.parts.table.reports.seen

    def reports(self, item: int) -> list[dict[str, Any]]:
        """What ``item`` reported with ``htcml_jupyter.report()``, oldest first: dicts of
        ``step``, ``time`` and the metrics."""
        self.parts.table.check_index(item)
        self.refresh()
        return self.parts.table.reports_of(item)

    def all_reports(self) -> dict[int, list[dict[str, Any]]]:
        """``{item: reports}`` for every item that reported anything."""
        self.refresh()
        return self.parts.table.all_reports()

    def checkpoints(self) -> dict[int, dict[str, Any]]:
        """Per item: ``saved``, the step of the last saved checkpoint; ``restored``, the
        step restored at each restart; ``resumed``, the steps it resumed from after an
        eviction; ``evictions``, how often its job was evicted."""
        self.refresh()
        return self.parts.table.checkpoints()

    def usage(self, live: bool = True) -> MapUsage:
        """What the map's jobs used: per job and in total, wall time, CPU time, peak
        memory and disk, CPUs and GPUs, against what each requested and was allocated.

        Finished jobs' figures come from their terminate events; with ``live``, running
        jobs' figures so far come from their job ads (one query), else only their wall
        time.  ``usage().summary()`` says it in one line, ``usage().advice()`` names the
        requests every job used under a third of, ``usage().table()`` lists the jobs.
        """
        self.refresh()
        return self.parts.table.usage(live)

    def notes(self, last: int | None = None) -> list[str]:
        """Notes about the map for people, oldest first (the ``last`` ones when given):
        how its environment was chosen, packing progress.  They are also logged at INFO
        under the ``htcml_jupyter`` logger; its panel shows the latest."""
        return read_notes(self.store.path, last)

    def check_queue(self) -> None:
        """Ask the queue about jobs that left it unseen, once the event log has been
        quiet for :data:`VANISHED_CHECK_AFTER` seconds (``wait`` does this)."""
        self.parts.table.check_queue(VANISHED_CHECK_AFTER, self.refresh)

    def item_states(self) -> list[ItemState]:
        """The state of every item, in item order."""
        self.refresh()
        return self.parts.table.item_states()

    def status(self) -> dict[str, int]:
        """Counts of items per state: idle, running, done, failed, held, removed."""
        self.refresh()
        return self.parts.table.counts()

    def tasks(self) -> list[TaskStatus]:
        """What is known of each job of the map (one job may hold several items)."""
        self.refresh()
        return self.parts.table.task_list()

    def job_of(self, item: int) -> TaskStatus:
        """The job that holds ``item`` now (its latest attempt)."""
        self.parts.table.check_index(item)
        self.refresh()
        return self.parts.table.status_of(item)

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
            self.check_queue()
            if deadline is not None and time.monotonic() >= deadline:
                return False
            remaining = poll if deadline is None else min(poll, deadline - time.monotonic())
            time.sleep(max(remaining, 0.01))

    # ------------------------------------------------------------------ results
    @property
    def errors(self) -> dict[int, RemoteError]:
        """Items whose function raised: ``{item: RemoteError}`` with the remote traceback."""
        return self.parts.results.errors(self.item_states())

    @property
    def holds(self) -> dict[int, str]:
        """Items whose job is on hold: ``{item: HTCondor's hold reason}``."""
        return self.parts.results.holds(self.item_states())

    def results(self, errors: ErrorMode = "raise", timeout: float | None = None) -> list[Any]:
        """Every item's result, in item order (waits for the map first).

        With ``errors="raise"`` a :class:`MapError` names every item without a result
        (its ``.errors`` holds each one); with ``errors="return"`` such items give their
        error object (:class:`RemoteError`, :class:`ItemHeld`, :class:`ItemRemoved`).
        """
        _check_mode(errors)
        if not self.wait(timeout):
            raise WaitTimeout(f"map {self.name!r} is not finished after {timeout} s: "
                              f"{self.status()}")
        out, failures = self.parts.results.collect(self.item_states())
        if failures and errors == "raise":
            raise MapError(self.name, failures, self.n_items)
        return out

    def error(self, item: int) -> HTCMLError | None:
        """Why ``item`` has no result (RemoteError, ItemHeld, ItemRemoved), or None when it
        is done or still pending.  Reads the state known now; ``refresh()`` reads more."""
        return self.parts.results.error(item)

    def result(self, item: int) -> Any:
        """One item's result (raises its error when it has none)."""
        self.parts.table.check_index(item)
        return self.parts.results.result(item, self.item_states()[item])

    def result_bytes(self, item: int) -> bytes:
        """One done item's result still pickled, as its job wrote it: for passing it on
        (a workflow's next stage) without running the job's pickle here.  Raises the
        item's error when it has no result."""
        self.parts.table.check_index(item)
        return self.parts.results.result_bytes(item, self.item_states()[item])

    def as_completed(self, timeout: float | None = None, errors: ErrorMode = "raise",
                     poll: float = 0.2) -> Iterator[tuple[int, Any]]:
        """Yield ``(item, result)`` as items finish, in finishing order.

        A failed, held or removed item raises its error (``errors="raise"``) or is
        yielded with the error object as its result (``errors="return"``).
        """
        return self.parts.results.as_completed(timeout, errors, poll, self.refresh,
                                               self.check_queue, self.name)

    def iter_results(self, errors: ErrorMode = "raise", timeout: float | None = None,
                     poll: float = 0.2) -> Iterator[Any]:
        """Each item's result in item order, as soon as it is there: a job's outcome is
        read once and only a few jobs' records are held at a time, so a million results
        can be consumed without holding them all.  ``errors`` as in :meth:`results`."""
        _check_mode(errors)
        return self.parts.results.iter_results(errors, timeout, poll, self.refresh,
                                               self.check_queue, self.name)

    def call_of(self, item: int) -> int:
        """The first item of the call that handles ``item``: itself, or with
        ``batch_size`` the first item of its batch (in its job's latest attempt)."""
        return self.parts.results.call_of(item)

    def output_files(self, item: int) -> list[Path | str]:
        """The files that the call handling ``item`` wrote under ``output_dir()``: local
        paths in the map's folder, or paths/URLs under the map's ``output_destination``
        (for a batch, the batch's files).  Empty until the item's job has finished."""
        self.parts.table.check_index(item)
        self.refresh()
        return self.parts.results.output_files(item)

    def setup_stats(self) -> list[SetupRun]:
        """Every run of the map's ``setup=`` function so far: one per job start that had
        items left (a job restarted after an eviction or checkpoint runs it again)."""
        self.refresh()
        return self.parts.results.setup_stats()

    def stdout(self, item: int) -> str:
        """What ``item`` printed to standard output (its part of the job's output)."""
        return item_output(self.store.stdout_file(self.job_of(item).task), self.call_of(item))

    def stderr(self, item: int) -> str:
        """What ``item`` wrote to standard error, remote tracebacks included."""
        return item_output(self.store.stderr_file(self.job_of(item).task), self.call_of(item))

    # ------------------------------------------------------------------ actions
    def cancel(self) -> None:
        """Remove every unfinished job of the map; finished results stay on disk."""
        self.refresh()
        self.parts.actions.cancel()

    def abort(self, items: Iterable[int], reason: str = "aborted") -> list[int]:
        """Stop unfinished items on purpose (e.g. early stopping): their jobs are removed
        and they are recorded as aborted with ``reason``; returns the items stopped."""
        return self.parts.actions.abort(items, self.item_states(), reason)

    @property
    def aborted(self) -> dict[int, str]:
        """Items stopped on purpose with :meth:`abort`: ``{item: reason}``."""
        return self.store.aborted()

    def vacate(self, items: Iterable[int] | None = None) -> int:
        """Evict running jobs (as preemption would): they go back to the queue and run
        again, from their last checkpoint when they save one.  Returns how many."""
        return self.parts.actions.vacate(items, self.item_states())

    def release(self) -> int:
        """Release held jobs so they run again; returns how many were released."""
        self.refresh()
        return self.parts.actions.release()

    def retry(self, items: Iterable[int] | None = None) -> list[int]:
        """Run failed, held and removed items again as new jobs; returns their indexes.

        Held jobs are removed first.  ``items`` restricts the retry to those items.  One
        retry at a time (in any process: the map's submission lock): a retry that
        waited for another sees the jobs it queued and does not queue them again.
        """
        return self.parts.actions.retry(items, self.item_states)

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
        return self.parts.actions.extend(arguments, on_written, self.follow_new_items)

    def follow_new_items(self) -> None:
        """Follow the items and jobs that another process added (:meth:`extend`) or
        queued (:meth:`retry`): jobs first, then the count they belong to."""
        self.parts.actions.follow_new_items()

    # ------------------------------------------------------------------ end
    def close(self) -> None:
        """Stop following the map (the jobs and the map's folder are untouched)."""
        MONITOR.unregister(self)
        self.parts.table.close()

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_mode(errors: str) -> None:
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")


def _settled(counts: dict[str, int]) -> int:
    return sum(n for state, n in counts.items() if ItemState(state).settled)
