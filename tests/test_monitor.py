"""One monitor thread per process follows every live map handle and every panel on one;
building a handle asks the schedd nothing."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.condor import CondorBackend
from htcml_jupyter.engine import monitor
from htcml_jupyter.engine.mapping import Map
from htcml_jupyter.engine.monitor import MONITOR, THREAD_NAME, Monitor
from htcml_jupyter.engine.store import MapStore
from tests import helpers
from tests.helpers import wait_until


def _followed(name: str) -> list[Map]:
    """The handles of map ``name`` the monitor follows now."""
    return [f for f in MONITOR.followed() if isinstance(f, Map) and f.name == name]


def _monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def _local_map(root: Path, n: int = 3) -> Map:
    m = htc.map(helpers.square, range(n), root=root, backend="local", chunksize=1)
    assert m.wait(timeout=60), m.status()
    return m


def test_twenty_handles_share_one_thread_and_a_dropped_one_leaves(map_root: Path) -> None:
    first = _local_map(map_root)
    handles = [htc.attach(first.name, root=map_root) for _ in range(19)] + [first]
    assert all(isinstance(h, Map) for h in handles)
    assert len(_monitor_threads()) == 1, threading.enumerate()
    assert not [t for t in threading.enumerate() if first.name in t.name]
    followed = MONITOR.followed()
    assert all(any(h is f for f in followed) for h in handles)
    del followed

    dropped = weakref.ref(handles.pop())
    del first
    gc.collect()
    assert dropped() is None, "the monitor must not keep a dropped handle alive"
    assert not any(h is dropped() for h in MONITOR.followed())
    name = handles[0].name
    assert len(_followed(name)) == 19

    handles.pop().close()  # a closed handle leaves at once
    assert len(_followed(name)) == 18
    for h in handles:
        assert h.status()["done"] == 3
    del handles, h
    gc.collect()
    wait_until(lambda: not _followed(name), timeout=10,
               message="the handles were not released")


def test_monitor_refreshes_a_handle_and_its_watchers_hear(map_root: Path) -> None:
    m = htc.map(helpers.nap, [0.5, 0.5], root=map_root, backend="local", chunksize=1)
    heard: list[bool] = []

    def hear(changed: bool) -> bool:
        heard.append(changed)
        return True

    watch = MONITOR.watch(m, hear, interval=0.1)
    # nothing here reads the map: the monitor thread does, and tells the watcher
    wait_until(lambda: m.parts.table.counts()["done"] == 2, timeout=60,
               message="the monitor did not read the jobs' events")
    assert True in heard and watch.active
    assert MONITOR.watches(m) == [watch]
    watch.stop()
    assert not watch.active and MONITOR.watches(m) == []
    m.close()


def test_a_watcher_that_returns_false_is_called_no_more(map_root: Path) -> None:
    m = _local_map(map_root)
    calls: list[bool] = []

    def once(changed: bool) -> bool:
        calls.append(changed)
        return False

    watch = MONITOR.watch(m, once, interval=0.05)
    wait_until(lambda: not watch.active, timeout=10, message="the watch did not end")
    time.sleep(0.5)
    assert len(calls) == 1
    m.close()


class _Quiet:
    """A handle whose jobs never change (what the monitor sees of a quiet map)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.changes: list[float] = []

    def refresh(self) -> bool:
        now = time.monotonic()
        self.times.append(now)
        return any(abs(now - t) < 0.02 for t in self.changes)


def test_intervals_grow_while_quiet_and_shrink_on_a_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor, "QUICK", 0.05)
    monkeypatch.setattr(monitor, "SLOW", 0.4)
    mon = Monitor()
    quiet = _Quiet()
    mon.watch(quiet, lambda changed: True, interval=0.05)
    wait_until(lambda: len(quiet.times) >= 8, timeout=20, message="too few refreshes")
    gaps = [b - a for a, b in zip(quiet.times, quiet.times[1:], strict=False)]
    assert gaps[-1] > 2 * gaps[0], gaps
    assert max(gaps) < 0.4 + 0.3, gaps  # never slower than SLOW (and some scheduling)
    mon.wake(quiet)
    before = len(quiet.times)
    wait_until(lambda: len(quiet.times) > before, timeout=1, message="wake() was not heard")
    assert mon.thread is not None and mon.thread.name == THREAD_NAME
    mon.unregister(quiet)
    wait_until(lambda: mon.thread is None, timeout=5,
               message="the thread must end once nothing is followed")


class _Broken(_Quiet):
    """A handle whose folder went away: every refresh raises."""

    def refresh(self) -> bool:
        super().refresh()
        raise OSError("the map's folder is gone")


def test_a_handle_that_fails_to_refresh_is_told_and_backed_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor, "QUICK", 0.05)
    monkeypatch.setattr(monitor, "SLOW", 0.4)
    mon = Monitor()
    broken = _Broken()
    heard: list[bool] = []

    def hear(changed: bool) -> bool:
        heard.append(changed)
        return True

    mon.watch(broken, hear, interval=0.05)
    wait_until(lambda: len(broken.times) >= 6, timeout=20, message="too few refreshes")
    gaps = [b - a for a, b in zip(broken.times, broken.times[1:], strict=False)]
    assert gaps[-1] > 2 * gaps[0], gaps  # not hammered at the quick interval
    assert heard and all(heard)  # the watcher looks for itself (a panel shows the error)
    mon.stop()
    assert mon.thread is None


class _CountingBackend(CondorBackend):
    """A real CondorBackend that counts its schedd calls."""

    calls = 0

    def _with_schedd(self, action: Any, what: str) -> Any:
        self.calls += 1
        return super()._with_schedd(action, what)


@pytest.mark.pool
def test_building_a_handle_asks_no_schedd(pool_env: str, map_root: Path,
                                          tmp_path: Path) -> None:
    done = htc.map(helpers.square, range(3), root=map_root, chunksize=1)
    assert done.results(timeout=120) == [0, 1, 4]
    done.close()
    # a note left by a process that has ended: the next handle settles it, not at once
    subprocess.run([sys.executable, "-c",
                    "import sys, pathlib; from htcml_jupyter.engine.store import MapStore; "
                    "MapStore(pathlib.Path(sys.argv[1])).add_pending_submission('gone', [0])",
                    str(done.store.path)], check=True)
    config = tmp_path / "dead_pool_config"
    config.write_text("CONDOR_HOST = 127.0.0.1:1\nSCHEDD_HOST = 127.0.0.1:1\n"
                      "SCHEDD_ADDRESS_FILE = /nonexistent\n")
    backend = _CountingBackend(str(config))

    m = Map(MapStore(done.store.path), backend)
    assert backend.calls == 0, "building a handle called the schedd"
    assert m.status()["done"] == 3  # from the folder: the event log and outcome files
    assert backend.calls == 1  # the first refresh tried to settle the note, and failed
    assert m.store.pending_submissions(abandoned_only=True) == {"gone": [0]}
    assert m.results() == [0, 1, 4]
    assert backend.calls == 1, "a pool that is down is not asked again at once"
    m.close()


def test_a_process_exits_cleanly_while_the_monitor_refreshes(map_root: Path) -> None:
    script = f"""
import htcml_jupyter as htc
from htcml_jupyter.engine.monitor import MONITOR
from tests import helpers
maps = [htc.map(helpers.square, range(2), root={str(map_root)!r}, backend="local")
        for _ in range(3)]
for m in maps:
    assert m.wait(timeout=60)
    MONITOR.watch(m, lambda changed: True, interval=0.001)
"""
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parent.parent)
        assert done.returncode == 0 and "Fatal" not in done.stderr, done.stderr


@pytest.mark.pool
def test_a_torchrun_panel_follows_its_run_on_the_monitor(pool: str, map_root: Path) -> None:
    from htcml_jupyter.views.torchrun_panel import TorchrunPanel
    from tests.test_torchrun import ddp_train

    run = htc.torchrun(ddp_train, nodes=2, procs_per_node=1, kwargs={"epochs": 2},
                       pool=pool, root=map_root, request_memory="1GB")
    panel = TorchrunPanel(run, interval=0.2)
    assert panel.running and len(MONITOR.watches(run.map)) == 1
    wait_until(lambda: not panel.running, timeout=300,
               message="the panel should stop once the run has ended")
    assert panel.last is not None and panel.last.finished and panel.cancel_button.disabled
    assert not [t for t in threading.enumerate() if run.name in t.name]
    run.close()


@pytest.mark.pool
def test_a_sweeps_own_watcher_runs_on_the_monitor(pool_env: str, map_root: Path) -> None:
    from tests.test_workflows import slow_loss

    lrs = [0.01, 5.0]
    s = htc.sweep(slow_loss, grid={"lr": lrs}, root=map_root, watcher="kernel",
                  early_stop=htc.Threshold("loss", step=2, value=1.0))
    assert len(MONITOR.watches(s)) == 1, "the policy is applied from the monitor thread"
    assert not [t for t in threading.enumerate() if s.name in t.name]
    assert s.wait(timeout=180)
    assert set(s.aborted) == {1} and s.watch_errors == []
    assert s.status()["done"] == 1
    wait_until(lambda: not MONITOR.watches(s), timeout=10,
               message="the watcher should end once the sweep is finished")
    s.close()


def test_a_forked_child_starts_with_an_empty_monitor_of_its_own(map_root: Path) -> None:
    m = _local_map(map_root)
    assert MONITOR.thread is not None  # the parent's thread follows m
    pid = os.fork()
    if pid == 0:  # the child: no thread came along, and nothing the parent followed
        code = 1
        try:
            if MONITOR.thread is None and not MONITOR.followed():
                quiet = _Quiet()
                MONITOR.watch(quiet, lambda changed: True, interval=0.05)
                deadline = time.monotonic() + 10
                while not quiet.times and time.monotonic() < deadline:
                    time.sleep(0.05)
                code = 0 if quiet.times else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert any(f is m for f in MONITOR.followed())
    m.close()
