"""End-to-end time of a small map on the project's pool: htc.map against plain htcondor2
and against dask-jobqueue's HTCondorCluster, measured in the same run.

1,000 trivial items, from the first call until every result is in hand:

* **plain htcondor2** (the baseline): one itemdata cluster of ``python -c`` jobs, one
  job per chunk of items (as many jobs as htc.map's ``chunksize="auto"`` makes), each
  writing its results to a JSON file that comes back by file transfer; completion is
  seen in the job event log;
* **dask-jobqueue**: an ``HTCondorCluster`` on the same pool, scaled to a few workers,
  ``client.map`` and ``client.gather``; timed from creating the cluster (workers
  starting included) and again with the workers already connected;
* **htc.map** with ``chunksize="auto"``.

The first job's start (its EXECUTE event, seen by polling the event log) is timed for
the baseline.  For htc.map the time goes into: ``htc.map()`` returning (folder written,
jobs submitted), the first job event the map sees, the last job event, and reading the
results; and the time to the first result of a 100-item map.  Figures are medians over
``--reps`` repetitions, with the runs of the three interleaved.

    .venv/bin/python bench/bench_first_job.py [--reps 5] [--workers 4] [--no-dask]

Needs the project's pool (``htcml pool up``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import htcondor2

import htcml_jupyter as htc
from htcml_jupyter import devpool
from htcml_jupyter.backends.pools import project_backend
from htcml_jupyter.engine.chunking import auto_chunksize
from htcml_jupyter.engine.options import SubmitOptions

# The job: ``python -c JOB start stop`` writes items start..stop-1, plus one, to out.json.
JOB = ('import json, sys; start, stop = map(int, sys.argv[1:3]); '
       'json.dump([x + 1 for x in range(start, stop)], open("out.json", "w"))')
# Each job of all three asks for the same.
RESOURCES: dict[str, Any] = {"request_memory": "256MB", "request_disk": "1GB", "request_cpus": 1}


def trivial(x: int) -> int:
    return x + 1


def _chown(path: Path, uid: int | None) -> None:
    if uid is not None and os.geteuid() == 0:
        os.chown(path, uid, -1)


class Plain:
    """The baseline: bare htcondor2 bindings, one cluster, results by file transfer."""

    def __init__(self, root: Path, uid: int | None):
        self.root = root
        self.uid = uid

    def run(self, n_items: int, n_jobs: int) -> tuple[float, float]:
        """Run the items in ``n_jobs`` jobs; returns (first job started, all done) in
        seconds from the start."""
        start = time.perf_counter()
        work = Path(tempfile.mkdtemp(dir=self.root, prefix="plain-"))
        work.chmod(0o755)
        _chown(work, self.uid)
        size = -(-n_items // n_jobs)
        rows = [{"job": str(j), "start": str(lo), "stop": str(min(lo + size, n_items))}
                for j, lo in enumerate(range(0, n_items, size))]
        sub = htcondor2.Submit({
            "executable": sys.executable, "transfer_executable": "false",
            # HTCondor's argument syntax: the whole in double quotes, a double quote
            # inside doubled, an argument with spaces in single quotes
            "arguments": '"-c \'{}\' $(start) $(stop)"'.format(JOB.replace('"', '""')),
            "initialdir": str(work), "log": f"{work}/events.log",
            "should_transfer_files": "YES", "when_to_transfer_output": "ON_EXIT",
            "transfer_output_files": "out.json",
            "transfer_output_remaps": '"out.json = out-$(job).json"',
            **{k: str(v) for k, v in RESOURCES.items()},
        })
        htcondor2.Schedd().submit(sub, itemdata=iter(rows))
        log: htcondor2.JobEventLog | None = None
        first = 0.0
        done = 0
        deadline = time.monotonic() + 600
        while done < len(rows):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the plain jobs in {work} did not finish in 600 s")
            if log is None and (work / "events.log").exists():
                log = htcondor2.JobEventLog(str(work / "events.log"))
            if log is not None:
                for event in log.events(stop_after=0):
                    if event.type == htcondor2.JobEventType.EXECUTE and not first:
                        first = time.perf_counter() - start
                    elif event.type == htcondor2.JobEventType.JOB_TERMINATED:
                        done += 1
            time.sleep(0.01)
        results: list[int] = []
        for row in rows:
            results += json.loads((work / f"out-{row['job']}.json").read_text())
        if results != [x + 1 for x in range(n_items)]:
            raise RuntimeError("the plain htcondor2 results are wrong")
        elapsed = time.perf_counter() - start
        shutil.rmtree(work, ignore_errors=True)
        return first, elapsed


def run_map(n_items: int, root: Path) -> float:
    start = time.perf_counter()
    m = htc.map(trivial, range(n_items), root=root, pool="project", **RESOURCES)
    results = m.results(timeout=600)
    elapsed = time.perf_counter() - start
    if results != [x + 1 for x in range(n_items)]:
        raise RuntimeError("the htc.map results are wrong")
    m.close()
    return elapsed


def map_phases(n_items: int, root: Path) -> dict[str, float]:
    """Where htc.map's time goes: every step timed from the call, the map's state read
    every 50 ms (finer than ``results()``'s own wait; reading much more often takes
    CPU from the jobs on a small machine)."""
    start = time.perf_counter()
    m = htc.map(trivial, range(n_items), root=root, pool="project", **RESOURCES)
    phases = {"map() returned": time.perf_counter() - start}
    deadline = time.monotonic() + 600
    while not m.done:
        if time.monotonic() > deadline:
            raise RuntimeError(f"map {m.name} did not finish in 600 s")
        counts = m.status()
        if "first job event" not in phases and counts.get("idle", 0) < n_items:
            phases["first job event"] = time.perf_counter() - start
        time.sleep(0.05)
    phases.setdefault("first job event", time.perf_counter() - start)
    phases["all jobs done"] = time.perf_counter() - start
    results = m.results()
    phases["results read"] = time.perf_counter() - start
    if results != [x + 1 for x in range(n_items)]:
        raise RuntimeError("the htc.map results are wrong")
    m.close()
    return phases


def first_result(n_items: int, root: Path) -> float:
    start = time.perf_counter()
    m = htc.map(trivial, range(n_items), root=root, pool="project", **RESOURCES)
    item, value = next(iter(m.as_completed(timeout=600, poll=0.05)))
    elapsed = time.perf_counter() - start
    if value != item + 1:
        raise RuntimeError("the first htc.map result is wrong")
    m.wait(timeout=600)
    m.close()
    return elapsed


def dask_commands(state: devpool.PoolState, work: Path) -> tuple[str, str]:
    """condor_submit and condor_rm as dask-jobqueue should run them: in the pool's
    Debian root as the job user (the schedd refuses root), or as they are on PATH."""
    if state.mode != "rootfs":
        return "condor_submit", "condor_rm"
    inside = (f"chroot --userspec={state.job_user}:{state.job_user} {state.rootfs} "
              f"/usr/bin/env -u CONDOR_CONFIG -C {work}")
    # dask-jobqueue appends the submit file (written mode 600 by this process): the
    # shell opens it and condor_submit reads it on standard input.
    submit = f"sh -c {shlex.quote(f'exec {inside} condor_submit < $0')}"
    return submit, f"{inside} condor_rm"


class Dask:
    """dask-jobqueue's HTCondorCluster on the project's pool."""

    def __init__(self, state: devpool.PoolState, work: Path, workers: int):
        from dask_jobqueue import HTCondorCluster
        from dask_jobqueue.htcondor import HTCondorJob

        submit, remove = dask_commands(state, work)

        class PoolJob(HTCondorJob):
            def __init__(self, *args: Any, **kwargs: Any):
                super().__init__(*args, **kwargs)
                self.submit_command = submit
                self.cancel_command = remove

        class PoolCluster(HTCondorCluster):
            job_cls = PoolJob

        self.cluster_cls = PoolCluster
        self.workers = workers
        self.work = work

    def _cluster(self) -> Any:
        return self.cluster_cls(
            cores=1, processes=1, memory="256MB", disk="1GB",
            python=sys.executable, scheduler_options={"host": "127.0.0.1"},
            worker_extra_args=["--local-directory", "/tmp"],
            job_extra_directives={"initialdir": str(self.work)}, silence_logs="error")

    def run(self, n_items: int, warm_reps: int) -> tuple[float, list[float]]:
        """One cold run (cluster created, workers started) and ``warm_reps`` runs with
        the workers connected; seconds each."""
        from dask.distributed import Client

        start = time.perf_counter()
        cluster = self._cluster()
        try:
            cluster.scale(self.workers)
            with Client(cluster) as client:
                cold = self._map(client, n_items, start)
                client.wait_for_workers(self.workers, timeout=120)
                warm = [self._map(client, n_items, time.perf_counter())
                        for _ in range(warm_reps)]
            jobs = [w.job_id for w in cluster.workers.values() if w.job_id]
        finally:
            cluster.close()
        _wait_gone(jobs)
        return cold, warm

    @staticmethod
    def _map(client: Any, n_items: int, start: float) -> float:
        results = client.gather(client.map(trivial, range(n_items), pure=False))
        if results != [x + 1 for x in range(n_items)]:
            raise RuntimeError("the dask results are wrong")
        return time.perf_counter() - start


def _wait_gone(job_ids: list[str], timeout: float = 30) -> None:
    """Wait until removed jobs have left the queue (their slots are free again)."""
    if not job_ids:
        return
    constraint = " || ".join(f"(ClusterId == {j.split('.')[0]})" for j in job_ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not htcondor2.Schedd().query(constraint, projection=["ClusterId"]):
            return
        time.sleep(0.2)


def _row(label: str, values: list[float], base: float, dask: float | None) -> None:
    med = statistics.median(values)
    against = f"x{med / base:5.2f} plain" + (f"   x{med / dask:5.2f} dask" if dask else "")
    print(f"{label:<44} {med:6.2f} s   {against}   (min {min(values):.2f}, "
          f"max {max(values):.2f}, n={len(values)})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions (median)")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4, help="dask workers")
    parser.add_argument("--no-dask", action="store_true", help="skip dask-jobqueue")
    args = parser.parse_args()
    backend = project_backend()
    state = devpool.running_state()
    if backend is None or state is None:
        print("the project's pool is not up: run `htcml pool up` first", file=sys.stderr)
        return 2
    os.environ["CONDOR_CONFIG"] = str(backend.config)
    htcondor2.reload_config()
    root = Path(tempfile.mkdtemp(prefix="htcml-bench-first-", dir="/tmp"))
    root.chmod(0o755)
    slots = backend.capacity(SubmitOptions.from_kwargs(dict(RESOURCES)))
    n_jobs = -(-args.items // auto_chunksize(args.items, slots))
    print(f"pool: {backend.description}; {slots} matching slots; {args.items} items in "
          f"{n_jobs} jobs (chunksize='auto'); {args.reps} repetitions; load average "
          f"{os.getloadavg()[0]:.2f}")
    plain = Plain(root, backend.job_uid)
    dask = None if args.no_dask else Dask(state, root, args.workers)
    first_job: list[float] = []
    plain_s: list[float] = []
    ours: list[float] = []
    cold: list[float] = []
    warm: list[float] = []

    def plain_step() -> None:
        first, elapsed = plain.run(args.items, n_jobs)
        first_job.append(first)
        plain_s.append(elapsed)

    def map_step() -> None:
        ours.append(run_map(args.items, root))

    def dask_step() -> None:
        assert dask is not None
        c, w = dask.run(args.items, warm_reps=1)
        cold.append(c)
        warm.extend(w)

    steps: list[Callable[[], None]] = [plain_step, map_step]
    if dask is not None:
        steps.append(dask_step)
    run_map(10, root)  # warm the page cache and the imports
    for r in range(args.reps):  # a different order each round
        for step in steps[r % len(steps):] + steps[:r % len(steps)]:
            step()
    base = statistics.median(plain_s)
    dask_cold = statistics.median(cold) if cold else None
    print(f"\n{args.items} trivial items, submit -> all results in hand (median):")
    _row("plain htcondor2 (baseline)", plain_s, base, dask_cold)
    if dask_cold is not None:
        _row(f"dask-jobqueue, {args.workers} workers started", cold, base, dask_cold)
        _row(f"dask-jobqueue, {args.workers} workers warm", warm, base, dask_cold)
    _row("htc.map", ours, base, dask_cold)
    print(f"{'plain htcondor2: first job started':<44} "
          f"{statistics.median(first_job):6.2f} s")
    phases: dict[str, list[float]] = {}
    for _ in range(args.reps):
        for phase, seconds in map_phases(args.items, root).items():
            phases.setdefault(phase, []).append(seconds)
    print(f"\nhtc.map, {args.items} items, where the time goes (median, from the call):")
    for phase, times in phases.items():
        print(f"  {phase:<42} {statistics.median(times):6.2f} s")
    firsts = [first_result(100, root) for _ in range(args.reps)]
    print(f"\n{'htc.map, 100 items: first result':<44} {statistics.median(firsts):6.2f} s "
          f"(min {min(firsts):.2f}, max {max(firsts):.2f})")
    target = statistics.median(ours) <= 3.0
    print(f"htc.map median {statistics.median(ours):.2f} s: "
          f"{'within' if target else 'over'} the 3 s target")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
