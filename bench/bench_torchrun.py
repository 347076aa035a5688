"""Benchmark: how fast a two-node torchrun forms, and how fast a failed one is gone.

Baseline, measured in the same run and alternated with the runs: a two-item
``htc.map`` with the same resources (one job per item, as a run has one job per node),
from submit until both functions run (each returns the time it started).  Figures:

* submit -> every rank inside its process group (``init_process_group`` returned), for
  ``htc.torchrun(nodes=2, procs_per_node=1)`` with gloo on CPUs (target: 8 s or less);
* a rank that raises -> no job of the run left in the queue (the failing rank stamps
  the moment it raises).

Each is the median of ``--runs`` runs (5), printed with its ratio to the baseline.

    .venv/bin/python bench/bench_torchrun.py [--runs 5] [--pool project]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import htcml_jupyter as htc
from htcml_jupyter.multinode import TorchrunError


def started(x: int) -> float:
    return time.time()


def join() -> float:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    inside = time.time()
    dist.barrier()
    dist.destroy_process_group()
    return inside


def fail_at_once() -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        raise ValueError(f"raised at {time.time():.3f}")
    t = torch.ones(1)
    while True:
        dist.all_reduce(t)
        time.sleep(0.2)


def baseline_start(root: Path, pool: str) -> float:
    """Seconds from submitting a two-item map until both functions run."""
    t0 = time.time()
    m = htc.map(started, [0, 1], root=root, pool=pool, chunksize=1, request_memory="1GB")
    times = m.results(timeout=300)
    m.close()
    return max(times) - t0


def torchrun_join(root: Path, pool: str) -> float:
    """Seconds from submitting a 2-node run until the last rank is in its group."""
    t0 = time.time()
    run = htc.torchrun(join, nodes=2, root=root, pool=pool, request_memory="1GB")
    inside = run.results(timeout=300)
    run.close()
    return max(inside) - t0


def failure_cleanup(root: Path, pool: str) -> float:
    """Seconds from a rank raising until no job of its run is in the queue."""
    run = htc.torchrun(fail_at_once, nodes=2, root=root, pool=pool, request_memory="1GB")
    run.wait(timeout=300)
    while run.queued_jobs():
        time.sleep(0.1)
    gone = time.time()
    try:
        run.results()
    except TorchrunError as error:
        stamp = re.search(r"raised at ([0-9.]+)", str(error))
        if stamp is None:
            raise
        return gone - float(stamp.group(1))
    finally:
        run.close()
    raise RuntimeError("the failing run did not fail")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pool", default="project")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="htcml-bench-torchrun-", dir="/tmp"))
    root.chmod(0o755)
    base, joins, cleanups = [], [], []
    for i in range(args.runs):
        base.append(baseline_start(root, args.pool))
        joins.append(torchrun_join(root, args.pool))
        cleanups.append(failure_cleanup(root, args.pool))
        print(f"run {i + 1}: map {base[-1]:5.2f} s | torchrun in group "
              f"{joins[-1]:5.2f} s | failure -> queue empty {cleanups[-1]:5.2f} s",
              file=sys.stderr, flush=True)
    b, j, c = (statistics.median(x) for x in (base, joins, cleanups))
    print(f"baseline: 2-job map, submit -> both functions run: {b:6.2f} s (median of {args.runs})")
    print(f"torchrun 2x1: submit -> all ranks in the group:   {j:6.2f} s  ratio {j / b:5.2f}"
          f"  (target <= 8 s: {'met' if j <= 8 else 'missed'})")
    print(f"rank failure -> no job of the run in the queue:   {c:6.2f} s  ratio {c / b:5.2f}")


if __name__ == "__main__":
    main()
