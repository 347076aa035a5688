"""Reading a map's HTCondor job event log: every event becomes a
:class:`~htcml_jupyter.engine.state.TaskEvent` for the job's task.

The log is XML (``log_xml = true``): the bindings parse chirp attribute updates (live
reports) correctly only in that format.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from ..engine.state import EventKind, TaskEvent
from ..engine.store import MapStore
from ..jobside import wire
from .bindings import bindings_held

_EVENT_KINDS = {
    "SUBMIT": EventKind.SUBMITTED,
    "EXECUTE": EventKind.STARTED,
    "JOB_EVICTED": EventKind.EVICTED,
    "JOB_RECONNECT_FAILED": EventKind.EVICTED,
    "JOB_HELD": EventKind.HELD,
    "JOB_RELEASED": EventKind.RELEASED,
    "JOB_TERMINATED": EventKind.FINISHED,
    "JOB_ABORTED": EventKind.REMOVED,
}

_HOST = re.compile(r"alias=([^&>]+)")


def explain_hold(reason: str) -> str:
    """HTCondor's hold reason, with the fix added where the cause is a known one."""
    if "Failed to execute" in reason and "No such file or directory" in reason:
        return (f"{reason} -- the execute machine has no such interpreter: it does not "
                f"share this machine's files. Use environment='pack' (or 'auto'), an "
                f"archive from `htcml env pack`, or container_image=...")
    return reason


def _detail(kind: EventKind, event: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {"job_id": f"{event.cluster}.{event.proc}"}
    if kind is EventKind.STARTED:
        host = str(event.get("ExecuteHost", ""))
        m = _HOST.search(host)
        detail["host"] = m.group(1) if m else str(event.get("SlotName", host))
    elif kind is EventKind.HELD:
        detail["reason"] = explain_hold(str(event.get("HoldReason", "held")))
        code = event.get("HoldReasonCode")
        detail["code"] = int(code) if code is not None else None
    elif kind is EventKind.FINISHED:
        if event.get("TerminatedNormally", True):
            detail["exit_code"] = int(event.get("ReturnValue", 0))
        else:
            detail["exit_code"] = -int(event.get("TerminatedBySignal", 1))
        detail["usage"] = usage_from_event(event)
    elif kind is EventKind.REMOVED:
        detail["reason"] = str(event.get("Reason", "removed"))
    return detail


# ------------------------------------------------------------------ usage
#: Usage fields (see :class:`~htcml_jupyter.engine.usage.JobUsage`) and the attribute
#: that carries each, in a terminate event and in a job ad alike, with the factor to MB
#: (memory is in MB, disk in KiB).
_USAGE_ATTRIBUTES: dict[str, tuple[str, float]] = {
    "cpus_requested": ("RequestCpus", 1), "cpus_allocated": ("Cpus", 1),
    "cpus_used": ("CpusUsage", 1),
    "memory_requested_mb": ("RequestMemory", 1), "memory_allocated_mb": ("Memory", 1),
    "memory_mb": ("MemoryUsage", 1),
    "disk_requested_mb": ("RequestDisk", 1 / 1024), "disk_allocated_mb": ("Disk", 1 / 1024),
    "disk_mb": ("DiskUsage", 1 / 1024),
    "gpus_requested": ("RequestGPUs", 1), "gpus_allocated": ("GPUs", 1),
    "gpus_used": ("GPUsUsage", 1), "gpu_memory_mb": ("GPUsMemoryUsage", 1),
}
#: In a job ad, what is allocated is ``<Resource>Provisioned``.
_AD_ALLOCATED = {"cpus_allocated": "CpusProvisioned", "memory_allocated_mb": "MemoryProvisioned",
                 "disk_allocated_mb": "DiskProvisioned", "gpus_allocated": "GPUsProvisioned"}
#: The job-ad attributes :func:`usage_from_ad` reads (a ``Schedd.query`` projection).
USAGE_PROJECTION = sorted({a for a, _ in _USAGE_ATTRIBUTES.values()} | set(_AD_ALLOCATED.values())
                          | {"ClusterId", "ProcId", "RemoteUserCpu", "RemoteSysCpu",
                             "JobCurrentStartDate", "JobStatus", "ResidentSetSize"})
_RUSAGE = re.compile(r"Usr (\d+) (\d+):(\d+):(\d+), Sys (\d+) (\d+):(\d+):(\d+)")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN: not reported


def _value(record: Any, key: str) -> Any:
    """An attribute's value; an expression (a job ad's ``MemoryUsage`` is
    ``(ResidentSetSize + 1023) / 1024``) is evaluated in its ad."""
    evaluate = getattr(record, "eval", None)
    if evaluate is not None:
        try:
            return evaluate(key)
        except Exception:
            return None
    return record.get(key)


def _lookup(record: Any) -> dict[str, Any]:
    """A record's attributes by lower-case name (ClassAd names ignore case)."""
    return {str(k).lower(): _value(record, str(k)) for k in record.keys()}


def _fields(values: dict[str, Any], names: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for field, (attribute, factor) in _USAGE_ATTRIBUTES.items():
        number = _number(values.get(names.get(field, attribute).lower()))
        if number is not None:
            out[field] = number * factor
    return out


def rusage_seconds(text: str) -> float | None:
    """User plus system seconds in an event's usage text,
    ``"Usr 0 00:00:04, Sys 0 00:00:01"`` (days, then hours:minutes:seconds)."""
    m = _RUSAGE.search(text or "")
    if not m:
        return None
    n = [int(g) for g in m.groups()]
    return float(sum(d * 86400 + h * 3600 + mi * 60 + s
                     for d, h, mi, s in (n[:4], n[4:])))


def usage_from_event(event: Any) -> dict[str, float]:
    """What a terminate event says the job used, requested and was allocated (the
    "Usage / Request / Allocated" table), as :class:`~htcml_jupyter.engine.usage.JobUsage`
    fields: CPU seconds (user plus system, every run of the job), memory and disk in MB,
    CPUs and GPUs (``cpus_used``, ``gpus_used``: average use where HTCondor measures it)."""
    values = _lookup(event)
    out = _fields(values, {})
    cpu = rusage_seconds(str(values.get("totalremoteusage", "")))
    if cpu is not None:
        out["cpu_seconds"] = cpu
    return out


def usage_from_ad(ad: Any, now: float | None = None) -> dict[str, float]:
    """The same fields from a running job's ad (:data:`USAGE_PROJECTION`): figures so far,
    as the starter last sent them, and ``wall_seconds`` of the current run."""
    values = _lookup(ad)
    out = _fields(values, _AD_ALLOCATED)
    user, system = _number(values.get("remoteusercpu")), _number(values.get("remotesyscpu"))
    if user is not None or system is not None:
        out["cpu_seconds"] = (user or 0.0) + (system or 0.0)
    start = _number(values.get("jobcurrentstartdate"))
    if start:
        out["wall_seconds"] = max(0.0, (time.time() if now is None else now) - start)
    return out


#: Seconds a log's tail may stay an unfinished event before the log counts as cut short.
CUT_AFTER = 5.0

#: How an event ends in each log format: XML (``</c>``) and the classic text format.
_EVENT_ENDS = (b"</c>\n", b"\n...\n")
_TAIL = 1 << 16


def _type_name(event: Any) -> str:
    """The event's type name; ``""`` for a type newer than these bindings (they raise
    ``ValueError`` on its number), which is skipped as any other unknown event."""
    try:
        return str(event.type.name)
    except ValueError:
        return ""


def _offset(log: Any) -> int:
    """Where a ``JobEventLog`` stands in its file (the offset its pickled state keeps)."""
    return int(log.__getstate__()[1])


def _seek(log: Any, offset: int) -> None:
    """Move a ``JobEventLog`` to ``offset`` (as unpickling it does)."""
    state, _ = log.__getstate__()
    log.close()
    log.__setstate__((state, offset))


def _complete_until(path: Path, start: int) -> tuple[int, int]:
    """The size of the log at ``path`` and the offset just after its last whole event
    (``start`` when none ends after it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return start, start
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        at = max(start, size - _TAIL)
        while True:  # the last bytes first: a log of many events is not read twice
            f.seek(at)
            tail = f.read(size - at)
            ends = [tail.rfind(m) + len(m) for m in _EVENT_ENDS if m in tail]
            if ends or at == start:
                return at + len(tail), (at + max(ends) if ends else start)
            at = start


def _read_until(log: Any, end: int) -> list[Any]:
    """The events of ``log`` that end by ``end``; it is left just after the last one
    (the file may have grown meanwhile: an event read past ``end`` is read again)."""
    events: list[Any] = []
    good = _offset(log)
    for event in log.events(stop_after=0):
        after = _offset(log)
        if after > end:
            break
        events.append(event)
        good = after
    if _offset(log) != good:
        _seek(log, good)
    return events


class CondorEventReader:
    """Reads new events from a map's job event log and names the task of each."""

    def __init__(self, store: MapStore):
        self.store = store
        self._log: Any = None
        self._job_task: dict[tuple[int, int], int] = {}
        self._clusters: set[int] = set()
        #: True once the log could not be read (damaged or deleted).
        self.damaged = False
        self._inode: int | None = None
        #: (size, first seen) of a log whose tail is not a whole event
        self._cut: tuple[int, float] | None = None

    def _learn_submissions(self) -> None:
        for sub in self.store.submissions():
            cluster = int(sub["cluster"])
            if cluster not in self._clusters:
                self._clusters.add(cluster)
                for proc, task in enumerate(sub["tasks"]):
                    self._job_task[(cluster, proc)] = int(task)

    def job_tasks(self) -> dict[tuple[int, int], int]:
        """``{(cluster, proc): task}`` for every job submitted so far."""
        self._learn_submissions()
        return dict(self._job_task)

    @property
    def clusters(self) -> set[int]:
        self._learn_submissions()
        return set(self._clusters)

    def read(self) -> list[TaskEvent]:
        import htcondor2

        try:
            inode = self.store.event_log.stat().st_ino
        except FileNotFoundError:
            inode = None
        if self._log is not None and inode != self._inode:
            # the log was deleted (and maybe written anew by the shadow): follow the file
            # that is there now
            self.damaged = True
            self._log.close()
            self._log = None
        if self._log is None:
            if inode is None:
                return []
            self._log = htcondor2.JobEventLog(str(self.store.event_log))
            self._inode = inode
        out: list[TaskEvent] = []
        try:
            with bindings_held():  # never while another thread reloads the configuration
                events = self._complete_events(htcondor2)
        except Exception:
            # A damaged log (truncated or corrupted by hand): keep what was read; the
            # queue check and the outcome files settle the jobs it no longer tells about.
            self.damaged = True
            return out
        for event in events:
            name = _type_name(event)
            if name == "ATTRIBUTE_UPDATE":
                report = self._report(event)
                if report is not None:
                    out.append(report)
                continue
            if name == "CLUSTER_REMOVE":
                # Late materialization: jobs never materialized end with their cluster.
                self._learn_submissions()
                out.extend(TaskEvent(task, EventKind.REMOVED, float(event.timestamp),
                                     {"reason": "its cluster was removed"})
                           for (cluster, _), task in self._job_task.items()
                           if cluster == event.cluster)
                continue
            kind = _EVENT_KINDS.get(name)
            if kind is None:
                continue
            key = (event.cluster, event.proc)
            if key not in self._job_task:
                self._learn_submissions()
            task = self._job_task.get(key)
            if task is None:
                continue
            out.append(TaskEvent(task, kind, float(event.timestamp), _detail(kind, event)))
        return out

    def _complete_events(self, htcondor2: Any) -> list[Any]:
        """The new events that the log holds whole.

        The bindings must never meet an event the shadow is half-way through writing:
        they read it as a shorter event, or skip it for good once it is whole, or (cut
        inside an empty list) abort the process.  A tail that is not a whole event is
        left for the next read; one that stays so for :data:`CUT_AFTER` seconds is a log
        cut short, whose whole events are read from a copy that ends before the cut.
        """
        log = self._log
        start = _offset(log)
        size, end = _complete_until(self.store.event_log, start)
        if size == end:
            self._cut = None
            return _read_until(log, end)
        if self._cut is None or self._cut[0] != size:
            self._cut = (size, time.time())
            return []
        if time.time() - self._cut[1] < CUT_AFTER or end == start:
            return []
        self.damaged = True
        with tempfile.TemporaryDirectory(prefix="htcml-events-") as folder:
            copy = Path(folder) / "events.log"
            source = os.open(self.store.event_log, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(source, "rb") as f, open(copy, "wb") as target:
                target.write(f.read(end))
            head = htcondor2.JobEventLog(str(copy))
            state, _ = head.__getstate__()
            head.close()
            head.__setstate__((state, start))
            events = _read_until(head, end)
            head.close()
        _seek(log, end)
        return events

    def _report(self, event: Any) -> TaskEvent | None:
        if event.get("Attribute") != wire.REPORT_ATTRIBUTE:
            return None
        key = (event.cluster, event.proc)
        if key not in self._job_task:
            self._learn_submissions()
        task = self._job_task.get(key)
        if task is None:
            return None
        try:
            value = event.get("Value")
            text = json.loads(value) if isinstance(value, str) and value.startswith('"') else value
            records = json.loads(text)
        except (TypeError, ValueError):
            return None
        return TaskEvent(task, EventKind.REPORTED, float(event.timestamp),
                         {"records": records})

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
