"""Benchmark: the overhead of an adaptive sweep's ask/tell loop on the project's pool.

An adaptive sweep with ``max_concurrent=1`` runs its trials one after the other, so each
trial's job starts only once the loop (in the sweep's watcher job) has seen the previous
trial end, told the study, asked for the next trial and queued it.  Measured, from the
trials' own clocks: from one trial's function returning to the next one's function
running (median), split at the moment the next trial was queued.  Baseline: a one-item
``htc.map``, from the call to its function running (what any new job costs: submit,
negotiation, job start).

Run:  .venv/bin/python bench/bench_adaptive.py [n_trials]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import htcml_jupyter as htc
from htcml_jupyter.training.adaptive import TRIALS_FILE


def timed(x: float) -> dict[str, float]:
    """A trial of about half a second that says when it ran."""
    import time

    start = time.time()
    time.sleep(0.5)
    return {"loss": (x - 0.3) ** 2, "start": start, "end": time.time()}


def bench_gaps(root: Path, n_trials: int) -> float:
    s = htc.sweep(timed, space={"x": htc.uniform(0, 1)}, n_trials=n_trials, sampler="tpe",
                  max_concurrent=1, metric="loss", root=root, pool="project",
                  request_memory="128MB")
    assert s.wait(timeout=60 + 20 * n_trials), "the sweep did not finish"
    results = s.results()
    asked = {row["item"]: row["time"] for row in map(
        json.loads, (s.store.path / TRIALS_FILE).read_text().splitlines())}
    gaps, to_queue, to_run = [], [], []
    for i in range(1, len(results)):
        end, start = results[i - 1]["end"], results[i]["start"]
        gaps.append(start - end)
        to_queue.append(asked[i] - end)
        to_run.append(start - asked[i])
    s.close()
    print(f"{n_trials} trials one at a time: trial end -> next trial running: median "
          f"{statistics.median(gaps):.2f} s (min {min(gaps):.2f}, max {max(gaps):.2f}); of "
          f"which end -> next queued {statistics.median(to_queue):.2f} s, queued -> running "
          f"{statistics.median(to_run):.2f} s")
    return statistics.median(gaps)


def bench_floor(root: Path, n: int = 5) -> float:
    waits = []
    for _ in range(n):
        t0 = time.time()
        m = htc.map(timed, [0.5], root=root, pool="project", request_memory="128MB")
        waits.append(m.results()[0]["start"] - t0)
        m.close()
    print(f"baseline: one-item map, call -> function running: median "
          f"{statistics.median(waits):.2f} s over {n}")
    return statistics.median(waits)


def main() -> int:
    n_trials = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    root = Path(tempfile.mkdtemp(prefix="htcml-bench-adaptive-", dir="/tmp"))
    root.chmod(0o755)
    gap = bench_gaps(root, n_trials)
    floor = bench_floor(root)
    print(f"adaptive overhead against a new job's start: ratio {gap / floor:.2f} "
          f"(target: median gap <= 2 s: {'met' if gap <= 2.0 else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
