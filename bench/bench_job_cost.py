"""Where a map job's time goes, each cost as a ratio to a plain htcondor2 job.

On the project's pool (``htcml pool up``), 100 one-item jobs per variant, every variant
measured in the same run, in a rotating order over ``--rounds`` rounds:

* ``plain``: the bare bindings, one itemdata cluster; each job unpickles ``(fn, arg)``
  with the same interpreter (cloudpickle imported) and writes its result back;
* ``+ loose job-side files``: plain, plus what a map job used to carry besides its input
  (runner.py, job.py, wire.py, calls.py, htchirp.py and the cloudpickle folder);
* ``+ one job-side archive``: plain, plus the one ``jobside.pyz`` a map job carries now;
* ``+ seed files``: plain, plus an empty outcome file and two empty folders sent in, and
  the two folders sent back through remaps (what a map job carried before jobs made
  them);
* ``+ ON_EXIT_OR_EVICT``, ``+ chirp``: plain with that one command;
* ``the runner, as a map submits it``: the submit description of a map (the real
  runner, its files, transfers, chirp and checkpointing), submitted with the bare
  bindings: what the job costs without the notebook side;
* ``htc.map``: the whole thing, from the call to every result read.

Per variant it prints the wall time (submit to the last terminate event), the ratio to
``plain``, and the bytes each job received and sent (from the terminate events).  Then,
without the pool: a trivial job's start-up through the runner against a fresh
interpreter importing cloudpickle (medians), the runner's heaviest imports
(``python -X importtime``), and where ``htc.map`` spends its time before the schedd call
for 10,000 items.

Run:  .venv/bin/python bench/bench_job_cost.py [--rounds 2] [--jobs 100]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import htcondor2

import htcml_jupyter as htc
from htcml_jupyter.backends.pools import project_backend
from htcml_jupyter.backends.submit_description import submit_description
from htcml_jupyter.engine.options import SubmitOptions
from htcml_jupyter.engine.payload import dump_function, dump_items
from htcml_jupyter.engine.store import MapStore
from htcml_jupyter.environment.launch import cloudpickle_folder, launch_for
from htcml_jupyter.jobside import calls, job, runner, wire
from htcml_jupyter.jobside.archive import ARCHIVE_NAME, archive_bytes

PLAIN_JOB = textwrap.dedent("""
    import pickle, sys
    import cloudpickle  # noqa: F401
    with open("in.pkl", "rb") as f:
        fn, arg = pickle.load(f)
    with open("out.pkl", "wb") as f:
        pickle.dump(fn(arg), f)
""")
RESOURCES = {"request_memory": "256MB", "request_disk": "1GB", "request_cpus": "1"}


def trivial(x: int) -> int:
    return x + 1


def loose_job_side_files() -> list[str]:
    """What a map job carried before the job side became one archive."""
    from htcondor2.htchirp import htchirp

    return [*(str(Path(m.__file__ or "")) for m in (runner, job, wire, calls, htchirp)),
            cloudpickle_folder()]


def _chown(path: Path, uid: int | None) -> None:
    if uid is None or os.geteuid() != 0:
        return
    for dirpath, _dirs, files in os.walk(path):
        os.chown(dirpath, uid, -1)
        for f in files:
            os.chown(os.path.join(dirpath, f), uid, -1)


def _wait(log_path: Path, n: int, timeout: float = 600) -> tuple[float, int, int]:
    """Wait for ``n`` terminate events; the time of the last one (perf_counter), and the
    bytes the jobs received and sent in all."""
    deadline = time.monotonic() + timeout
    log = None
    done = received = sent = 0
    while done < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{log_path}: {done} of {n} jobs ended in {timeout:.0f} s")
        if log is None and log_path.exists():
            log = htcondor2.JobEventLog(str(log_path))
        if log is not None:
            for event in log.events(stop_after=0):
                if event.type == htcondor2.JobEventType.JOB_HELD:
                    raise RuntimeError(f"{log_path}: a job was held: {event.get('HoldReason')}")
                if event.type == htcondor2.JobEventType.JOB_TERMINATED:
                    done += 1
                    received += int(event.get("TotalReceivedBytes", 0) or 0)
                    sent += int(event.get("TotalSentBytes", 0) or 0)
        time.sleep(0.05)
    return time.perf_counter(), received, sent


def _waited(log_path: Path, n: int, cluster: int) -> tuple[float, int, int]:
    """:func:`_wait`, removing the cluster's jobs when it fails (held ones too)."""
    try:
        return _wait(log_path, n)
    except BaseException:
        htcondor2.Schedd().act(htcondor2.JobAction.Remove, f"ClusterId == {cluster}")
        raise


class Plain:
    """Plain htcondor2 jobs, with one map cost added at a time."""

    def __init__(self, root: Path, uid: int | None):
        self.root, self.uid = root, uid

    def run(self, n: int, extra_inputs: list[str] = (),  # type: ignore[assignment]
            seeds: bool = False, commands: dict[str, str] | None = None
            ) -> tuple[float, int, int]:
        start = time.perf_counter()
        work = Path(tempfile.mkdtemp(dir=self.root, prefix="plain-"))
        work.chmod(0o755)
        made = "\nimport os\nos.makedirs('a', exist_ok=True)\nos.makedirs('b', exist_ok=True)\n"
        (work / "plainjob.py").write_text(PLAIN_JOB + (made if seeds else ""))
        inputs = [str(work / "plainjob.py"), *extra_inputs]
        if seeds:
            (work / "seed" / "a").mkdir(parents=True)
            (work / "seed" / "b").mkdir()
            (work / "seed" / "outcome.pkl").write_bytes(b"")
            inputs += [str(work / "seed" / p) for p in ("outcome.pkl", "a", "b")]
        for i in range(n):
            d = work / str(i)
            d.mkdir()
            (d / "in.pkl").write_bytes(cloudpickle.dumps((trivial, i)))
        _chown(work, self.uid)
        description = {
            "executable": sys.executable, "transfer_executable": "false",
            "arguments": "plainjob.py", "initialdir": f"{work}/$(item)",
            "transfer_input_files": ", ".join([*inputs, "in.pkl"]),
            "should_transfer_files": "YES", "when_to_transfer_output": "ON_EXIT",
            "transfer_output_files": "out.pkl", "log": f"{work}/events.log",
            "output": "out.txt", "error": "err.txt", **RESOURCES, **(commands or {})}
        if seeds:
            description["transfer_output_files"] = "out.pkl, a, b"
            description["transfer_output_remaps"] = '"a = a-back; b = b-back"'
        result = htcondor2.Schedd().submit(htcondor2.Submit(description),
                                           itemdata=iter([{"item": str(i)} for i in range(n)]))
        end, received, sent = _waited(work / "events.log", n, int(result.cluster()))
        for i in range(n):
            if cloudpickle.loads((work / str(i) / "out.pkl").read_bytes()) != i + 1:
                raise RuntimeError(f"job {i} of {work} gave a wrong result")
        shutil.rmtree(work, ignore_errors=True)
        return end - start, received, sent

    def run_runner(self, n: int) -> tuple[float, int, int]:
        """A map's own submit description (launch, files, runner), bare bindings."""
        start = time.perf_counter()
        store = MapStore.create(self.root, f"runner-{time.time_ns()}", {})
        options = SubmitOptions.from_kwargs({"request_memory": "256MB"})
        dump_function(trivial, {}, store.function_file)
        for i in range(n):
            dump_items([(i, i)], store.input_file(i))
        store.make_seed_files()
        _chown(store.path, self.uid)
        description = submit_description(store, options, batch_name="bench-runner",
                                          launch=launch_for("shared", options), jobs=n)
        itemdata = [{"task": str(i), "files": ""} for i in range(n)]
        result = htcondor2.Schedd().submit(htcondor2.Submit(description),
                                           itemdata=iter(itemdata))
        end, received, sent = _waited(store.event_log, n, int(result.cluster()))
        for i in range(n):
            _header, records = wire.decode_outcome(
                (store.path / "outputs" / f"task-{i}.pkl").read_bytes())
            if not records[0].get("ok"):
                raise RuntimeError(f"runner job {i} failed: {records[0]}")
        shutil.rmtree(store.path, ignore_errors=True)
        return end - start, received, sent


def run_map(n: int, root: Path) -> tuple[float, int, int]:
    start = time.perf_counter()
    m = htc.map(trivial, range(n), root=root, chunksize=1, pool="project",
                request_memory=RESOURCES["request_memory"])
    results = m.results(timeout=600)
    elapsed = time.perf_counter() - start
    if results != [x + 1 for x in range(n)]:
        raise RuntimeError("the htc.map results are wrong")
    received = sent = 0
    for event in htcondor2.JobEventLog(str(m.store.event_log)).events(stop_after=0):
        if event.type == htcondor2.JobEventType.JOB_TERMINATED:
            received += int(event.get("TotalReceivedBytes", 0) or 0)
            sent += int(event.get("TotalSentBytes", 0) or 0)
    m.close()
    return elapsed, received, sent


def pool_costs(root: Path, uid: int | None, n: int, rounds: int) -> None:
    plain = Plain(root, uid)
    archive = str(root / ARCHIVE_NAME)
    (root / ARCHIVE_NAME).write_bytes(archive_bytes())
    variants: dict[str, Callable[[], tuple[float, int, int]]] = {
        "plain htcondor2": lambda: plain.run(n),
        "+ loose job-side files (6 items)": lambda: plain.run(n, loose_job_side_files()),
        "+ one job-side archive": lambda: plain.run(n, [archive]),
        "+ seed files (3 in, 2 folders out)": lambda: plain.run(n, seeds=True),
        "+ ON_EXIT_OR_EVICT": lambda: plain.run(
            n, commands={"when_to_transfer_output": "ON_EXIT_OR_EVICT"}),
        "+ chirp (WantIOProxy)": lambda: plain.run(n, commands={"My.WantIOProxy": "true"}),
        "the runner, as a map submits it": lambda: plain.run_runner(n),
        "htc.map (call to results)": lambda: run_map(n, root),
    }
    names = list(variants)
    seconds: dict[str, list[float]] = {k: [] for k in names}
    moved: dict[str, tuple[int, int]] = {}
    variants[names[0]]()  # warm the pool's claims and the page cache
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            elapsed, received, sent = variants[name]()
            seconds[name].append(elapsed)
            moved[name] = (received, sent)
    base = statistics.median(seconds[names[0]])
    print(f"\n{n} one-item jobs per variant, median of {rounds} (load average "
          f"{os.getloadavg()[0]:.2f}):")
    print(f"  {'variant':<38} {'seconds':>8} {'ratio':>6} {'B in/job':>9} {'B out/job':>9}"
          f"  runs (s)")
    for name in names:
        med = statistics.median(seconds[name])
        received, sent = moved[name]
        # a terminate event's received bytes are the job's input, its sent bytes the output
        runs = " ".join(f"{s:.2f}" for s in seconds[name])
        print(f"  {name:<38} {med:8.2f} {med / base:6.2f} {received / n:9.0f} {sent / n:9.0f}"
              f"  {runs}", flush=True)


def _time(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def startup_costs(runs: int) -> None:
    """A trivial job's start-up through the runner, against a fresh interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        box = Path(tmp)
        (box / ARCHIVE_NAME).write_bytes(archive_bytes())
        for path in loose_job_side_files():  # the job side as it was: loose files
            copy = shutil.copytree if os.path.isdir(path) else shutil.copy
            copy(path, box / Path(path).name)
        dump_function(trivial, {}, box / "function.pkl")
        dump_items([(0, 7)], box / "task-0.pkl")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
        launch = description_arguments()
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import cloudpickle'": [sys.executable, "-c", "import cloudpickle"],
            f"python {' '.join(launch)}": [sys.executable, *launch],
            "python runner.py ... (loose files, as before)": [
                sys.executable, "runner.py", *launch[1:]],
        }
        for cmd in commands.values():
            _time(cmd, box, env)  # warm the page cache
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
        for _ in range(runs):
            for name, cmd in commands.items():
                times[name].append(_time(cmd, box, env))
        base = [statistics.median(t[k] for t in times["python -c 'import cloudpickle'"])
                for k in (0, 1)]
        print(f"\na trivial job's start-up here, no byte code written (median of {runs}; "
              f"load average {os.getloadavg()[0]:.2f}):")
        for name, values in times.items():
            wall, cpu = (statistics.median(t[k] for t in values) for k in (0, 1))
            print(f"  {name:<50} wall {wall * 1000:6.1f} ms x{wall / base[0]:5.2f}   "
                  f"CPU {cpu * 1000:6.1f} ms x{cpu / base[1]:5.2f}")
        out = subprocess.run([sys.executable, "-X", "importtime", *launch], cwd=box, env=env,
                             capture_output=True, text=True, check=True)
        rows = []
        for line in out.stderr.splitlines():
            if line.startswith("import time:") and "|" in line:
                _self, cumulative, name = line.split(":", 1)[1].split("|")
                if cumulative.strip().isdigit():
                    rows.append((int(cumulative), name.rstrip()))
        print("  heaviest imports of the runner (cumulative, python -X importtime):")
        for micros, name in sorted(rows, reverse=True)[:8]:
            print(f"    {micros / 1000:6.1f} ms  {name}")


def description_arguments() -> list[str]:
    """What a map's jobs run after the interpreter (from the submit description)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = MapStore.create(Path(tmp), "args", {})
        options = SubmitOptions.from_kwargs({})
        described = submit_description(store, options, batch_name="x",
                                       launch=launch_for("shared", options))
    return described["arguments"].replace("task-$(task).pkl", "task-0.pkl").split()


def submit_side(root: Path, n: int) -> None:
    """Where ``htc.map`` spends its time for ``n`` items before and at the schedd."""
    from htcml_jupyter.backends import condor
    from htcml_jupyter.engine import creation

    spent: dict[str, float] = {}

    def timed(owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - started
        setattr(owner, attr, wrapper)

    timed(creation, "dump_function", "pickle the function")
    timed(creation, "write_task_stream", "write the input files and task table")
    timed(condor.CondorBackend, "launch", "the environment decision")
    timed(condor.CondorBackend, "_with_schedd", "the schedd call")
    for chunksize in (1, "auto"):
        spent.clear()
        start = time.perf_counter()
        m = htc.map(trivial, range(n), root=root, chunksize=chunksize, pool="project",
                    request_memory=RESOURCES["request_memory"])
        total = time.perf_counter() - start
        m.cancel()
        m.close()
        print(f"\nhtc.map of {n} items, chunksize={chunksize!r}: returned in {total:.2f} s")
        for label, seconds in spent.items():
            print(f"  {label:<40} {seconds:6.2f} s")
        print(f"  {'the rest':<40} {total - sum(spent.values()):6.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100, help="one-item jobs per variant")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--startup-runs", type=int, default=20)
    parser.add_argument("--no-pool", action="store_true", help="only the local figures")
    args = parser.parse_args()
    startup_costs(args.startup_runs)
    if args.no_pool:
        return 0
    backend = project_backend()
    if backend is None:
        print("the project's pool is not up: run `htcml pool up` first", file=sys.stderr)
        return 2
    os.environ["CONDOR_CONFIG"] = str(backend.config)
    htcondor2.reload_config()
    root = Path(tempfile.mkdtemp(prefix="htcml-bench-cost-", dir="/tmp"))
    root.chmod(0o755)
    try:
        pool_costs(root, backend.job_uid, args.jobs, args.rounds)
        submit_side(root, 10_000)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
