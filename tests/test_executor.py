"""htc.Executor against the real pool: the concurrent.futures conventions."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from pathlib import Path

import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from tests.helpers import wait_until

#: More memory than any slot of the project's pool has: such a job waits idle forever.
NEVER_MATCHES = "500GB"


def scaled(x: int, scale: int = 1) -> int:
    return x * scale


def divide(a: float, b: float) -> float:
    return a / b


class Scaler:
    def __init__(self, scale: int):
        self.scale = scale

    def apply(self, x: int) -> int:
        return x * self.scale


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class Unpicklable(Exception):
    """An exception that cannot travel back: it holds a lock."""

    def __init__(self, message: str):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise Unpicklable("holds a lock")


def live_jobs(pool: str, cluster: int) -> list[int]:
    """Proc ids of the cluster's jobs that are idle, running or held."""
    with pool_config(pool) as htcondor2:
        ads = htcondor2.Schedd().query(constraint=f"ClusterId == {cluster}",
                                       projection=["ProcId", "JobStatus"])
    return [int(ad["ProcId"]) for ad in ads if int(ad["JobStatus"]) in (1, 2, 5)]


def test_options_are_checked_when_the_executor_is_made() -> None:
    with pytest.raises(htc.OptionError, match="request_memory"):
        htc.Executor(request_memroy="1GB")
    with pytest.raises(ValueError, match="chunksize"):
        htc.Executor(chunksize=0)
    with pytest.raises(ValueError, match="window"):
        htc.Executor(window=-1)


@pytest.mark.pool
def test_quick_submits_are_one_cluster_and_resolve_as_completed(pool_env: str,
                                                                 map_root: Path) -> None:
    with htc.Executor(root=map_root, request_memory="256MB") as ex:
        futures = [ex.submit(scaled, i, scale=3) for i in range(12)]
        assert isinstance(ex, cf.Executor) and all(not f.done() for f in futures)
        done, _ = cf.wait(futures, timeout=240, return_when=cf.FIRST_COMPLETED)
        assert done
        finished = list(cf.as_completed(futures, timeout=240))
        assert sorted(finished, key=id) == sorted(futures, key=id)
        seen: list[int] = []
        futures[0].add_done_callback(lambda f: seen.append(f.result()))
        assert seen == [0]  # a callback added to a done future runs at once
    assert [f.result() for f in futures] == [3 * i for i in range(12)]
    assert len(ex.maps) == 1 and len(ex.maps[0].clusters) == 1
    with htc.Executor(root=map_root, request_memory="256MB") as methods:
        scaler = Scaler(5)  # ``scaler.apply`` is a new bound method at every call
        calls = [methods.submit(scaler.apply, i) for i in range(4)]
    assert [f.result() for f in calls] == [0, 5, 10, 15] and len(methods.maps) == 1
    assert {f.map.name for f in futures if f.map is not None} == {ex.maps[0].name}
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(scaled, 1)


@pytest.mark.pool
def test_exceptions_keep_their_type(pool_env: str, map_root: Path) -> None:
    with htc.Executor(root=map_root) as ex:
        zero = ex.submit(divide, 1, 0)
        fine = ex.submit(divide, 1, 4)
        stuck = ex.submit(raise_unpicklable)
        with pytest.raises(ZeroDivisionError) as info:
            zero.result(timeout=240)
        assert isinstance(info.value.__cause__, htc.RemoteError)
        assert "ZeroDivisionError" in info.value.__cause__.traceback_text
        assert isinstance(zero.exception(), ZeroDivisionError)
        assert fine.result(timeout=240) == 0.25 and fine.exception() is None
        error = stuck.exception(timeout=240)
        assert isinstance(error, htc.RemoteError)  # the original could not come back
        assert error.short_type == "Unpicklable" and "holds a lock" in error.message
    assert len(ex.maps) == 2  # two functions: two clusters


@pytest.mark.pool
def test_cancel_removes_a_queued_job_but_not_a_running_one(pool_env: str,
                                                           map_root: Path) -> None:
    queued_ex = htc.Executor(root=map_root, request_memory=NEVER_MATCHES)
    queued = queued_ex.submit(scaled, 1)
    wait_until(lambda: queued.map is not None, 60, message="the call was not submitted")
    assert queued.map is not None
    cluster = queued.map.clusters[0]
    assert live_jobs(pool_env, cluster) == [0]
    assert queued.cancel() and queued.cancelled()
    assert list(cf.as_completed([queued], timeout=10)) == [queued]
    with pytest.raises(cf.CancelledError):
        queued.result()
    wait_until(lambda: live_jobs(pool_env, cluster) == [], 60,
               message="the cancelled call's job is still queued")
    queued_ex.shutdown()

    with htc.Executor(root=map_root) as ex:
        running = ex.submit(nap, 6)
        wait_until(running.running, 120, message="the job never ran")
        assert not running.cancel() and not running.cancelled()
        assert running.result(timeout=120) == 6


@pytest.mark.pool
def test_shutdown_cancels_waiting_calls_and_map_keeps_order(pool_env: str,
                                                             map_root: Path) -> None:
    ex = htc.Executor(root=map_root)
    assert list(ex.map(scaled, range(10), [2] * 10, chunksize=4)) == [2 * i for i in range(10)]
    assert len(ex.maps[0].tasks()) == 3  # 10 calls, 4 per job
    ex.shutdown(wait=True)

    stuck = htc.Executor(root=map_root, request_memory=NEVER_MATCHES, window=5)
    results = stuck.map(scaled, range(3), timeout=1)
    with pytest.raises(TimeoutError):
        next(results)
    results.close()  # the calls left are cancelled
    first = stuck.maps[0]
    wait_until(lambda: live_jobs(pool_env, first.clusters[0]) == [], 60,
               message="closing the results left jobs queued")
    unsent = [stuck.submit(scaled, i) for i in range(3)]  # held back by the 5 s window
    started = time.monotonic()
    stuck.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 30
    assert all(f.cancelled() for f in unsent)
    assert len(stuck.maps) == 1  # the unsent calls never became a cluster
