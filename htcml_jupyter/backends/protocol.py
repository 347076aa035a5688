"""What a map needs from where its jobs run: the :class:`Backend` protocol.

Two backends implement it: :class:`~.condor.CondorBackend` (an HTCondor pool) and
:class:`~.local.LocalBackend` (local processes).  The engine calls nothing else, and
never probes a backend for optional methods: every operation is declared here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..engine.options import SubmitOptions
from ..engine.state import TaskEvent, TaskTable
from ..engine.store import MapStore
from .resources import PoolResources


@dataclass(frozen=True)
class WatcherJob:
    """What a sweep's watcher runs: project code on the submit host, beside the sweep's
    trials, in the sweep's map folder, with this environment and no other (never this
    process's ``CONDOR_CONFIG``).  The backend writes it as a job."""

    executable: str
    arguments: tuple[str, ...]
    environment: dict[str, str] = field(default_factory=dict)


class EventReader(Protocol):
    """Turns what a backend observes (a job event log, an executor's event file) into
    :class:`~htcml_jupyter.engine.state.TaskEvent` values, from where it stopped."""

    def read(self) -> list[TaskEvent]:
        """The events that arrived since the last call."""
        ...

    def close(self) -> None:
        """Stop reading (files are closed; the jobs are untouched)."""
        ...


class Backend(Protocol):
    """Where a map's jobs run (an HTCondor pool or local processes)."""

    #: ``"condor"`` or ``"local"``.
    kind: str
    #: Words for people: "the project's pool", "local processes (2 at a time)".
    description: str
    #: Whether a sweep's watcher can run beside its trials, where they run, after this
    #: process ends (:meth:`submit_watcher`).
    can_run_watcher: bool

    def describe(self) -> dict[str, Any]:
        """JSON-able record from which :func:`~.pools.backend_from_meta` rebuilds it."""
        ...

    @property
    def job_uid(self) -> int | None:
        """The uid jobs run as, when it differs from ours and the map folder must be
        given to it (root submitting to the project's pool); else None."""
        ...

    def check_visible(self, path: Path) -> None:
        """Raise :class:`~htcml_jupyter.PoolUnavailable` when jobs cannot see ``path``
        (a map folder) although this backend needs them to."""
        ...

    def resources(self) -> PoolResources:
        """Slots, CPUs, memory and GPUs, in total and free now."""
        ...

    def capacity(self, options: SubmitOptions) -> int:
        """How many jobs with these resources can run at once (0 when unknown)."""
        ...

    def submit(self, store: MapStore, tasks: list[int], options: SubmitOptions,
               batch_name: str) -> int:
        """Queue one job per task and record the submission in ``store``; return its
        cluster id (local submissions use negative ids)."""
        ...

    def submit_watcher(self, store: MapStore, job: WatcherJob) -> int:
        """Queue ``job``, the watcher of the sweep in ``store``; returns its cluster id.
        Only where :attr:`can_run_watcher`."""
        ...

    def token_directory(self) -> str | None:
        """The folder of IDTOKENS this process presents to the pool, which a watcher run
        as the pool's job user needs too (None when there is none)."""
        ...

    def event_reader(self, store: MapStore) -> EventReader:
        """A reader of the map's job events."""
        ...

    def job_id(self, cluster: int, position: int, task: int) -> str:
        """The id of the job at ``position`` of submission ``cluster`` (holding
        ``task``), before any event named it."""
        ...

    def recover_submissions(self, store: MapStore) -> None:
        """Settle the submissions a dead process noted but never confirmed (see
        :meth:`MapStore.pending_submissions`), so no job is left unfollowed."""
        ...

    def remove_jobs(self, store: MapStore, job_ids: list[str], reason: str) -> None:
        """Remove these jobs of the map (early abort, held jobs before a retry)."""
        ...

    def remove_clusters(self, store: MapStore, clusters: set[int], reason: str) -> None:
        """Remove every job of these submissions of the map (cancel)."""
        ...

    def release(self, store: MapStore, job_ids: list[str]) -> None:
        """Release held jobs so they run again."""
        ...

    def vacate(self, store: MapStore, job_ids: list[str]) -> None:
        """Evict running jobs as preemption would: they go back to the queue."""
        ...

    def queue_check(self, store: MapStore, table: TaskTable) -> list[TaskEvent]:
        """Events the log did not bring for unsettled jobs: ``VANISHED`` for jobs that left
        without a terminal event, ``HELD`` for holds the log missed (asked only after the
        events have been quiet for a long time)."""
        ...

    def job_usage(self, store: MapStore, job_ids: list[str]) -> dict[str, dict[str, float]]:
        """What these running jobs used so far, by job id, as
        :class:`~htcml_jupyter.engine.usage.JobUsage` fields (``cpu_seconds``,
        ``memory_mb``, ``wall_seconds``, what was requested and allocated); jobs it
        knows nothing of are left out (an empty dict where the backend measures nothing)."""
        ...
