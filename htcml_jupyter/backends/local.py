"""The local backend: the same job runner in subprocesses on this machine.

Used when no HTCondor pool is reachable (with a visible notice) or on request
(``backend="local"``).  Each submission starts a detached executor process
(``python -m htcml_jupyter.backends.local``), so results keep arriving in the map's folder
after the notebook kernel dies.  The executor writes job events as JSON lines to
``logs/local-events.jsonl``; they go through the same transition table as
HTCondor's events.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..engine.errors import HTCMLError
from ..engine.options import SubmitOptions
from ..engine.state import EventKind, TaskEvent, TaskTable
from ..engine.store import MapStore
from ..jobside import calls, job, runner, wire
from .protocol import WatcherJob
from .resources import PoolResources, local_resources

EVENTS = "local-events.jsonl"
#: What the executor runs as (``python -m``); also how a live executor is recognised.
EXECUTOR_MODULE = "htcml_jupyter.backends.local"


def _append_event(store: MapStore, task: int, kind: EventKind, **detail: Any) -> None:
    line = json.dumps({"task": task, "kind": kind.value, "time": time.time(),
                       "detail": {"job_id": f"local.{task}", **detail}})
    with (store.path / "logs" / EVENTS).open("a") as f:
        f.write(line + "\n")


class LocalEventReader:
    """Reads the executor's event file from where it stopped last time."""

    def __init__(self, store: MapStore):
        self.path = store.path / "logs" / EVENTS
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}

    def _new_lines(self, path: Path) -> list[dict[str, Any]]:
        try:
            with path.open("rb") as f:
                f.seek(self._offsets.get(path, 0))
                data = f.read()
        except FileNotFoundError:
            return []
        self._offsets[path] = self._offsets.get(path, 0) + len(data)
        lines = (self._partial.get(path, b"") + data).split(b"\n")
        self._partial[path] = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]

    def read(self) -> list[TaskEvent]:
        out = []
        for row in self._new_lines(self.path):
            out.append(TaskEvent(int(row["task"]), EventKind(row["kind"]),
                                 float(row["time"]), row.get("detail", {})))
        for metrics in sorted(self.path.parent.glob("metrics-task-*.jsonl")):
            records = self._new_lines(metrics)
            if records:
                task = int(metrics.stem.split("-")[-1])
                out.append(TaskEvent(task, EventKind.REPORTED, time.time(),
                                     {"records": records}))
        return out

    def close(self) -> None:
        pass


class LocalBackend:
    """Runs a map's jobs as local subprocesses, ``workers`` at a time."""

    kind = "local"
    can_run_watcher = False

    def __init__(self, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 1
        self.description = f"local processes ({self.workers} at a time)"

    @property
    def job_uid(self) -> int | None:
        return None  # jobs run as we do

    def describe(self) -> dict[str, Any]:
        return {"backend": "local", "workers": self.workers, "description": self.description}

    def check_visible(self, path: Path) -> None:
        """Local jobs see every folder this process sees."""

    def job_id(self, cluster: int, position: int, task: int) -> str:
        return f"local.{task}"

    def recover_submissions(self, store: MapStore) -> None:
        """Local submissions are recorded before their executor starts: nothing to do."""

    def resources(self) -> PoolResources:
        return local_resources(self.workers, self.description)

    def capacity(self, options: SubmitOptions) -> int:
        return self.workers

    def submit(self, store: MapStore, tasks: list[int], options: SubmitOptions,
               batch_name: str) -> int:
        submission = len(store.submissions()) + 1
        for task in tasks:
            _append_event(store, task, EventKind.SUBMITTED)
        python = options.python or sys.executable
        log = (store.path / "logs" / f"executor-{submission}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", EXECUTOR_MODULE, str(store.path),
             "--tasks", ",".join(map(str, tasks)), "--workers", str(self.workers),
             "--python", python, *[a for f in options.input_files for a in ("--input", f)]],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        (store.path / "logs" / f"executor-{submission}.pid").write_text(str(proc.pid))
        store.add_submission(-submission, tasks)
        threading.Thread(target=proc.wait, daemon=True).start()  # reap it when it ends
        return -submission

    def submit_watcher(self, store: MapStore, job: WatcherJob) -> int:
        raise HTCMLError("a sweep's watcher job needs an HTCondor pool; local processes "
                         "end with this one (watcher='kernel' watches from here)")

    def token_directory(self) -> str | None:
        return None

    def event_reader(self, store: MapStore) -> LocalEventReader:
        return LocalEventReader(store)

    @staticmethod
    def _pids(store: MapStore) -> list[int]:
        pids = []
        for pid_file in (store.path / "logs").glob("executor-*.pid"):
            try:
                pids.append(int(pid_file.read_text()))
            except (OSError, ValueError):
                continue
        return pids

    def remove_jobs(self, store: MapStore, job_ids: list[str], reason: str) -> None:
        """Remove jobs (``local.TASK``): the executor kills them or never starts them."""
        for job_id in job_ids:
            (store.path / "logs" / f"remove-{int(job_id.rsplit('.', 1)[-1])}").touch()

    def remove_clusters(self, store: MapStore, clusters: set[int], reason: str) -> None:
        """Remove whole submissions (negative cluster ids) and stop their executors."""
        tasks = {int(t) for sub in store.submissions() if int(sub["cluster"]) in clusters
                 for t in sub["tasks"]}
        for task in tasks:
            (store.path / "logs" / f"remove-{task}").touch()
        for cluster in clusters:
            pid_file = store.path / "logs" / f"executor-{-cluster}.pid"
            try:
                pid = int(pid_file.read_text())
                if _is_executor_of(pid, store):  # never a process that reused the pid
                    os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                continue

    def release(self, store: MapStore, job_ids: list[str]) -> None:
        """Local jobs are never held."""

    def job_usage(self, store: MapStore, job_ids: list[str]) -> dict[str, dict[str, float]]:
        """Local processes are not measured while they run."""
        return {}

    def vacate(self, store: MapStore, job_ids: list[str]) -> None:
        raise HTCMLError(f"jobs on {self.description} cannot be evicted; vacate needs an "
                         f"HTCondor pool")

    def queue_check(self, store: MapStore, table: TaskTable) -> list[TaskEvent]:
        """``VANISHED`` for the unfinished jobs of an executor that is gone."""
        alive = any(_is_executor_of(pid, store) for pid in self._pids(store))
        if alive:
            return []
        return [TaskEvent(t.task, EventKind.VANISHED, time.time(),
                          {"reason": "the local executor stopped before this job finished"})
                for t in table.tasks.values() if t.phase.value not in ("finished", "removed")]


def _is_executor_of(pid: int, store: MapStore) -> bool:
    """Whether ``pid`` is alive and is this map's executor (pids are reused: a stale pid
    file may name an unrelated process)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return EXECUTOR_MODULE.encode() in args and str(store.path).encode() in args


# ---------------------------------------------------------------------- executor


def _fetch(source: str, sandbox: Path) -> None:
    """Bring one per-item input into the job's folder: a link to a local file, or an
    http(s) download (other URL schemes need HTCondor's plugins)."""
    if "://" not in source:
        os.symlink(source, sandbox / os.path.basename(source))
        return
    from urllib.parse import urlparse
    from urllib.request import urlopen

    parsed = urlparse(source)
    if parsed.scheme not in ("http", "https"):
        raise OSError(f"{source}: local processes fetch only http:// and https:// URLs; "
                      f"run the map on an HTCondor pool for {parsed.scheme}://")
    target = sandbox / os.path.basename(parsed.path.rstrip("/"))
    try:
        with urlopen(source, timeout=60) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out)
    except Exception as exc:
        raise OSError(f"{source}: {exc}") from exc


def _keep_output_files(folder: Path, store: MapStore, task: int) -> None:
    """Move what the job wrote under output_dir() to where HTCondor would put it."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    destination = store.read_record().options.output_destination
    if destination and "://" in str(destination):
        return  # URL destinations need HTCondor's transfer plugins
    target = (Path(destination) / f"task-{task}" if destination
              else store.files_folder(task))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(folder), str(target))


class _Executor:
    def __init__(self, store: MapStore, python: str, inputs: list[str]):
        self.store = store
        self.python = python
        self.inputs = inputs
        self.stopping = False
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()
        self.host = socket.gethostname()

    def removed(self, task: int) -> bool:
        return self.stopping or (self.store.path / "logs" / f"remove-{task}").exists()

    def run_task(self, task: int) -> None:
        if self.removed(task):
            _append_event(self.store, task, EventKind.REMOVED, reason="removed before it ran")
            return
        sandbox = self.store.path / "sandbox" / f"task-{task}"
        shutil.rmtree(sandbox, ignore_errors=True)
        sandbox.mkdir(parents=True)
        shutil.copy(runner.__file__, sandbox / "runner.py")
        shutil.copy(job.__file__, sandbox / "job.py")
        shutil.copy(wire.__file__, sandbox / "wire.py")
        shutil.copy(calls.__file__, sandbox / "calls.py")
        os.symlink(self.store.function_file, sandbox / "function.pkl")
        os.symlink(self.store.input_file(task), sandbox / f"task-{task}.pkl")
        for item in self.inputs:
            if os.path.exists(item):
                os.symlink(item, sandbox / os.path.basename(item))
        try:
            for source in self.store.task_files().get(task, ()):
                _fetch(source, sandbox)
        except OSError as exc:
            _append_event(self.store, task, EventKind.HELD, code=13,
                          reason=f"Transfer input files failure: {exc}")
            return
        _append_event(self.store, task, EventKind.STARTED, host=self.host)
        with self.store.stdout_file(task).open("wb") as out, \
                self.store.stderr_file(task).open("wb") as err:
            env = {**os.environ, "PYTHONUNBUFFERED": "1", wire.LOCAL_ENV: "1",
                   wire.METRICS_FILE_ENV: str(self.store.path / "logs" /
                                              f"metrics-task-{task}.jsonl")}
            while True:  # a checkpoint exit restarts the job in place, as HTCondor does
                proc = subprocess.Popen([self.python, "runner.py", "function.pkl",
                                         f"task-{task}.pkl", "outcome.pkl"],
                                        cwd=sandbox, stdout=out, stderr=err, env=env,
                                        stdin=subprocess.DEVNULL)
                with self.lock:
                    self.children[task] = proc
                while proc.poll() is None:
                    if self.removed(task):
                        proc.kill()
                    time.sleep(0.05)
                with self.lock:
                    self.children.pop(task, None)
                if proc.returncode != wire.EXIT_CHECKPOINT or self.removed(task):
                    break
        if self.removed(task) and proc.returncode < 0:
            _append_event(self.store, task, EventKind.REMOVED, reason="removed while running")
        else:
            outcome = sandbox / "outcome.pkl"
            if outcome.exists():
                os.replace(outcome, self.store.output_file(task))
            _keep_output_files(sandbox / wire.OUTPUTS_DIR, self.store, task)
            _append_event(self.store, task, EventKind.FINISHED, exit_code=proc.returncode)
        shutil.rmtree(sandbox, ignore_errors=True)

    def stop(self, *_: Any) -> None:
        self.stopping = True
        with self.lock:
            for proc in self.children.values():
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run a map's jobs locally")
    parser.add_argument("map_folder")
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--input", action="append", default=[])
    args = parser.parse_args(argv)
    executor = _Executor(MapStore(Path(args.map_folder)), args.python, args.input)
    signal.signal(signal.SIGTERM, executor.stop)
    tasks = [int(t) for t in args.tasks.split(",") if t]
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        list(pool.map(executor.run_task, tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
