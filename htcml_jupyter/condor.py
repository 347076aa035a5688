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
import threading
import time
from pathlib import Path
from typing import Any

from . import job, runner
from .errors import PoolUnavailable
from .options import SubmitOptions, size_in_mb
from .state import EventKind, TaskEvent, TaskTable
from .store import MapStore

_config_lock = threading.Lock()
_active_config: str | None = None


def activate_config(config: str | None) -> None:
    """Point the htcondor2 bindings at a pool's client configuration file.

    The bindings read one configuration per process, so this is process-wide.
    """
    global _active_config
    import htcondor2

    with _config_lock:
        if config == _active_config:
            return
        if config:
            os.environ["CONDOR_CONFIG"] = config
        htcondor2.reload_config()
        _active_config = config


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
        if event.get("Attribute") != job.REPORT_ATTRIBUTE:
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
    """Submits to and acts on one HTCondor pool, named by its client configuration."""

    kind = "condor"

    def __init__(self, config: str | None = None, *, description: str = "",
                 job_uid: int | None = None, shared_paths: list[str] | None = None):
        self.config = config
        self.description = description or (config or "the local HTCondor configuration")
        self.job_uid = job_uid
        self.shared_paths = shared_paths

    def describe(self) -> dict[str, Any]:
        return {"backend": "condor", "config": self.config, "description": self.description,
                "job_uid": self.job_uid, "shared_paths": self.shared_paths}

    def _schedd(self) -> Any:
        import htcondor2

        activate_config(self.config)
        try:
            return htcondor2.Schedd()
        except Exception as exc:
            raise PoolUnavailable(
                f"cannot reach the schedd of {self.description}: {exc}. Start the "
                f"project's pool with `htcml pool up`, or check CONDOR_CONFIG") from exc

    def check_reachable(self) -> str:
        """Return the schedd's name, or raise :class:`PoolUnavailable`."""
        schedd = self._schedd()
        try:
            schedd.query(constraint="false", projection=["ClusterId"])
        except Exception as exc:
            raise PoolUnavailable(f"the schedd of {self.description} does not answer: {exc}. "
                                  f"Start the project's pool with `htcml pool up`") from exc
        import htcondor2

        return str(htcondor2.param.get("SCHEDD_NAME", "") or htcondor2.param.get(
            "FULL_HOSTNAME", "schedd"))

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

    def capacity(self, options: SubmitOptions) -> int:
        """How many jobs with these resources the pool's machines can run at once.

        Counted from each machine's full size (a partitionable slot's totals, static
        slots one each), not from what is free now: busy dynamic slots come and go.
        """
        import htcondor2

        activate_config(self.config)
        cpus = int(options["request_cpus"])
        mem = max(size_in_mb(options["request_memory"]), 1)
        gpus = int(options["request_gpus"])
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
        import htcondor2

        python = options["python"] or ("python3" if options["container_image"] else
                                       _default_python())
        inputs = [str(Path(runner.__file__)), str(Path(job.__file__)), _htchirp_file(),
                  str(store.function_file), *[str(p) for p in options["input_files"]]]
        commands: dict[str, str] = {
            "universe": "vanilla",
            "executable": python,
            "transfer_executable": "false",
            "arguments": "runner.py function.pkl task-$(task).pkl outcome.pkl",
            "initialdir": str(store.path),
            "transfer_input_files": ", ".join([*inputs, "inputs/task-$(task).pkl"]),
            "should_transfer_files": "YES",
            "when_to_transfer_output": "ON_EXIT",
            "transfer_output_files": "outcome.pkl",
            "transfer_output_remaps": '"outcome.pkl = outputs/task-$(task).pkl"',
            "output": "logs/task-$(task).out",
            "error": "logs/task-$(task).err",
            "log": str(store.event_log),
            "log_xml": "true",
            "submit_event_notes": "task $(task)",
            "job_max_vacate_time": "5",
            "environment": '"PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1"',
            "batch_name": batch_name,
            "My.HtcmlMap": f'"{store.name}"',
            "My.HtcmlTask": "$(task)",
            # live reports (htcml_jupyter.report) go through chirp to the event log
            "My.WantIOProxy": "true",
            # self-checkpointing (htcml_jupyter.checkpoint): exit 85 spools the folder
            "checkpoint_exit_code": str(job.CHECKPOINT_EXIT_CODE),
            "transfer_checkpoint_files": job.CHECKPOINT_DIR,
        }
        commands.update(options.submit_commands())
        if options["max_retries"]:
            commands["retry_until"] = str(runner.EXIT_ITEM_FAILED)
        schedd = self._schedd()
        description = htcondor2.Submit(commands)
        try:
            result = schedd.submit(description, itemdata=iter([{"task": str(t)} for t in tasks]))
        except Exception as exc:
            raise PoolUnavailable(f"submitting to {self.description} failed: {exc}") from exc
        cluster = int(result.cluster())
        store.add_submission(cluster, tasks)
        return cluster

    def event_reader(self, store: MapStore) -> CondorEventReader:
        return CondorEventReader(store)

    def _act(self, action_name: str, job_ids: list[str], reason: str) -> None:
        import htcondor2

        if not job_ids:
            return
        schedd = self._schedd()
        action = getattr(htcondor2.JobAction, action_name)
        for start in range(0, len(job_ids), 1000):
            schedd.act(action, job_ids[start:start + 1000], reason=reason)

    def remove(self, store: MapStore, job_ids: list[str], clusters: set[int]) -> None:
        """Remove the given jobs, or whole clusters when ``job_ids`` is empty."""
        import htcondor2

        if job_ids:
            self._act("Remove", job_ids, "removed by htcml_jupyter")
            return
        schedd = self._schedd()
        for cluster in sorted(clusters):
            schedd.act(htcondor2.JobAction.Remove, f"ClusterId == {cluster}",
                       reason="cancelled by htcml_jupyter")

    def vacate(self, job_ids: list[str]) -> None:
        """Evict running jobs; they return to the queue (and resume from a checkpoint)."""
        self._act("Vacate", job_ids, "evicted by htcml_jupyter")

    def release(self, store: MapStore, job_ids: list[str]) -> None:
        self._act("Release", job_ids, "released by htcml_jupyter")

    def vanished(self, reader: CondorEventReader, table: TaskTable) -> list[TaskEvent]:
        """Events for unsettled jobs that are no longer in the queue at all."""
        clusters = reader.clusters
        if not clusters:
            return []
        schedd = self._schedd()
        constraint = " || ".join(f"ClusterId == {c}" for c in sorted(clusters))
        try:
            ads = schedd.query(constraint=constraint, projection=["ClusterId", "ProcId"])
        except Exception:
            return []  # cannot tell; try again later
        present = {f"{ad['ClusterId']}.{ad['ProcId']}" for ad in ads}
        job_of = {task: f"{c}.{p}" for (c, p), task in reader.job_tasks().items()}
        out = []
        for status in table.tasks.values():
            if status.phase.value in ("finished", "removed"):
                continue
            if job_of.get(status.task, status.job_id) not in present:
                out.append(TaskEvent(status.task, EventKind.REMOVED, time.time(), {
                    "reason": "the job left the queue without a terminal event in the log"}))
        return out


def _htchirp_file() -> str:
    """HTCondor's pure-Python chirp client, shipped so reports work on any execute node."""
    from htcondor2.htchirp import htchirp

    return str(Path(htchirp.__file__))


def _default_python() -> str:
    import sys

    return sys.executable
