"""What a map's jobs used: wall time, CPU time, memory, disk and GPUs, against what they
requested and were allocated.

HTCondor writes these figures into every terminate event (its "Usage / Request /
Allocated" table); the backend hands them over as the ``usage`` of a FINISHED event's
detail, in the field names of :class:`JobUsage`, and reads the same fields from the job
ads of jobs still running (:meth:`~htcml_jupyter.backends.protocol.Backend.job_usage`).
This module knows nothing of HTCondor: :class:`UsageBook` keeps the figures per job as
events arrive, :class:`MapUsage` sums them and says them in words.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .options import size_in_mb
from .state import EventKind, TaskEvent, TaskPhase, TaskStatus

#: A request counts as too big when every job used under this share of it.
OVERSIZED = 1 / 3


@dataclass(frozen=True)
class JobUsage:
    """What one job used, requested and was allocated.

    Memory and disk are in MB (HTCondor's MB: 1024 * 1024 bytes); ``None`` where the
    pool reported nothing.  ``cpu_seconds`` is user plus system time of every run, in
    whole seconds (as terminate events give it).  ``cpus_used`` and ``gpus_used`` are the
    average number of CPUs and GPUs kept busy, where the pool measures them.  A running
    job's figures (``finished`` False) are those of its job ad so far (HTCondor updates
    memory and disk there while it runs; CPU time often only at the end).
    """

    task: int
    job_id: str | None
    items: int
    finished: bool
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    cpus_requested: float | None = None
    cpus_allocated: float | None = None
    cpus_used: float | None = None
    memory_mb: float | None = None
    memory_requested_mb: float | None = None
    memory_allocated_mb: float | None = None
    disk_mb: float | None = None
    disk_requested_mb: float | None = None
    disk_allocated_mb: float | None = None
    gpus_requested: float | None = None
    gpus_allocated: float | None = None
    gpus_used: float | None = None
    gpu_memory_mb: float | None = None

    @property
    def core_hours(self) -> float:
        """CPUs held times wall time: what a pool charges to the user's fair share."""
        cpus = self.cpus_allocated or self.cpus_requested or 1.0
        return cpus * (self.wall_seconds or 0.0) / 3600

    @property
    def gpu_hours(self) -> float:
        """GPUs held times wall time."""
        gpus = self.gpus_allocated or self.gpus_requested or 0.0
        return gpus * (self.wall_seconds or 0.0) / 3600

    def as_dict(self) -> dict[str, Any]:
        """Every field, plus ``core_hours`` and ``gpu_hours`` (for a table row)."""
        return {**asdict(self), "core_hours": self.core_hours, "gpu_hours": self.gpu_hours}


_FIGURES = {f.name for f in fields(JobUsage)} - {"task", "job_id", "items", "finished"}


class UsageBook:
    """The usage figures of a map's jobs, kept as their events arrive: the wall time of
    every run (start to eviction, hold, removal or exit) and the terminate event's table."""

    def __init__(self) -> None:
        self._started: dict[int, float] = {}
        self._wall: dict[int, float] = {}
        self._final: dict[int, dict[str, float]] = {}
        self._settled: dict[int, JobUsage] = {}  # finished jobs' usage never changes

    def add(self, event: TaskEvent) -> None:
        """Take note of one job event."""
        task = event.task
        self._settled.pop(task, None)
        if event.kind is EventKind.STARTED:
            self._started[task] = event.time
            return
        if event.kind not in (EventKind.EVICTED, EventKind.HELD, EventKind.REMOVED,
                              EventKind.FINISHED):
            return
        start = self._started.pop(task, None)
        if start is not None:
            self._wall[task] = self._wall.get(task, 0.0) + max(0.0, event.time - start)
        if event.kind is EventKind.FINISHED:
            self._final[task] = {k: float(v) for k, v in event.detail.get("usage", {}).items()
                                 if k in _FIGURES}

    def job(self, status: TaskStatus, live: dict[str, float] | None = None,
            now: float | None = None) -> JobUsage | None:
        """The usage of one job: final when it finished, else ``live`` figures from its
        job ad (or only its wall time so far); None for a job that never ran."""
        task = status.task
        settled = self._settled.get(task)
        if settled is not None:
            return settled
        finished = task in self._final
        figures = dict(self._final.get(task, {}) if finished else live or {})
        earlier = self._wall.get(task, 0.0)
        if not finished:
            start = self._started.get(task)
            current = figures.get("wall_seconds")
            if current is None and start is not None:
                current = max(0.0, (time.time() if now is None else now) - start)
            if current is None and task not in self._wall:
                return None  # never ran
            figures["wall_seconds"] = earlier + (current or 0.0)
        elif task in self._wall:
            figures["wall_seconds"] = earlier
        job = JobUsage(task, status.job_id, len(status.items), finished,
                       **{k: v for k, v in figures.items() if k in _FIGURES})
        if finished:
            self._settled[task] = job
        return job


def _peak(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _sum(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def size_text(mb: float) -> str:
    """HTCondor megabytes in words: ``"310 MB"``, ``"0.2 MB"``, ``"2 GB"``."""
    if mb >= 1024:
        return f"{mb / 1024:.1f}".rstrip("0").rstrip(".") + " GB"
    return f"{mb:.1f} MB" if mb < 10 else f"{mb:.0f} MB"


def seconds_text(seconds: float) -> str:
    """``"4 s"``, ``"3 min 05 s"``, ``"2 h 10 min"``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def hours_text(hours: float) -> str:
    """Core- or GPU-hours to a sensible precision: ``"12"``, ``"12.4"``, ``"0.0012"``."""
    if hours >= 10:
        return f"{hours:.0f}"
    if hours >= 0.1 or hours == 0:
        return f"{hours:.1f}"
    return f"{hours:.2g}"


def suggested_size(mb: float) -> str:
    """What to request for a job that used at most ``mb``: half as much again, rounded up
    (to 100 MB below 1 GB, to half a GB above), as a ``request_memory`` value."""
    want = mb * 1.5
    if want <= 900:
        return f"{max(100, math.ceil(want / 100) * 100)}MB"
    half_gbs = math.ceil(want / 512)
    return f"{half_gbs / 2:g}GB"


@dataclass(frozen=True)
class MapUsage:
    """What every job of a map used (:meth:`Map.usage() <htcml_jupyter.Map.usage>`), per
    job and in total; ``jobs_total`` counts the map's jobs, run or not."""

    jobs: list[JobUsage] = field(default_factory=list)
    jobs_total: int = 0

    @classmethod
    def combine(cls, parts: Sequence[MapUsage]) -> MapUsage:
        """The usage of several maps together (a workflow's stages)."""
        return cls([j for p in parts for j in p.jobs], sum(p.jobs_total for p in parts))

    @property
    def finished(self) -> list[JobUsage]:
        return [j for j in self.jobs if j.finished]

    @property
    def running(self) -> list[JobUsage]:
        """Jobs whose figures are partial (still running, or ended without a terminate
        event)."""
        return [j for j in self.jobs if not j.finished]

    @property
    def wall_seconds(self) -> float:
        return sum(j.wall_seconds or 0.0 for j in self.jobs)

    @property
    def cpu_seconds(self) -> float | None:
        return _sum(j.cpu_seconds for j in self.jobs)

    @property
    def core_hours(self) -> float:
        return sum(j.core_hours for j in self.jobs)

    @property
    def gpu_hours(self) -> float:
        return sum(j.gpu_hours for j in self.jobs)

    @property
    def memory_peak_mb(self) -> float | None:
        return _peak(j.memory_mb for j in self.jobs)

    @property
    def disk_peak_mb(self) -> float | None:
        return _peak(j.disk_mb for j in self.jobs)

    def total(self) -> dict[str, Any]:
        """The totals: jobs (finished, running, all), wall and CPU seconds, core- and
        GPU-hours (summed), and the peaks of memory, disk and GPU memory against the
        largest request and allocation."""
        jobs = self.jobs
        return {
            "jobs": self.jobs_total, "finished": len(self.finished),
            "running": len(self.running), "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds, "core_hours": self.core_hours,
            "gpu_hours": self.gpu_hours, "memory_peak_mb": self.memory_peak_mb,
            "memory_requested_mb": _peak(j.memory_requested_mb for j in jobs),
            "memory_allocated_mb": _peak(j.memory_allocated_mb for j in jobs),
            "disk_peak_mb": self.disk_peak_mb,
            "disk_requested_mb": _peak(j.disk_requested_mb for j in jobs),
            "disk_allocated_mb": _peak(j.disk_allocated_mb for j in jobs),
            "gpus_requested": _peak(j.gpus_requested for j in jobs),
            "gpus_used": _peak(j.gpus_used for j in jobs),
            "gpu_memory_peak_mb": _peak(j.gpu_memory_mb for j in jobs),
        }

    def table(self) -> Any:
        """One row per job (:meth:`JobUsage.as_dict`): a pandas DataFrame indexed by
        task when pandas is installed, else a list of dicts."""
        rows = [j.as_dict() for j in self.jobs]
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows).set_index("task") if rows else pd.DataFrame(rows)

    def summary(self) -> str:
        """One line: ``"0.4 core-h, 0.0 GPU-h · CPU time 3 min 05 s · memory peak 310 MB
        of 2 GB asked · disk peak 12 MB of 1 GB asked"``, plus how many jobs are still
        running (their figures so far) or never ran."""
        if not self.jobs:
            return "no job has run yet"
        t = self.total()
        parts = [f"{hours_text(self.core_hours)} core-h, {hours_text(self.gpu_hours)} GPU-h"]
        if t["cpu_seconds"] is not None:
            parts.append(f"CPU time {seconds_text(t['cpu_seconds'])}")
        for what, peak, asked in (("memory", t["memory_peak_mb"], t["memory_requested_mb"]),
                                  ("disk", t["disk_peak_mb"], t["disk_requested_mb"])):
            if peak is not None:
                parts.append(f"{what} peak {size_text(peak)}"
                             + (f" of {size_text(asked)} asked" if asked else ""))
        if t["gpus_used"] is not None:
            parts.append(f"GPU use {t['gpus_used']:.0%} of {t['gpus_requested'] or 0:g} asked")
        if self.running:
            parts.append(f"{len(self.running)} of {self.jobs_total} jobs still running "
                         f"(figures so far)")
        elif len(self.jobs) < self.jobs_total:
            parts.append(f"{self.jobs_total - len(self.jobs)} of {self.jobs_total} jobs "
                         f"have not run")
        return " · ".join(parts)

    def advice(self) -> list[str]:
        """A line per request that every finished job used under a third of, with the
        value to ask for instead, e.g. ``"memory: every job used under 1/3 of 2 GB (peak
        310 MB); ask for request_memory='500MB'"``."""
        done = self.finished
        if not done:
            return []
        who = "every job" if len(done) == self.jobs_total else "every finished job so far"
        out = []
        for what, used, asked, option in (
                ("memory", "memory_mb", "memory_requested_mb", "request_memory"),
                ("disk", "disk_mb", "disk_requested_mb", "request_disk")):
            pairs = [(getattr(j, used), getattr(j, asked)) for j in done]
            if any(u is None or not a for u, a in pairs):
                continue
            peak, request = max(u for u, _ in pairs), min(a for _, a in pairs)
            better = suggested_size(peak)
            if peak < request * OVERSIZED and size_in_mb(better) < request:
                out.append(f"{what}: {who} used under 1/3 of {size_text(request)} (peak "
                           f"{size_text(peak)}); ask for {option}='{better}'")
        for what, used, asked, option in (("CPUs", "cpus_used", "cpus_requested",
                                           "request_cpus"),
                                          ("GPUs", "gpus_used", "gpus_requested",
                                           "request_gpus")):
            pairs = [(getattr(j, used), getattr(j, asked)) for j in done]
            if any(u is None or not a or a <= 1 for u, a in pairs):
                continue
            peak, request = max(u for u, _ in pairs), min(a for _, a in pairs)
            if peak < request * OVERSIZED:
                out.append(f"{what}: {who} kept under 1/3 of {request:g} busy (at most "
                           f"{peak:.2g}); ask for {option}={max(1, math.ceil(peak * 1.25))}")
        return out

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        import html

        lines = [self.summary(), *self.advice()]
        return "<br>".join(html.escape(line) for line in lines)


def map_usage(book: UsageBook, tasks: Sequence[TaskStatus],
              live: dict[str, dict[str, float]] | None = None) -> MapUsage:
    """The usage of the jobs ``tasks`` from ``book``, with ``live`` figures (by job id)
    for the jobs still running."""
    now = time.time()
    jobs = []
    for status in tasks:
        figures = (live or {}).get(status.job_id or "") if status.phase is TaskPhase.RUNNING \
            else None
        job = book.job(status, figures, now)
        if job is not None:
            jobs.append(job)
    return MapUsage(jobs, len(tasks))
