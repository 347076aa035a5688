"""Benchmark: live reports and sweeps on the project's pool.

1. ``htc.report()`` cost inside a running job, against the baseline of one synchronous
   chirp ``set_job_attr`` (what a report would cost sent in place), both in the same job.
2. Delay from ``report()`` in the job to the value in this process, against the
   baseline of a raw chirp attribute update read straight from the job event log, both
   sent together.
3. A 64-trial sweep: time from submit to the first metric and to all results, against
   the same trials run as a plain ``htc.map`` (first result, all results).

Run:  .venv/bin/python bench/bench_sweep.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import htcondor2

import htcml_jupyter as htc
from htcml_jupyter.engine.grid import grid_points, unpack


def probe(n_reports: int) -> dict:
    """Runs in the job: report() cost vs a synchronous chirp update, then timed pairs."""
    import time

    from htcondor2.htchirp import HTChirp

    import htcml_jupyter as htc

    chirp = HTChirp()
    chirp.connect()
    t0 = time.perf_counter()
    for i in range(n_reports):
        htc.report(step=i, x=float(i))
    per_report = (time.perf_counter() - t0) / n_reports
    t0 = time.perf_counter()
    for i in range(50):
        chirp.set_job_attr("HtcmlBenchRaw", str(i))
    per_chirp = (time.perf_counter() - t0) / 50
    time.sleep(2)  # let the burst drain
    for i in range(20):
        now = time.time()
        htc.report(step=100_000 + i, sent=now)
        chirp.set_job_attr("HtcmlBenchRawSent", repr(now))
        time.sleep(0.3)
    time.sleep(1)
    return {"per_report": per_report, "per_chirp": per_chirp}


def trial(lr: float, depth: int) -> float:
    import time

    import htcml_jupyter as htc

    loss = 1.0
    for epoch in range(5):
        loss = loss * (1 - lr) + 0.01 * depth
        htc.report(step=epoch, loss=loss)
        time.sleep(0.2)
    return loss


def bench_reports(root: Path) -> None:
    m = htc.map(probe, [2000], root=root, pool="project")
    ours: list[float] = []
    raw: list[float] = []
    log = None
    seen_ours: set[int] = set()
    deadline = time.time() + 300
    while time.time() < deadline and not m.done:
        now = time.time()
        for r in m.reports(0):
            if "sent" in r and r["step"] not in seen_ours:
                seen_ours.add(r["step"])
                ours.append(now - r["sent"])
        if log is None and m.store.event_log.exists():
            log = htcondor2.JobEventLog(str(m.store.event_log))
        if log is not None:
            for event in log.events(stop_after=0):
                if (event.type == htcondor2.JobEventType.ATTRIBUTE_UPDATE
                        and event.get("Attribute") == "HtcmlBenchRawSent"):
                    raw.append(now - float(str(event.get("Value")).strip('"')))
        time.sleep(0.005)
    costs = m.results()[0]
    print(f"report() in the job: {1e6 * costs['per_report']:.1f} us per call; synchronous "
          f"chirp update: {1e6 * costs['per_chirp']:.0f} us (ratio "
          f"{costs['per_report'] / costs['per_chirp']:.4f})")
    print(f"report() -> notebook delay: median {1000 * statistics.median(ours):.0f} ms, "
          f"max {1000 * max(ours):.0f} ms over {len(ours)} reports; raw chirp -> event log: "
          f"median {1000 * statistics.median(raw):.0f} ms, max {1000 * max(raw):.0f} ms "
          f"(ratio of medians {statistics.median(ours) / statistics.median(raw):.2f})")


def bench_sweep(root: Path) -> None:
    grid = {"lr": [0.05 * k for k in range(1, 17)], "depth": [1, 2, 3, 4]}
    start = time.perf_counter()
    m = htc.map(unpack(trial), grid_points(grid), root=root, pool="project", chunksize=1,
                request_memory="256MB")
    first_result = None
    while first_result is None:
        if m.status()["done"]:
            first_result = time.perf_counter() - start
        time.sleep(0.02)
    m.results()
    map_all = time.perf_counter() - start
    m.close()

    start = time.perf_counter()
    s = htc.sweep(trial, grid=grid, root=root, pool="project", metric="loss",
                  request_memory="256MB")
    first_metric = None
    while first_metric is None:
        if s.all_reports():
            first_metric = time.perf_counter() - start
        time.sleep(0.02)
    s.results()
    sweep_all = time.perf_counter() - start
    s.close()
    print(f"64 trials: sweep submit -> first metric {first_metric:.2f} s vs plain map submit "
          f"-> first result {first_result:.2f} s (ratio {first_metric / first_result:.2f})")
    print(f"64 trials: sweep submit -> all results {sweep_all:.2f} s vs plain map "
          f"{map_all:.2f} s (ratio {sweep_all / map_all:.2f})")


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="htcml-bench-sweep-", dir="/tmp"))
    root.chmod(0o755)
    bench_reports(root)
    bench_sweep(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
