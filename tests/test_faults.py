"""Faults on a real pool: daemons restarted or stopped, starters killed, the submitting
process killed, evictions, a full disk, damaged outcome files and event logs, results
that cannot be unpickled.  Every map must end with every result correct, or say
exactly what went wrong for the items that have none.

Several tests restart or stop the pool's daemons: run this module when no other test
run uses the project's pool.  The pool is left up at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter import devpool
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.engine.mapping import Map
from htcml_jupyter.engine.state import TaskPhase
from htcml_jupyter.engine.store import MapStore
from tests import fault_helpers as fh
from tests.helpers import wait_until

pytestmark = [pytest.mark.pool, pytest.mark.faults]

REPO = str(Path(__file__).resolve().parent.parent)
HTCML = str(Path(sys.executable).with_name("htcml"))
ALL_DONE = {"idle": 0, "running": 0, "failed": 0, "held": 0, "removed": 0}


def _done(n: int) -> dict[str, int]:
    return {**ALL_DONE, "done": n}


def _squares(n: int) -> list[int]:
    return [x * x for x in range(n)]


def _queue(config: str, constraint: str, projection: list[str]) -> list[Any]:
    with pool_config(config) as htcondor2:
        return list(htcondor2.Schedd().query(constraint=constraint, projection=projection))


def _running(m: Map, at_least: int = 1) -> bool:
    return m.status()["running"] >= at_least


@pytest.fixture
def quick_queue_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Maps ask the queue about missing jobs after 3 quiet seconds instead of 60."""
    monkeypatch.setattr("htcml_jupyter.engine.mapping.VANISHED_CHECK_AFTER", 3)


def _child(script: str, *, wait: bool = True) -> subprocess.Popen[str]:
    """A separate Python process that runs ``script`` (the tests folder importable)."""
    code = f"import sys\nsys.path.insert(0, {REPO!r})\n" + textwrap.dedent(script)
    env = {**os.environ, "HTCML_LOCAL_FALLBACK": "0"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    if wait:
        proc.wait(timeout=120)
    return proc


# ------------------------------------------------------------------ maps that finished


@pytest.fixture(scope="module")
def finished_root(pool: str, session_root: Path) -> Path:
    """A folder of maps that all finished cleanly (made at once, in parallel)."""
    root = session_root / "finished-maps"
    root.mkdir()
    root.chmod(0o755)
    maps = [htc.map(fh.sleep_fn, range(4), root=root, name="damaged", pool=pool, chunksize=1),
            htc.map(fh.sleep_fn, range(6), root=root, name="log-deleted", pool=pool,
                    chunksize=1),
            htc.map(fh.sleep_fn, range(6), root=root, name="log-truncated", pool=pool,
                    chunksize=2)]
    for m in maps:
        assert m.wait(timeout=180), f"{m.name} did not finish: {m.status()}"
        assert m.results() == _squares(len(m)), m.name
        m.close()
    return root


def test_damaged_outcome_files_fail_only_their_items(finished_root: Path) -> None:
    outputs = finished_root / "damaged" / "outputs"
    truncated, corrupted = outputs / "task-0.pkl", outputs / "task-1.pkl"
    whole = truncated.read_bytes()
    truncated.write_bytes(whole[:len(whole) // 2])
    corrupted.write_bytes(os.urandom(max(len(corrupted.read_bytes()), 64)))

    m = htc.attach("damaged", root=finished_root)
    assert isinstance(m, Map)
    assert m.status() == {**ALL_DONE, "done": 2, "failed": 2}
    results = m.results(errors="return", timeout=30)
    assert results[2:] == [4, 9]
    for item, path in ((0, truncated), (1, corrupted)):
        err = results[item]
        assert isinstance(err, htc.RemoteError), (item, err)
        assert str(path) in err.message, err.message
        assert "cannot be read" in err.message, err.message
    assert set(m.errors) == {0, 1}
    with pytest.raises(htc.MapError) as raised:
        m.results()
    assert set(raised.value.errors) == {0, 1}
    m.close()


def test_deleted_event_log_of_a_finished_map(finished_root: Path,
                                             quick_queue_check: None) -> None:
    (finished_root / "log-deleted" / "logs" / "events.log").unlink()
    m = htc.attach("log-deleted", root=finished_root)
    assert m.wait(timeout=60), m.status()
    assert m.results() == _squares(6)
    assert m.status() == _done(6)
    m.close()


def test_truncated_event_log_of_a_finished_map(finished_root: Path,
                                               quick_queue_check: None) -> None:
    log = finished_root / "log-truncated" / "logs" / "events.log"
    text = log.read_bytes()
    log.write_bytes(text[:len(text) // 2])
    m = htc.attach("log-truncated", root=finished_root)
    assert m.wait(timeout=60), m.status()
    assert m.results() == _squares(6)
    assert m.status() == _done(6)
    m.close()


# ------------------------------------------------------------------ maps that run


def test_event_log_deleted_while_the_map_runs(pool_env: str, map_root: Path,
                                              quick_queue_check: None) -> None:
    m = htc.map(fh.sleep_fn, range(8), kwargs={"t": 5}, root=map_root, chunksize=1)
    wait_until(lambda: _running(m), timeout=60, message="no job of the map started")
    m.store.event_log.unlink()
    assert m.results(timeout=120) == _squares(8)
    assert m.status() == _done(8)
    m.close()


def test_result_that_cannot_be_unpickled_fails_only_its_item(pool_env: str,
                                                             map_root: Path) -> None:
    expected = {0: 0, 1: 10, 3: 30, 4: 40}
    alone = htc.map(fh.result_only_the_job_can_read, range(5), root=map_root, chunksize=1)
    chunked = htc.map(fh.result_only_the_job_can_read, range(5), root=map_root, chunksize=5)
    for m in (alone, chunked):
        got = dict(m.as_completed(timeout=120, errors="return"))
        assert sorted(got) == list(range(5)), m.name
        assert {i: v for i, v in got.items() if i != 2} == expected, m.name
        err = got[2]
        assert isinstance(err, htc.RemoteError), err
        assert err.type_name == "htcml_jupyter.UnreadableResult"
        assert fh.JOB_ONLY_MODULE in err.message, err.message
        results = m.results(errors="return")
        assert isinstance(results[2], htc.RemoteError)
        assert {i: v for i, v in enumerate(results) if i != 2} == expected
        with pytest.raises(htc.MapError) as raised:
            m.results()
        assert set(raised.value.errors) == {2}
        m.close()


def test_max_idle_jobs_not_yet_materialized_are_not_marked_vanished(
        pool_env: str, map_root: Path, quick_queue_check: None) -> None:
    seen: list[dict[str, int]] = []
    m = htc.map(fh.sleep_fn, range(16), kwargs={"t": 8}, chunksize=1, max_idle=2,
                root=map_root)
    assert m.wait(timeout=200, progress=seen.append), m.status()
    assert m.status() == _done(16)
    assert m.results() == _squares(16)
    assert not [c for c in seen if c["removed"]], "items were marked removed on the way"
    m.close()


def test_vacated_chunks_resume_each_item_from_its_own_checkpoint(pool_env: str,
                                                                 map_root: Path) -> None:
    m = htc.map(fh.train_epochs, range(1, 7), chunksize=3, root=map_root)
    # Items 0 and 3 (inputs 1 and 4) open the two jobs; vacate once the second item of
    # each job saved two epochs: the first ones are finished, the second ones half way.
    def second_items_half_way() -> bool:
        saved = [m.checkpoints().get(i, {}).get("saved") for i in (1, 4)]
        return all(s is not None and s >= 1 for s in saved)

    wait_until(second_items_half_way, timeout=120,
               message="the second items did not save epoch 1")
    assert m.vacate() == 2
    results = m.results(timeout=180)
    for item, state in enumerate(results):
        x = item + 1
        assert state["input"] == x, f"item {item} got the state of input {state['input']}"
        assert state["total"] == fh.expected_total(x), (item, state)
        assert state["epochs"] == list(range(fh.EPOCHS)), (item, state)
        steps = [r["step"] for r in m.reports(item)]
        assert sorted(set(steps)) == list(range(fh.EPOCHS)), (item, steps)
        again = [s for s in set(steps) if steps.count(s) > 1]
        assert len(again) <= 1 and all(steps.count(s) == 2 for s in again), (item, steps)
    info = m.checkpoints()
    for item in (1, 4):  # interrupted: resumed from its own last save
        assert info[item]["evictions"] >= 1, info[item]
        assert info[item]["resumed"] and info[item]["resumed"][0] > 0, info[item]
        assert results[item]["starts"] == 2, results[item]
    for item in (0, 3):  # finished before the eviction: kept, not run again
        assert info[item]["restored"] == [], info[item]
        assert results[item]["starts"] == 1, results[item]
        assert sorted(r["step"] for r in m.reports(item)) == list(range(fh.EPOCHS))
    for item in (2, 5):  # not started before the eviction: ran once, from the start
        assert results[item]["starts"] == 1, results[item]
    assert all(t.evictions >= 1 for t in m.tasks()), m.tasks()
    m.close()


def test_full_disk_in_the_map_folder(pool_env: str, map_root: Path) -> None:
    disk = map_root / "small-disk"
    fh.mount_small_tmpfs(disk, "3m")
    m: Map | None = None
    try:
        m = htc.map(fh.blob_of, range(12), chunksize=1, root=disk)
        settled = m.wait(timeout=120)
        states = m.item_states()
        status = m.status()
        results = m.results(errors="return", timeout=30) if settled else None
        assert settled, f"the map did not settle with its folder full: {status}"
        assert results is not None
        done = [i for i, s in enumerate(states) if s is htc.ItemState.DONE]
        assert 0 < len(done) < 12, status
        for i in done:
            assert results[i] == fh.expected_blob(i), f"item {i} came back damaged"
        for i, s in enumerate(states):
            if s is htc.ItemState.DONE:
                continue
            err = results[i]
            assert s in (htc.ItemState.HELD, htc.ItemState.FAILED), (i, s)
            assert isinstance(err, (htc.ItemHeld, htc.RemoteError)), (i, err)
            assert "space" in str(err).lower() or "ENOSPC" in str(err), (i, str(err))
    finally:
        if m is not None:
            m.cancel()
            m.close()
        fh.unmount_small_tmpfs(disk)


# ------------------------------------------------------------------ the submitting process


def test_submitting_process_killed_mid_map_then_attach(pool: str, map_root: Path) -> None:
    child = _child(f"""
        import htcml_jupyter as htc
        from tests import fault_helpers as fh
        m = htc.map(fh.sleep_fn, range(10), kwargs={{"t": 3}}, root={str(map_root)!r},
                    name="killed", pool={pool!r}, chunksize=1)
        m.wait()
    """, wait=False)
    folder = map_root / "killed"
    try:
        def came_back() -> bool:
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            return any(p.stat().st_size for p in (folder / "outputs").glob("task-*.pkl"))

        wait_until(came_back, timeout=90,
                   message="no job of the child's map sent an outcome back")
        assert MapStore(folder).submissions(), "the child recorded no submission"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    m = htc.attach("killed", root=map_root)
    assert m.results(timeout=120) == _squares(10)
    assert m.status() == _done(10)
    m.close()


def test_submitting_process_killed_mid_submit_leaves_no_orphans(pool: str,
                                                                map_root: Path) -> None:
    child = _child(f"""
        import os
        import htcml_jupyter as htc
        from htcml_jupyter.engine.store import MapStore
        from tests import fault_helpers as fh

        def die(*args, **kwargs):
            os._exit(9)  # the schedd took the jobs; the confirmation is never written

        MapStore.add_submission = die
        htc.map(fh.sleep_fn, range(6), kwargs={{"t": 4}}, root={str(map_root)!r},
                name="half-submitted", pool={pool!r}, chunksize=1)
    """)
    assert child.returncode == 9, child.stderr.read() if child.stderr else ""
    queued = {int(ad["ClusterId"]) for ad in _queue(pool, 'HtcmlMap == "half-submitted"',
                                                    ["ClusterId"])}
    assert len(queued) == 1, f"the schedd should hold the child's cluster: {queued}"

    m = htc.attach("half-submitted", root=map_root)
    assert m.clusters == sorted(queued)
    assert not m.store.pending_submissions()
    in_queue = {int(ad["ClusterId"]) for ad in _queue(pool, 'HtcmlMap == "half-submitted"',
                                                      ["ClusterId"])}
    assert in_queue <= set(m.clusters), f"jobs of no recorded submission: {in_queue}"
    assert m.results(timeout=120) == _squares(6)
    assert m.status() == _done(6)
    m.close()


def test_submitting_process_killed_before_the_schedd_took_the_jobs(pool: str,
                                                                   map_root: Path) -> None:
    child = _child(f"""
        import os
        import htcml_jupyter as htc
        from htcml_jupyter.engine.store import MapStore
        from tests import fault_helpers as fh

        note = MapStore.add_pending_submission

        def note_then_die(self, token, tasks):
            note(self, token, tasks)
            os._exit(9)  # the note is written, the jobs never reach the schedd

        MapStore.add_pending_submission = note_then_die
        htc.map(fh.sleep_fn, range(4), root={str(map_root)!r}, name="never-queued",
                pool={pool!r}, chunksize=1)
    """)
    assert child.returncode == 9, child.stderr.read() if child.stderr else ""
    assert not _queue(pool, 'HtcmlMap == "never-queued"', ["ClusterId"])

    m = htc.attach("never-queued", root=map_root)
    assert isinstance(m, Map)
    m.refresh()  # the first refresh settles what the dead process left
    assert not m.store.pending_submissions() and m.clusters == []
    assert m.wait(timeout=10), m.status()
    results = m.results(errors="return")
    for err in results:
        assert isinstance(err, htc.ItemRemoved), err
        assert "retry()" in str(err) and "before its jobs were queued" in str(err), str(err)
    assert m.retry() == [0, 1, 2, 3]
    assert m.results(timeout=120) == _squares(4)
    assert m.status() == _done(4)
    m.close()


# ------------------------------------------------------------------ daemons


def test_schedd_restart_mid_map_then_a_new_map(pool_env: str, map_root: Path) -> None:
    first = htc.map(fh.sleep_fn, range(8), kwargs={"t": 12}, root=map_root, chunksize=1)
    wait_until(lambda: _running(first, 4), timeout=60, message="the first map did not start")
    old = set(fh.root_pids("condor_schedd"))
    assert old, "no schedd runs in the pool's root"
    out = fh.in_root("condor_restart", "-schedd")
    assert out.returncode == 0, out.stdout + out.stderr
    fh.wait_for_schedd(old)
    # The submission is this process's first call to the new schedd, which rejects the
    # security session cached with the old one (environment="shared": no pool probe
    # before it; an "auto" probe would meet the stale session first).
    second = htc.map(fh.sleep_fn, range(8, 16), root=map_root, chunksize=1,
                     environment="shared")
    assert second.results(timeout=120) == [x * x for x in range(8, 16)]
    assert first.results(timeout=120) == _squares(8)
    assert first.status() == _done(8) and second.status() == _done(8)
    first.close()
    second.close()


def test_starter_killed_mid_job(pool_env: str, map_root: Path) -> None:
    m = htc.map(fh.sleep_fn, range(4), kwargs={"t": 6}, root=map_root, chunksize=1)

    def running_starters() -> dict[int, str]:
        running = {t.job_id for t in m.tasks() if t.phase is TaskPhase.RUNNING}
        return {pid: job for pid, job in fh.starters_of(m.name).items() if job in running}

    starters = wait_until(running_starters, timeout=60,
                          message="no starter runs a job of the map")
    pid, job = next(iter(starters.items()))
    os.kill(pid, signal.SIGKILL)
    assert m.results(timeout=180) == _squares(4)
    assert m.status() == _done(4)
    killed = next(t for t in m.tasks() if t.job_id == job)
    assert killed.starts >= 2, f"the job whose starter was killed should run again: {killed}"
    m.close()


def test_collector_and_negotiator_stopped_mid_map(pool_env: str, map_root: Path) -> None:
    m = htc.map(fh.sleep_fn, range(16), kwargs={"t": 3}, root=map_root, chunksize=1)
    wait_until(lambda: _running(m), timeout=60, message="no job of the map started")
    try:
        for daemon in ("negotiator", "collector"):
            out = fh.in_root("condor_off", "-daemon", daemon)
            assert out.returncode == 0, out.stdout + out.stderr
        time.sleep(20)
    finally:
        for daemon in ("collector", "negotiator"):
            out = fh.in_root("condor_on", "-daemon", daemon)
            assert out.returncode == 0, out.stdout + out.stderr
        fh.wait_for_collector()
    assert m.results(timeout=180) == _squares(16)
    assert m.status() == _done(16)
    m.close()


def test_new_map_right_after_a_collector_restart(pool_env: str, map_root: Path) -> None:
    for _ in range(2):  # a session with the collector as it runs now (an earlier test
        try:            # may have restarted it, and a stale session fails once)
            assert htc.pool_resources().slots > 0
            break
        except htc.PoolUnavailable:
            continue
    try:
        out = fh.in_root("condor_off", "-daemon", "collector")
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        out = fh.in_root("condor_on", "-daemon", "collector")
        assert out.returncode == 0, out.stdout + out.stderr
        fh.wait_for_collector()
    # The map's first word with the new collector (the pool's filesystem domains, for
    # environment="auto") goes through the session the old collector made.
    m = htc.map(fh.sleep_fn, range(4), root=map_root, chunksize=1)
    assert m.results(timeout=120) == _squares(4)
    m.close()


def test_full_disk_that_also_stops_the_event_log(pool_env: str, map_root: Path,
                                                 quick_queue_check: None) -> None:
    # Once nothing at all can be written in the map folder, the shadow cannot add the
    # hold events to the map's event log either: the queue is the only witness left.
    disk = map_root / "full-disk"
    fh.mount_small_tmpfs(disk, "4m")
    m: Map | None = None
    try:
        m = htc.map(fh.slow_blob_of, range(6), kwargs={"size": 300_000, "slow_from": 2,
                                                       "t": 10},
                    chunksize=1, root=disk)
        wait_until(lambda: m is not None and m.status()["done"] == 2, timeout=60,
                   message="the quick items did not come back")
        assert fh.fill_up(disk / "filler") > 0
        settled = m.wait(timeout=60)
        queue = {f"{ad['ClusterId']}.{ad['ProcId']}": str(ad.get("HoldReason"))[:120]
                 for ad in _queue(pool_env, f'HtcmlMap == "{m.name}"',
                                  ["ClusterId", "ProcId", "HoldReason"])}
        assert settled, (f"the map never settled: it shows {m.status()}, while the queue "
                         f"holds {queue}")
        results = m.results(errors="return", timeout=10)
        assert results[:2] == [fh.expected_blob(0, 300_000), fh.expected_blob(1, 300_000)]
        for i in range(2, 6):
            assert isinstance(results[i], htc.ItemHeld | htc.RemoteError), (i, results[i])
            assert "space" in str(results[i]).lower(), (i, str(results[i]))
    finally:
        if m is not None:
            m.cancel()
            m.close()
        fh.unmount_small_tmpfs(disk)


def _pool_cli(action: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONDOR_CONFIG"}
    return subprocess.run([HTCML, "pool", action], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture
def pool_comes_back() -> Iterator[None]:
    """Whatever the test does to the pool, it is up (and answers) afterwards."""
    yield
    if devpool.running_state() is None:
        out = _pool_cli("up")
        assert out.returncode == 0, out.stdout + out.stderr
    assert _pool_cli("status").returncode == 0


def test_pool_down_and_up_mid_map(pool_env: str, map_root: Path,
                                  pool_comes_back: None) -> None:
    # Last in this module: the whole pool stops and starts again.
    m = htc.map(fh.sleep_fn, range(8), kwargs={"t": 6}, root=map_root, chunksize=1)
    wait_until(lambda: _running(m, 4), timeout=60, message="the map did not start")
    down = _pool_cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert devpool.running_state() is None
    up = _pool_cli("up")
    assert up.returncode == 0, up.stdout + up.stderr
    if not m.wait(timeout=150):
        unsettled = {t.job_id: t for t in m.tasks() if t.phase is not TaskPhase.FINISHED}
        try:
            queue: object = _queue(pool_env, f'HtcmlMap == "{m.name}"',
                                   ["ClusterId", "ProcId", "JobStatus", "HoldReason"])
        except Exception as exc:  # only for the message
            queue = exc
        pytest.fail(f"the map never settled: {m.status()}; jobs {unsettled}; queue {queue}")
    assert m.results() == _squares(8)
    assert m.status() == _done(8)
    assert any(t.evictions or t.starts > 1 for t in m.tasks()), \
        "jobs running when the pool stopped should have run again"
    m.close()
