"""``Map.usage()``: what jobs used, from terminate events and (while they run) job ads,
on the real pool; and how the figures are summed and said."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.condor_events import rusage_seconds
from htcml_jupyter.engine.state import EventKind, TaskEvent, TaskPhase, TaskStatus
from htcml_jupyter.engine.usage import JobUsage, MapUsage, UsageBook, map_usage, suggested_size
from htcml_jupyter.server.catalog import summarize
from htcml_jupyter.training.trials import TrialRow, TrialStatus
from htcml_jupyter.views.progress import snapshot
from htcml_jupyter.views.sweep_panel import trials_table_html
from tests.helpers import wait_until


def hold_memory(spec: tuple[int, float | str]) -> int:
    """Use 2.5 s of CPU time (terminate events count CPU time in whole seconds),
    then allocate ``mb`` MB, touch every page and hold it ``seconds`` long, or until the
    file named instead exists (at most 5 min).  A measurement that sees the memory was
    taken after the busy loop."""
    import os
    import time

    mb, until = spec
    start = time.time()
    while time.process_time() < 2.5:  # CPU time: the machine may be busy
        pass
    block = bytearray(mb * 2**20)
    block[::4096] = b"\x01" * len(range(0, len(block), 4096))
    if isinstance(until, str):
        while not os.path.exists(until) and time.time() - start < 300:
            time.sleep(0.2)
    else:
        time.sleep(until)
    return sum(block[::4096])


@pytest.mark.pool
def test_usage_reports_memory_cpu_and_requests(pool_env: str, map_root: Path,
                                               shared_tmp: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTCML_HOME", str(map_root))
    release = shared_tmp / "release"
    m = htc.map(hold_memory, [(200, str(release)), (0, 0), (0, 0)], chunksize=1,
                request_memory="1GB", environment="shared")
    # While the big job runs, its job ad gives the figures so far (execute points
    # without cgroups measure jobs by /proc snapshots: every PROCD_MAX_SNAPSHOT_INTERVAL
    # seconds, 60 by default, 1 on the project's pool).
    def live_figures() -> MapUsage | None:
        u = m.usage()
        return u if u.running and (u.running[0].memory_mb or 0) >= 200 else None

    partial = wait_until(live_figures, timeout=120, interval=1.0,
                         message="no live memory figure")
    release.touch()
    assert partial is not None
    live = partial.running[0]
    assert live.task == 0 and not live.finished
    assert live.memory_requested_mb == 1024 and live.cpus_requested == 1
    assert (live.wall_seconds or 0) > 0
    assert "still running (figures so far)" in partial.summary()
    assert m.results(timeout=120) == [200 * 256, 0, 0]

    usage = m.usage()
    assert len(usage.jobs) == 3 and not usage.running
    big = next(j for j in usage.jobs if j.task == 0)
    assert big.finished and big.job_id == m.job_of(0).job_id
    assert big.memory_mb is not None and 200 <= big.memory_mb <= 400
    assert big.cpu_seconds is not None and big.cpu_seconds > 0
    assert big.memory_requested_mb == 1024 and (big.memory_allocated_mb or 0) >= 1024
    assert big.disk_requested_mb == 1024 and big.disk_mb is not None and big.disk_mb > 0
    assert big.cpus_allocated == 1 and big.gpus_requested in (None, 0)
    assert big.wall_seconds is not None and big.wall_seconds >= 1
    # totals add up
    total = usage.total()
    assert total["jobs"] == total["finished"] == 3
    assert total["cpu_seconds"] == pytest.approx(sum(j.cpu_seconds or 0 for j in usage.jobs))
    assert total["wall_seconds"] == pytest.approx(sum(j.wall_seconds or 0 for j in usage.jobs))
    assert usage.core_hours == pytest.approx(sum(j.wall_seconds or 0 for j in usage.jobs) / 3600)
    assert total["memory_peak_mb"] == big.memory_mb
    line = usage.summary()
    assert re.search(r"memory peak \d+ MB of 1 GB asked", line), line
    advice = "\n".join(usage.advice())
    asked = re.search(r"every job used under 1/3 of 1 GB .*request_memory='(\d+)MB'", advice)
    assert asked and big.memory_mb < int(asked.group(1)) < 1024, advice
    # the same figures from the folder alone, in a fresh handle
    again = htc.attach(m.name).usage()
    assert [j.memory_mb for j in again.jobs] == [j.memory_mb for j in usage.jobs]
    # and the panel's snapshot shows the line and the advice once finished
    p = snapshot(m)
    assert p.usage == line and p.advice == usage.advice()


@pytest.mark.pool
def test_usage_of_gpu_jobs(pool_env: str, map_root: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTCML_HOME", str(map_root))
    m = htc.map(hold_memory, [(0, 1.5)], request_gpus=1, environment="shared")
    m.results(timeout=120)
    job = m.usage().jobs[0]
    assert job.gpus_requested == 1 and job.gpus_allocated == 1
    assert job.gpu_hours > 0 and job.gpu_hours == pytest.approx((job.wall_seconds or 0) / 3600)
    assert "GPU-h" in m.usage().summary()
    # the JupyterLab sidebar's row carries the same line
    [info] = [i for i in htc.list_maps() if i.name == m.name]
    assert summarize(info, m).as_json()["usage"] == m.usage().summary()


def test_usage_sums_runs_and_says_it() -> None:
    book = UsageBook()
    final = {"cpu_seconds": 30.0, "memory_mb": 310.0, "memory_requested_mb": 2048.0,
             "memory_allocated_mb": 2048.0, "disk_mb": 700.0, "disk_requested_mb": 1024.0,
             "cpus_requested": 4.0, "cpus_allocated": 4.0, "cpus_used": 0.5,
             "not_a_field": 1.0}
    for event in (TaskEvent(0, EventKind.STARTED, 100.0),
                  TaskEvent(0, EventKind.EVICTED, 160.0),  # a first run of 60 s
                  TaskEvent(0, EventKind.STARTED, 200.0),
                  TaskEvent(0, EventKind.FINISHED, 320.0, {"usage": final}),
                  TaskEvent(1, EventKind.STARTED, 300.0)):
        book.add(event)
    tasks = [TaskStatus(0, range(0, 2), TaskPhase.FINISHED, job_id="7.0"),
             TaskStatus(1, range(2, 4), TaskPhase.RUNNING, job_id="7.1"),
             TaskStatus(2, range(4, 6), TaskPhase.IDLE)]
    usage = map_usage(book, tasks, {"7.1": {"wall_seconds": 40.0, "memory_mb": 100.0,
                                            "cpu_seconds": 5.0}})
    first, second = usage.jobs
    assert first.wall_seconds == 180.0 and first.finished and first.items == 2
    assert first.core_hours == pytest.approx(4 * 180 / 3600)
    assert second.wall_seconds == 40.0 and not second.finished
    assert usage.total()["cpu_seconds"] == 35.0 and usage.memory_peak_mb == 310.0
    summary = usage.summary()
    assert summary.startswith("0.2 core-h, 0.0 GPU-h · CPU time 35 s · memory peak 310 MB "
                              "of 2 GB asked · disk peak 700 MB of 1 GB asked"), summary
    assert "1 of 3 jobs still running" in summary
    # advice counts finished jobs only, and only requests used under a third
    advice = usage.advice()
    assert advice == ["memory: every finished job so far used under 1/3 of 2 GB (peak 310 MB);"
                      " ask for request_memory='500MB'",
                      "CPUs: every finished job so far kept under 1/3 of 4 busy (at most 0.5);"
                      " ask for request_cpus=1"]
    both = MapUsage.combine([usage, usage])
    assert both.jobs_total == 6 and both.core_hours == pytest.approx(2 * usage.core_hours)
    assert map_usage(UsageBook(), tasks).summary() == "no job has run yet"


@pytest.mark.parametrize(("mb", "ask"), [(5, "100MB"), (218, "400MB"), (600, "900MB"),
                                         (700, "1.5GB"), (3000, "4.5GB")])
def test_suggested_size(mb: float, ask: str) -> None:
    assert suggested_size(mb) == ask


def test_rusage_text() -> None:
    assert rusage_seconds("Usr 0 00:00:04, Sys 0 00:00:01") == 5.0
    assert rusage_seconds("Usr 1 02:03:04, Sys 0 00:01:00") == 86400 + 7384 + 60
    assert rusage_seconds("") is None


def _count(values: list[int]) -> int:
    return len(values)


@pytest.mark.pool
def test_a_workflow_sums_its_stages(pool_env: str, map_root: Path) -> None:
    wf = htc.chain(htc.stage(hold_memory, [(0, 0.5), (0, 0.5)]), htc.stage(_count, over="all"),
                   root=map_root, pool=pool_env)
    assert wf.wait(timeout=240) == "succeeded" and wf.result() == 2
    total = wf.usage()
    stages = [htc.attach(name, root=map_root).usage() for name in wf.stage_names]
    assert [len(s.jobs) for s in stages] == [2, 1] and total.jobs_total == 3
    assert all(j.finished and j.memory_requested_mb for j in total.jobs)
    assert total.wall_seconds == pytest.approx(sum(s.wall_seconds for s in stages))
    assert total.cpu_seconds == pytest.approx(sum(s.cpu_seconds or 0 for s in stages))
    assert "3 of" not in total.summary() and "core-h" in total.summary()


def test_trials_table_has_usage_columns() -> None:
    used = JobUsage(0, "5.0", 1, True, wall_seconds=7200.0, cpu_seconds=65.0, memory_mb=218.0,
                    memory_requested_mb=1024.0, disk_mb=0.2, disk_requested_mb=1024.0,
                    gpus_allocated=1.0)
    rows = [TrialRow(0, {"lr": 0.1}, TrialStatus.DONE, {"loss": 0.5}, 3, 7.0, "vm", 0, None,
                     None, used),
            TrialRow(1, {"lr": 0.2}, TrialStatus.IDLE, {}, 0, None, None, 0, None, None)]
    table = trials_table_html(rows, "loss", "min")
    for text in ("<th", "CPU time", "memory", "disk", "GPU-h", "1 min 05 s", "218 MB / 1 GB",
                 "0.2 MB / 1 GB", ">2.0<"):
        assert text in table, text
    flat = rows[0].flat()
    assert flat["cpu_seconds"] == 65.0 and flat["memory_mb"] == 218.0
    assert flat["gpu_hours"] == 2.0 and flat["core_hours"] == 2.0
    assert rows[1].flat()["memory_mb"] is None
    assert "GPU-h" not in trials_table_html(rows[1:], "loss", "min")


def test_local_maps_report_wall_time_only(map_root: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTCML_HOME", str(map_root))
    m = htc.map(abs, [-1, -2], chunksize=1, pool="local")
    assert m.results(timeout=60) == [1, 2]
    usage = m.usage()
    assert [j.finished for j in usage.jobs] == [True, True]
    assert all(j.wall_seconds is not None and j.memory_mb is None for j in usage.jobs)
    assert usage.summary().endswith("core-h, 0.0 GPU-h") and usage.advice() == []
