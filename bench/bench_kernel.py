"""Benchmark: what a running map's tracking and live panel cost the notebook kernel.

A real IPython kernel (ipykernel, started through jupyter_client) loads the extension
and starts a 2,000-item ``%%htc_map`` on the project's pool, with the live panel.
While the map runs we measure the kernel process's CPU time and the round-trip time
of a trivial cell.  The baseline is the same kernel, measured the same way, before
the map exists.  Figures are printed as ratios against that baseline.

Run:  .venv/bin/python bench/bench_kernel.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import start_new_kernel

WINDOW = 20.0  # seconds of measurement, idle and busy alike


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _run(client: Any, code: str, timeout: float = 120) -> float:
    """Execute ``code``; return the round-trip time in seconds (raise on error)."""
    start = time.perf_counter()
    reply = client.execute_interactive(code, timeout=timeout, output_hook=lambda msg: None)
    elapsed = time.perf_counter() - start
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"{code!r} failed: {reply['content']}")
    return elapsed


def _measure(client: Any, pid: int) -> tuple[float, list[float]]:
    """CPU share of one core over WINDOW seconds, and trivial-cell latencies."""
    cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
    latencies = []
    while time.perf_counter() - t0 < WINDOW:
        latencies.append(_run(client, "1 + 1"))
        time.sleep(0.5)
    cpu = (_cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
    return cpu, latencies


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="htcml-bench-kernel-", dir="/tmp"))
    (home / "maps").mkdir()
    for p in (home, home / "maps"):
        p.chmod(0o755)
    os.environ["HTCML_HOME"] = str(home)
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        pid = manager.provisioner.process.pid  # type: ignore[union-attr]
        _run(client, "%load_ext htcml_jupyter")
        _run(client, "import htcml_jupyter as htc")
        idle_cpu, idle_lat = _measure(client, pid)
        _run(client, "items = list(range(2000))")
        submit = _run(client, "%%htc_map --over items --chunksize 1 --memory 128MB -o m\n"
                              "def work(x):\n    import time\n    time.sleep(0.2)\n"
                              "    return x\n")
        busy_cpu, busy_lat = _measure(client, pid)
        _run(client, "print(m.status())")
        _run(client, "m.cancel()")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    p95 = lambda xs: sorted(xs)[int(0.95 * (len(xs) - 1))]  # noqa: E731
    print(f"%%htc_map of 2,000 items returned in {submit:.2f} s")
    print(f"kernel CPU, idle baseline:          {100 * idle_cpu:5.2f} % of one core")
    print(f"kernel CPU, map running with panel: {100 * busy_cpu:5.2f} % of one core "
          f"(extra {100 * (busy_cpu - idle_cpu):.2f} points; target < 5 %)")
    print(f"trivial cell, idle baseline: median {1000 * statistics.median(idle_lat):.1f} ms, "
          f"p95 {1000 * p95(idle_lat):.1f} ms")
    print(f"trivial cell, map running:   median {1000 * statistics.median(busy_lat):.1f} ms, "
          f"p95 {1000 * p95(busy_lat):.1f} ms, max {1000 * max(busy_lat):.1f} ms "
          f"(ratio of medians {statistics.median(busy_lat) / statistics.median(idle_lat):.2f}; "
          f"target < 100 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
