"""Start-up cost of a trivial job on the execute side: the job runner in a fresh sandbox.

Runs ``python jobside.pyz function.pkl task-0.pkl outcome.pkl`` for a one-item job (the
function returns its input) in a folder holding only the shipped job-side archive, as
HTCondor's sandbox would, and compares it with the baseline every job pays anyway: a
fresh interpreter that imports cloudpickle.  Both are measured alternately in the same
run; the figures are medians.

    .venv/bin/python bench/bench_job_startup.py [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from htcml_jupyter.engine.payload import dump_function, dump_items
from htcml_jupyter.jobside.archive import ARCHIVE_NAME, archive_bytes


def identity(x: int) -> int:
    return x


def _time(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp)
        (sandbox / ARCHIVE_NAME).write_bytes(archive_bytes())
        dump_function(identity, {}, sandbox / "function.pkl")
        dump_items([(0, 7)], sandbox / "task-0.pkl")
        runner = [sys.executable, ARCHIVE_NAME, "function.pkl", "task-0.pkl", "outcome.pkl"]
        baseline = [sys.executable, "-c", "import cloudpickle"]
        for _ in range(3):  # warm the page cache
            _time(runner, sandbox)
        job, base = [], []
        for _ in range(args.runs):
            base.append(_time(baseline, sandbox))
            job.append(_time(runner, sandbox))
    b, j = statistics.median(base), statistics.median(job)
    print(f"interpreter + cloudpickle (baseline): {b * 1000:7.1f} ms (median of {args.runs})")
    print(f"trivial job through the runner:       {j * 1000:7.1f} ms")
    print(f"ratio job / baseline:                 {j / b:7.2f}")


if __name__ == "__main__":
    main()
