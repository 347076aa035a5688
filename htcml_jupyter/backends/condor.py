"""The HTCondor backend: submit a map's jobs as one itemdata cluster, read its event log.

Everything here talks to a real schedd through the ``htcondor2`` bindings.  Job states
come from tailing the map's job event log (:class:`htcondor2.JobEventLog`); the schedd
is only asked about a map's jobs when the log has gone quiet for a long time (to notice
jobs that vanished without a terminal event).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..engine.errors import PoolUnavailable
from ..engine.options import SubmitOptions, size_in_mb
from ..engine.state import EventKind, TaskEvent, TaskTable
from ..engine.store import MapStore
from ..jobside import wire
from .bindings import pool_config
from .resources import PoolResources, collector_resources
from .submit_description import submit_description

T = TypeVar("T")

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


def _detail(kind: EventKind, event: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {"job_id": f"{event.cluster}.{event.proc}"}
    if kind is EventKind.STARTED:
        host = str(event.get("ExecuteHost", ""))
        m = _HOST.search(host)
        detail["host"] = m.group(1) if m else str(event.get("SlotName", host))
    elif kind is EventKind.HELD:
        detail["reason"] = str(event.get("HoldReason", "held"))
        code = event.get("HoldReasonCode")
        detail["code"] = int(code) if code is not None else None
    elif kind is EventKind.FINISHED:
        if event.get("TerminatedNormally", True):
            detail["exit_code"] = int(event.get("ReturnValue", 0))
        else:
            detail["exit_code"] = -int(event.get("TerminatedBySignal", 1))
    elif kind is EventKind.REMOVED:
        detail["reason"] = str(event.get("Reason", "removed"))
    return detail


class CondorEventReader:
    """Reads new events from a map's job event log and names the task of each."""

    def __init__(self, store: MapStore):
        self.store = store
        self._log: Any = None
        self._job_task: dict[tuple[int, int], int] = {}
        self._clusters: set[int] = set()

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

        if self._log is None:
            if not self.store.event_log.exists():
                return []
            self._log = htcondor2.JobEventLog(str(self.store.event_log))
        out: list[TaskEvent] = []
        for event in self._log.events(stop_after=0):
            if event.type.name == "ATTRIBUTE_UPDATE":
                report = self._report(event)
                if report is not None:
                    out.append(report)
                continue
            if event.type.name == "CLUSTER_REMOVE":
                # Late materialization: jobs never materialized end with their cluster.
                self._learn_submissions()
                out.extend(TaskEvent(task, EventKind.REMOVED, float(event.timestamp),
                                     {"reason": "its cluster was removed"})
                           for (cluster, _), task in self._job_task.items()
                           if cluster == event.cluster)
                continue
            kind = _EVENT_KINDS.get(event.type.name)
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


class CondorBackend:
    """Submits to and acts on one HTCondor pool, named by its client configuration.

    Every binding call runs under this pool's configuration (:func:`.bindings.pool_config`),
    so backends of different pools live side by side in one process.
    """

    kind = "condor"

    def __init__(self, config: str | None = None, *, description: str = "",
                 job_uid: int | None = None, shared_paths: list[str] | None = None):
        self.config = config
        self.description = description or (config or "the local HTCondor configuration")
        self._job_uid = job_uid
        self.shared_paths = shared_paths

    @property
    def job_uid(self) -> int | None:
        return self._job_uid

    def describe(self) -> dict[str, Any]:
        return {"backend": "condor", "config": self.config, "description": self.description,
                "job_uid": self._job_uid, "shared_paths": self.shared_paths}

    def _with_schedd(self, action: Callable[[Any, Any], T], what: str) -> T:
        """Run ``action(htcondor2, schedd)`` under this pool's configuration; a failure
        becomes :class:`PoolUnavailable` naming ``what`` was being done."""
        with pool_config(self.config) as htcondor2:
            try:
                schedd = htcondor2.Schedd()
            except Exception as exc:
                raise PoolUnavailable(
                    f"cannot reach the schedd of {self.description}: {exc}. Start the "
                    f"project's pool with `htcml pool up`, or check CONDOR_CONFIG") from exc
            try:
                return action(htcondor2, schedd)
            except PoolUnavailable:
                raise
            except Exception as exc:
                raise PoolUnavailable(f"{what} on {self.description} failed: {exc}") from exc

    def check_reachable(self) -> str:
        """Return the schedd's name, or raise :class:`PoolUnavailable`."""
        def ask(htcondor2: Any, schedd: Any) -> str:
            schedd.query(constraint="false", projection=["ClusterId"])
            return str(htcondor2.param.get("SCHEDD_NAME", "") or htcondor2.param.get(
                "FULL_HOSTNAME", "schedd"))

        return self._with_schedd(ask, "asking the schedd")

    def check_visible(self, path: Path) -> None:
        """Refuse a map folder that jobs of this pool cannot see (rootfs pools)."""
        if self.shared_paths is None or "/" in self.shared_paths:
            return
        real = os.path.realpath(path)
        if not any(real == p or real.startswith(p.rstrip("/") + "/") for p in self.shared_paths):
            raise PoolUnavailable(
                f"the map folder {real} is not visible inside the project's pool (it shares "
                f"{', '.join(self.shared_paths)}). Set HTCML_HOME to a folder under one of "
                f"those, or run `htcml pool up` again with this HTCML_HOME")

    def resources(self) -> PoolResources:
        return collector_resources(self.config, self.description)

    def capacity(self, options: SubmitOptions) -> int:
        """How many jobs with these resources the pool's machines can run at once.

        Counted from each machine's full size (a partitionable slot's totals, static
        slots one each), not from what is free now: busy dynamic slots come and go.
        """
        cpus = options.request_cpus
        mem = max(size_in_mb(options.request_memory), 1)
        gpus = options.request_gpus
        with pool_config(self.config) as htcondor2:
            try:
                ads = htcondor2.Collector().query(
                    htcondor2.AdType.Startd,
                    projection=["SlotType", "Cpus", "Memory", "GPUs", "TotalSlotCpus",
                                "TotalSlotMemory", "TotalSlotGPUs"])
            except Exception:
                return 0
        total = 0
        for ad in ads:
            kind = ad.get("SlotType", "Static")
            if kind == "Dynamic":
                continue  # carved out of a partitionable slot counted below
            prefix = "TotalSlot" if kind == "Partitionable" else ""
            have_cpus = int(ad.get(f"{prefix}Cpus", ad.get("Cpus", 0)) or 0)
            have_mem = int(ad.get(f"{prefix}Memory", ad.get("Memory", 0)) or 0)
            have_gpus = int(ad.get(f"{prefix}GPUs", ad.get("GPUs", 0)) or 0)
            fits = [have_cpus // cpus, have_mem // mem]
            if gpus:
                fits.append(have_gpus // gpus)
            n = min(fits)
            total += n if kind == "Partitionable" else min(n, 1)
        return total

    def submit(self, store: MapStore, tasks: list[int], options: SubmitOptions,
               batch_name: str) -> int:
        commands = submit_description(store, options, batch_name=batch_name)
        itemdata = [{"task": str(t)} for t in tasks]

        def send(htcondor2: Any, schedd: Any) -> int:
            result = schedd.submit(htcondor2.Submit(commands), itemdata=iter(itemdata))
            return int(result.cluster())

        cluster = self._with_schedd(send, "submitting")
        store.add_submission(cluster, tasks)
        return cluster

    def event_reader(self, store: MapStore) -> CondorEventReader:
        return CondorEventReader(store)

    def job_id(self, cluster: int, position: int, task: int) -> str:
        return f"{cluster}.{position}"

    def _act(self, action_name: str, what: str | list[str], reason: str) -> None:
        def act(htcondor2: Any, schedd: Any) -> None:
            schedd.act(getattr(htcondor2.JobAction, action_name), what, reason=reason)

        self._with_schedd(act, f"{action_name.lower()} of jobs")

    def _act_on_jobs(self, action_name: str, job_ids: list[str], reason: str) -> None:
        for start in range(0, len(job_ids), 1000):
            self._act(action_name, job_ids[start:start + 1000], reason)

    def remove_jobs(self, store: MapStore, job_ids: list[str], reason: str) -> None:
        self._act_on_jobs("Remove", job_ids, reason)

    def remove_clusters(self, store: MapStore, clusters: set[int], reason: str) -> None:
        for cluster in sorted(clusters):
            self._act("Remove", f'ClusterId == {cluster} && HtcmlMap == "{store.name}"',
                      reason)

    def release(self, store: MapStore, job_ids: list[str]) -> None:
        self._act_on_jobs("Release", job_ids, "released by htcml_jupyter")

    def vacate(self, store: MapStore, job_ids: list[str]) -> None:
        """Evict running jobs; they return to the queue (and resume from a checkpoint)."""
        self._act_on_jobs("Vacate", job_ids, "evicted by htcml_jupyter")

    def vanished(self, store: MapStore, table: TaskTable) -> list[TaskEvent]:
        """Events for unsettled jobs that are no longer in the queue at all."""
        job_of: dict[int, str] = {}
        clusters: set[int] = set()
        for sub in store.submissions():
            cluster = int(sub["cluster"])
            clusters.add(cluster)
            for proc, task in enumerate(sub["tasks"]):
                job_of[int(task)] = f"{cluster}.{proc}"
        if not clusters:
            return []
        constraint = (f'HtcmlMap == "{store.name}" && ('
                      + " || ".join(f"ClusterId == {c}" for c in sorted(clusters)) + ")")
        try:
            ads = self._with_schedd(
                lambda _h, schedd: schedd.query(constraint=constraint,
                                                projection=["ClusterId", "ProcId"]),
                "asking the queue")
        except PoolUnavailable:
            return []  # cannot tell; try again later
        present = {f"{ad['ClusterId']}.{ad['ProcId']}" for ad in ads}
        out = []
        for status in table.tasks.values():
            if status.phase.value in ("finished", "removed"):
                continue
            if job_of.get(status.task, status.job_id) not in present:
                out.append(TaskEvent(status.task, EventKind.REMOVED, time.time(), {
                    "reason": "the job left the queue without a terminal event in the log"}))
        return out
