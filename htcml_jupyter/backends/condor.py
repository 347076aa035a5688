"""The HTCondor backend: submit a map's jobs as one itemdata cluster, read its event log.

Everything here talks to a real schedd through the ``htcondor2`` bindings.  Job states
come from tailing the map's job event log (:class:`htcondor2.JobEventLog`); the schedd
is only asked about a map's jobs when the log has gone quiet for a long time (to notice
jobs that vanished without a terminal event).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..engine.errors import HTCMLError, PoolUnavailable
from ..engine.options import SubmitOptions, size_in_mb
from ..engine.state import EventKind, TaskEvent, TaskTable
from ..engine.store import MapStore
from ..environment.launch import JobLaunch
from . import condor_pool
from .bindings import call_with_pool, daemon_restarted, pool_config
from .condor_events import USAGE_PROJECTION, CondorEventReader, explain_hold, usage_from_ad
from .protocol import WatcherJob
from .resources import PoolResources, collector_resources
from .submit_description import submit_description

T = TypeVar("T")

class CondorBackend:
    """Submits to and acts on one HTCondor pool, named by its client configuration.

    Every binding call runs under this pool's configuration (:func:`.bindings.pool_config`),
    so backends of different pools live side by side in one process.
    """

    kind = "condor"
    #: A sweep's watcher runs beside its trials as a local-universe job.
    can_run_watcher = True

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
        becomes :class:`PoolUnavailable` naming ``what`` was being done.

        A schedd that restarted rejects the security session this process cached
        ("SECMAN:2004"); the bindings drop that session with the error, so the call is
        made once more, with a new session, before anything is reported.
        """
        for attempt in (1, 2):
            with pool_config(self.config) as htcondor2:
                try:
                    schedd = htcondor2.Schedd()
                except Exception as exc:
                    if attempt == 1 and daemon_restarted(exc):
                        time.sleep(0.5)
                        continue
                    raise PoolUnavailable(
                        f"cannot reach the schedd of {self.description}: {str(exc).rstrip('.')}. "
                        f"Start the "
                        f"project's pool with `htcml pool up`, or check CONDOR_CONFIG"
                    ) from exc
                try:
                    return action(htcondor2, schedd)
                except PoolUnavailable:
                    raise
                except Exception as exc:
                    if attempt == 1 and daemon_restarted(exc):
                        continue
                    raise PoolUnavailable(
                        f"{what} on {self.description} failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

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
        try:
            ads = call_with_pool(self.config, lambda htcondor2: htcondor2.Collector().query(
                htcondor2.AdType.Startd,
                projection=["SlotType", "Cpus", "Memory", "GPUs", "TotalSlotCpus",
                            "TotalSlotMemory", "TotalSlotGPUs"]))
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

    def launch(self, store: MapStore, options: SubmitOptions) -> JobLaunch:
        """How this pool's jobs start (a subclass may put a launcher in front)."""
        from ..environment import job_launch

        return job_launch(store, options, self)

    def job_attributes(self) -> dict[str, str]:
        """Job attributes this backend adds to every job it submits (none here)."""
        return {}

    def job_description(self, store: MapStore, options: SubmitOptions, batch_name: str, *,
                        token: str | None = None, jobs: int = 1) -> dict[str, str]:
        """The submit commands of ``jobs`` jobs of the map (``$(task)`` and ``$(files)``
        from the itemdata): :meth:`launch` and this backend's :meth:`job_attributes`
        applied; a map's submission and a chain's DAG node both queue these."""
        commands = submit_description(store, options, batch_name=batch_name,
                                      launch=self.launch(store, options), token=token,
                                      jobs=jobs)
        commands.update(self.job_attributes())
        return commands

    def submit(self, store: MapStore, tasks: list[int], options: SubmitOptions,
               batch_name: str) -> int:
        token = secrets.token_hex(8)
        commands = self.job_description(store, options, batch_name, token=token,
                                        jobs=len(tasks))
        files = store.task_files()
        itemdata = [{"task": str(t), "files": "".join(f", {f}" for f in files.get(t, ()))}
                    for t in tasks]
        store.add_pending_submission(token, tasks)  # before the jobs exist

        def send(htcondor2: Any, schedd: Any) -> int:
            result = schedd.submit(htcondor2.Submit(commands), itemdata=iter(itemdata))
            return int(result.cluster())

        try:
            cluster = self._with_schedd(send, "submitting")
        except BaseException:
            store.resolve_pending(token, None)  # the schedd did not take them
            raise
        try:
            store.add_submission(cluster, tasks, token)
        except BaseException as exc:
            # Jobs nobody can follow would run unseen: take them back out of the queue.
            self._act("Remove", f'ClusterId == {cluster} && HtcmlMap == "{store.name}"',
                      "its map could not record the submission")
            raise HTCMLError(f"cluster {cluster} was queued, but recording it in {store.path} "
                             f"failed ({type(exc).__name__}: {exc}); its jobs were removed "
                             f"again. Free space in the map folder and submit again") from exc
        return cluster

    def submit_watcher(self, store: MapStore, job: WatcherJob) -> int:
        """Queue ``job`` as a local-universe job in the sweep's folder (see
        :func:`.condor_pool.watcher_description`); returns its cluster id."""
        commands = condor_pool.watcher_description(store, job)
        return self._with_schedd(lambda h, schedd: int(schedd.submit(
            h.Submit(commands)).cluster()), f"submitting the watcher of {store.name}")

    def submit_dag(self, dag_file: Path) -> int:
        """Queue DAGMan for ``dag_file`` (a chain's workflow); returns its cluster id."""
        return self._with_schedd(lambda h, schedd: condor_pool.submit_dag(h, schedd, dag_file),
                                 f"submitting the workflow {dag_file.parent.name}")

    def remove_dag(self, cluster: int, reason: str) -> None:
        """Remove the DAGMan job ``cluster``, and with it every job it queued."""
        self._act("Remove", f"ClusterId == {cluster}", reason)

    def queued_jobs(self, store: MapStore, cluster: int) -> list[str]:
        """Ids of the jobs of the map's submission ``cluster`` still in the queue."""
        ads = self._with_schedd(lambda _h, schedd: schedd.query(
            f'ClusterId == {cluster} && HtcmlMap == "{store.name}"', ["ClusterId", "ProcId"]),
            "asking the queue")
        return [f"{ad['ClusterId']}.{ad['ProcId']}" for ad in ads]

    def token_directory(self) -> str | None:
        """The folder of IDTOKENS this pool's configuration names (None when none)."""
        value = call_with_pool(self.config, lambda h: h.param.get("SEC_TOKEN_DIRECTORY"))
        return str(value) if value else None

    def filesystem_domains(self) -> tuple[str | None, list[str]]:
        """The submit side's filesystem domain (None when unknown) and each execute
        machine's; :class:`PoolUnavailable` when the pool cannot be asked."""
        try:
            return call_with_pool(self.config, condor_pool.pool_domains)
        except Exception as exc:
            self.check_reachable()  # a pool that is down says so in the usual words
            raise PoolUnavailable(f"cannot ask the collector of {self.description} which "
                                  f"filesystem domains its machines have: {exc}") from exc

    def schedd_version(self) -> str:
        """The schedd's ``CondorVersion`` (``"$CondorVersion: 23.9.6 ..."``)."""
        return call_with_pool(self.config, condor_pool.schedd_version)

    def event_reader(self, store: MapStore) -> CondorEventReader:
        return CondorEventReader(store)

    def job_id(self, cluster: int, position: int, task: int) -> str:
        return f"{cluster}.{position}"

    def recover_submissions(self, store: MapStore) -> None:
        """Settle submissions a dead process noted but never confirmed: find their jobs
        (in the queue, or in the schedd's history when they already left it) by the
        token they carry, or record that they were never queued."""
        for token, tasks in store.pending_submissions(abandoned_only=True).items():
            constraint = f'HtcmlMap == "{store.name}" && HtcmlSubmission == "{token}"'

            def find(_h: Any, schedd: Any, constraint: str = constraint) -> int | None:
                ads = schedd.query(constraint=constraint, projection=["ClusterId"], limit=1)
                if not ads:
                    ads = list(schedd.history(constraint, ["ClusterId"], match=1))
                return int(ads[0]["ClusterId"]) if ads else None

            cluster = self._with_schedd(find, "looking for an unconfirmed submission")
            if cluster is not None:
                store.add_submission(cluster, tasks, token)
            else:
                store.resolve_pending(token, None)
                store.add_unsubmitted(tasks, "the submitting process ended before its jobs "
                                             "were queued; retry() runs these items")

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

    def job_usage(self, store: MapStore, job_ids: list[str]) -> dict[str, dict[str, float]]:
        """What the map's running jobs used so far, from their job ads (one query)."""
        if not job_ids:
            return {}
        clusters = sorted({int(j.split(".")[0]) for j in job_ids})
        constraint = (f'HtcmlMap == "{store.name}" && ('
                      + " || ".join(f"ClusterId == {c}" for c in clusters) + ")")
        ads = self._with_schedd(lambda _h, schedd: schedd.query(
            constraint=constraint, projection=USAGE_PROJECTION), "asking the queue for usage")
        wanted = set(job_ids)
        now = time.time()
        return {job: usage_from_ad(ad, now) for ad in ads
                if (job := f"{ad['ClusterId']}.{ad['ProcId']}") in wanted}

    def queue_check(self, store: MapStore, table: TaskTable) -> list[TaskEvent]:
        """What the queue knows of the map's unsettled jobs and the log does not say.

        ``VANISHED`` for jobs no longer in the queue (not for jobs still waiting to be
        materialized: ``max_idle``), and ``HELD`` for held jobs whose hold never reached
        the log (a full disk stops the shadow writing it).
        """
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
                lambda _h, schedd: schedd.query(
                    constraint=constraint,
                    projection=["ClusterId", "ProcId", "JobStatus", "HoldReason",
                                "HoldReasonCode"]),
                "asking the queue")
        except PoolUnavailable:
            return []  # cannot tell; try again later
        present = {f"{ad['ClusterId']}.{ad['ProcId']}": ad for ad in ads}
        queued_clusters = {int(ad["ClusterId"]) for ad in ads}
        out = []
        now = time.time()
        for status in table.tasks.values():
            if status.phase.value in ("finished", "removed"):
                continue
            job = job_of.get(status.task, status.job_id)
            if job is None:
                continue
            ad = present.get(job)
            if ad is not None:
                if int(ad.get("JobStatus", 0)) == 5 and status.phase.value != "held":
                    code = ad.get("HoldReasonCode")
                    out.append(TaskEvent(status.task, EventKind.HELD, now, {
                        "job_id": job, "code": int(code) if code is not None else None,
                        "reason": explain_hold(str(ad.get("HoldReason", "held")))}))
                continue
            if status.submitted is None and int(job.split(".")[0]) in queued_clusters:
                continue  # waiting to be materialized
            out.append(TaskEvent(status.task, EventKind.VANISHED, now, {
                "reason": "the job left the queue without a terminal event in the log"}))
        return out
