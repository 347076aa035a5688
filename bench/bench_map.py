"""Benchmark: htc.map against plain htcondor2 on the project's pool.

The baseline is written here: the same work submitted with the bare bindings as one
itemdata cluster, one job per item, each job unpickling ``(fn, arg)`` with the same
interpreter and writing its result back, completion seen through the job event log.
Every figure is printed as a ratio to the baseline measured in the same run.

Run:  .venv/bin/python bench/bench_map.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import cloudpickle
import htcondor2

import htcml_jupyter as htc
from htcml_jupyter.backends.pools import project_backend
from htcml_jupyter.engine.options import SubmitOptions

BASELINE_JOB = textwrap.dedent("""
    import pickle, sys
    import cloudpickle  # noqa: F401
    with open("in.pkl", "rb") as f:
        fn, arg = pickle.load(f)
    with open("out.pkl", "wb") as f:
        pickle.dump(fn(arg), f)
""")


def trivial(x: int) -> int:
    return x + 1


def sleepy(x: int) -> int:
    import time

    time.sleep(5)
    return x


EXPECTED = {trivial: lambda x: x + 1, sleepy: lambda x: x}


def _chown(path: Path, uid: int | None) -> None:
    if uid is None or os.geteuid() != 0:
        return
    for dirpath, _dirs, files in os.walk(path):
        os.chown(dirpath, uid, -1)
        for f in files:
            os.chown(os.path.join(dirpath, f), uid, -1)


class Baseline:
    """Plain htcondor2: one job per item, results through file transfer."""

    def __init__(self, root: Path, uid: int | None):
        self.root = root
        self.uid = uid

    def submit(self, fn, items: list) -> tuple[Path, int, float]:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        work = Path(tempfile.mkdtemp(dir=self.root, prefix="baseline-"))
        work.chmod(0o755)
        (work / "job.py").write_text(BASELINE_JOB)
        for i, item in enumerate(items):
            d = work / str(i)
            d.mkdir()
            with open(d / "in.pkl", "wb") as f:
                f.write(cloudpickle.dumps((fn, item)))
        _chown(work, self.uid)
        sub = htcondor2.Submit({
            "executable": sys.executable, "transfer_executable": "false",
            "arguments": "job.py", "initialdir": f"{work}/$(item)",
            "transfer_input_files": f"{work}/job.py, in.pkl",
            "should_transfer_files": "YES", "when_to_transfer_output": "ON_EXIT",
            "transfer_output_files": "out.pkl", "log": f"{work}/events.log",
            "output": "out.txt", "error": "err.txt",
            "request_memory": "256MB", "request_disk": "1GB", "request_cpus": "1",
        })
        result = htcondor2.Schedd().submit(sub, itemdata=iter([{"item": str(i)}
                                                               for i in range(len(items))]))
        return work, int(result.cluster()), time.perf_counter() - start

    def run(self, fn, items: list) -> float:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        work, _cluster, _ = self.submit(fn, items)
        log = None
        done = 0
        while done < len(items):
            if log is None and (work / "events.log").exists():
                log = htcondor2.JobEventLog(str(work / "events.log"))
            if log is not None:
                for event in log.events(stop_after=0):
                    if event.type == htcondor2.JobEventType.JOB_TERMINATED:
                        done += 1
            time.sleep(0.05)
        results = []
        for i in range(len(items)):
            with open(work / str(i) / "out.pkl", "rb") as f:
                results.append(pickle.load(f))
        assert results == [EXPECTED[fn](x) for x in items], "baseline results are wrong"
        elapsed = time.perf_counter() - start
        shutil.rmtree(work, ignore_errors=True)
        return elapsed


def run_map(fn, items: list, root: Path, chunksize) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    m = htc.map(fn, items, root=root, chunksize=chunksize, request_memory="256MB",
                pool="project")
    results = m.results()
    elapsed = time.perf_counter() - start
    assert results == [EXPECTED[fn](x) for x in items], "map results are wrong"
    m.close()
    return elapsed


MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys, time
    import htcml_jupyter as htc
    def trivial(x):
        return x + 1
    m = htc.map(trivial, range(10_000), root=sys.argv[1], chunksize=sys.argv[2] if
                sys.argv[2] == "auto" else int(sys.argv[2]), pool="project",
                request_memory="256MB")
    if sys.argv[2] == "auto":
        assert m.results()[-1] == 10_000
    else:
        m.status(); m.cancel()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
""")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the 1,000-item cases")
    args = parser.parse_args()
    backend = project_backend()
    if backend is None:
        print("the project's pool is not up: run `htcml pool up` first", file=sys.stderr)
        return 2
    # the baseline talks to the pool with plain htcondor2 calls in this script's process
    os.environ["CONDOR_CONFIG"] = str(backend.config)
    htcondor2.reload_config()
    root = Path(tempfile.mkdtemp(prefix="htcml-bench-", dir="/tmp"))
    root.chmod(0o755)
    baseline = Baseline(root, backend.job_uid)
    rows: list[tuple[str, float, float, float]] = []

    def compare(label: str, fn, n: int, chunksize, target: float,  # type: ignore[no-untyped-def]
                rounds: int = 1) -> None:
        """Baseline and htc.map in ABBA order over ``rounds`` (the pool's claims from one
        run can favour or slow the next); report the sums."""
        items = list(range(n))
        base = ours = 0.0
        for r in range(rounds):
            order = ("base", "ours") if r % 2 == 0 else ("ours", "base")
            for which in order:
                if which == "base":
                    base += baseline.run(fn, items)
                else:
                    ours += run_map(fn, items, root, chunksize)
        rows.append((label, base / rounds, ours / rounds, target))
        print(f"{label:<40} baseline {base / rounds:7.2f} s   htc.map {ours / rounds:7.2f} s   "
              f"ratio {ours / base:5.2f}  (target <= {target}; mean of {rounds})", flush=True)

    slots = backend.capacity(SubmitOptions.from_kwargs({"request_memory": "256MB"}))
    print(f"pool: {backend.description}; slots matching 1 CPU and 256MB: {slots}; "
          f"load average {os.getloadavg()[0]:.2f}")
    compare("100 trivial items, chunksize=1", trivial, 100, 1, 1.10, rounds=2)
    compare("100 trivial items, chunksize='auto'", trivial, 100, "auto", 0.5)
    if not args.quick:
        compare("1,000 trivial items, chunksize='auto'", trivial, 1000, "auto", 0.2)
    compare("16 items sleeping 5 s, default chunksize", sleepy, 16, "auto", 1.0, rounds=4)

    # 10,000 items: time until htc.map() returns vs writing inputs + the submit call.
    items = list(range(10_000))
    _work, cluster, base_submit = baseline.submit(trivial, items)
    htcondor2.Schedd().act(htcondor2.JobAction.Remove, f"ClusterId == {cluster}")
    for chunksize in (1, "auto"):
        start = time.perf_counter()
        m = htc.map(trivial, items, root=root, chunksize=chunksize, pool="project",
                    request_memory="256MB")
        ours = time.perf_counter() - start
        m.cancel()
        m.close()
        label = f"10,000 items: map() returns, chunksize={chunksize!r}"
        rows.append((label, base_submit, ours, 2.0))
        print(f"{label:<40} baseline {base_submit:7.2f} s   htc.map {ours:7.2f} s   "
              f"ratio {ours / base_submit:5.2f}  (target <= 2.0)", flush=True)

    for chunksize in ("1", "auto"):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(root), chunksize],
                             capture_output=True, text=True, check=True)
        peak = float(out.stdout.strip().splitlines()[-1])
        print(f"client peak memory, 10,000-item map, chunksize={chunksize}: {peak:.0f} MB "
              f"(target < 300 MB)", flush=True)
    print(f"this process: peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    shutil.rmtree(root, ignore_errors=True)
    failed = [r for r in rows if r[2] / r[1] > r[3]]
    print(f"{len(rows) - len(failed)} of {len(rows)} ratios within target; load average "
          f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
