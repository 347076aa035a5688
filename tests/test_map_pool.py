"""The map API against the project's real HTCondor pool."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from tests import helpers
from tests.helpers import wait_until

pytestmark = pytest.mark.pool

AWKWARD = [
    'quote " double',
    "quote ' single",
    "semi; colon && rm -rf /",
    "  spaces  around  ",
    "new\nline\r\ncrlf",
    "unicode: ünïcødé 日本語 🚀",
    "$(task) $(Process) ${HOME} `backtick`",
    "back\\slash, comma",
    "",
]


def _queue(config: str, constraint: str, projection: list[str]) -> list[Any]:
    """The job ads in the pool's queue that match ``constraint``."""
    with pool_config(config) as htcondor2:
        return list(htcondor2.Schedd().query(constraint=constraint, projection=projection))


def _queue_count(config: str, map_name: str) -> int:
    return len(_queue(config, f'HtcmlMap == "{map_name}"', ["ClusterId"]))


def test_results_in_item_order(pool_env: str, map_root: Path) -> None:
    m = htc.map(helpers.scale, range(20), kwargs={"factor": 3}, root=map_root,
                request_memory="256MB", chunksize=1)
    assert m.wait(timeout=120)
    assert m.results() == [x * 3 for x in range(20)]
    assert m.status() == {"idle": 0, "running": 0, "done": 20, "failed": 0, "held": 0,
                          "removed": 0}
    assert m.errors == {} and m.holds == {}
    assert len(m.clusters) == 1  # one cluster for the whole map
    statuses = m.tasks()
    assert {str(t.job_id).split(".")[0] for t in statuses} == {str(m.clusters[0])}
    assert all(t.host for t in statuses)


def test_chunks_keep_one_outcome_per_item(pool_env: str, map_root: Path) -> None:
    m = htc.map(helpers.fail_on_multiples_of_three, range(10), root=map_root, chunksize=4)
    assert m.wait(timeout=120)
    assert len(m.tasks()) == 3
    results = m.results(errors="return")
    for i, r in enumerate(results):
        if i % 3 == 0:
            assert isinstance(r, htc.RemoteError) and r.item == i
        else:
            assert r == i + 100
    assert sorted(m.errors) == [0, 3, 6, 9]
    assert m.status()["done"] == 6 and m.status()["failed"] == 4


def test_failed_items_carry_remote_traceback(pool_env: str, map_root: Path) -> None:
    m = htc.map(helpers.fail_on_multiples_of_three, range(7), root=map_root)
    with pytest.raises(htc.MapError) as info:
        m.results(timeout=120)
    err = info.value
    assert sorted(err.errors) == [0, 3, 6]
    for index in (0, 3, 6):
        assert f"item {index}" in str(err)
    remote = m.errors[3]
    assert remote.type_name == "builtins.ValueError"
    assert remote.message == "no multiples of three, got 3"
    assert "fail_on_multiples_of_three" in remote.traceback_text
    assert "raise ValueError" in remote.traceback_text
    assert "runner.py" not in remote.traceback_text
    assert remote.host and remote.job_id and "." in remote.job_id
    rendered = "\n".join(remote._render_traceback_())
    assert "Remote traceback" in rendered and "ValueError: no multiples of three" in rendered
    original = remote.original()
    assert isinstance(original, ValueError)
    assert "no multiples of three, got 3" in m.stderr(3)
    # the other items' results are all there
    assert [r for r in m.results(errors="return") if not isinstance(r, Exception)] == [
        101, 102, 104, 105]


def test_unpicklable_function_submits_nothing(pool_env: str, map_root: Path,
                                              shared_tmp: Path) -> None:
    lock = threading.Lock()

    def uses_lock(x: int) -> int:
        with lock:
            return x

    name = f"never-{uuid.uuid4().hex[:8]}"
    with pytest.raises(htc.PickleError, match="uses_lock") as info:
        htc.map(uses_lock, range(3), root=map_root, name=name)
    assert "lock" in str(info.value).lower()
    assert not (map_root / name).exists()
    assert _queue_count(pool_env, name) == 0

    with open(shared_tmp / "log.txt", "w") as handle:
        def uses_file(x: int) -> int:
            return handle.write(str(x))

        with pytest.raises(htc.PickleError):
            htc.map(uses_file, range(3), root=map_root, name="never-submitted-2")
    assert _queue_count(pool_env, "never-submitted-2") == 0


def test_bad_inputs(pool_env: str, map_root: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        htc.map(helpers.square, [], root=map_root)
    with pytest.raises(TypeError, match="iterable"):
        htc.map(helpers.square, 42, root=map_root)  # type: ignore[arg-type]
    with pytest.raises(htc.OptionError, match="valid options"):
        htc.map(helpers.square, [1], root=map_root, memory="1GB")
    with pytest.raises(htc.OptionError, match="chunksize"):
        htc.map(helpers.square, [1], root=map_root, chunksize=0)
    with pytest.raises(TypeError, match="callable"):
        htc.map("square", [1], root=map_root)  # type: ignore[arg-type]
    assert list(map_root.iterdir()) == []


def test_awkward_strings_and_large_objects(pool_env: str, map_root: Path) -> None:
    m = htc.map(helpers.echo, AWKWARD, root=map_root, chunksize=1)
    assert m.results(timeout=120) == AWKWARD
    assert "ünïcødé" in m.stdout(AWKWARD.index("unicode: ünïcødé 日本語 🚀"))

    blob = os.urandom(30 * 1024 * 1024)
    big = htc.map(helpers.size_of, [blob, b"x"], root=map_root, request_memory="512MB")
    assert big.results(timeout=120) == [len(blob), 1]
    back = htc.map(helpers.make_blob, [20 * 1024 * 1024], root=map_root,
                   request_memory="512MB")
    assert len(back.results(timeout=120)[0]) == 20 * 1024 * 1024


def test_stdout_and_stderr_per_item(pool_env: str, map_root: Path) -> None:
    m = htc.map(helpers.noisy, range(6), root=map_root, chunksize=3)
    assert m.results(timeout=120) == list(range(6))
    for i in range(6):
        assert m.stdout(i).strip() == f"stdout of {i}"
        assert m.stderr(i).strip() == f"stderr of {i}"


def test_hold_is_reported_then_release_runs_it(pool_env: str, map_root: Path,
                                               shared_tmp: Path) -> None:
    data = shared_tmp / "data.txt"
    data.write_text("payload")
    data.chmod(0o644)
    m = htc.map(helpers.read_input_file, range(2), kwargs={"filename": "data.txt"},
                root=map_root, input_files=[str(data)], chunksize=1)
    data.unlink()  # gone before the jobs start: their input transfer fails
    assert m.wait(timeout=120)
    assert m.status()["held"] == 2
    assert all("data.txt" in reason for reason in m.holds.values())
    with pytest.raises(htc.MapError) as info:
        m.results()
    assert all(isinstance(e, htc.ItemHeld) for e in info.value.errors.values())
    data.write_text("payload")
    data.chmod(0o644)
    assert m.release() == 2
    wait_until(lambda: m.status()["done"] == 2, timeout=120, interval=0.5,
               message="the released items should finish")
    assert m.results() == ["0:payload", "1:payload"]


def test_retry_reruns_failed_and_held_items(pool_env: str, map_root: Path,
                                            shared_tmp: Path) -> None:
    flag = shared_tmp / "flag"
    m = htc.map(helpers.fail_until_flag, range(5), kwargs={"flag": str(flag)},
                root=map_root, chunksize=5)
    assert m.wait(timeout=120)
    assert m.status()["failed"] == 5
    flag.write_text("go")
    assert m.retry() == [0, 1, 2, 3, 4]
    assert m.results(timeout=120) == list(range(5))
    assert len(m.clusters) == 2


def test_cancel_removes_jobs_and_keeps_finished_results(pool_env: str, map_root: Path) -> None:
    m = htc.map(helpers.nap, [0.1, 0.1, 600, 600], root=map_root, chunksize=1)
    wait_until(lambda: m.status()["done"] == 2, timeout=120, interval=0.3,
               message="the two short items should finish")
    m.cancel()
    assert m.wait(timeout=60)
    assert m.status() == {"idle": 0, "running": 0, "done": 2, "failed": 0, "held": 0,
                          "removed": 2}
    assert _queue_count(pool_env, m.name) == 0
    out = m.results(errors="return")
    assert out[:2] == [0.1, 0.1]
    assert all(isinstance(e, htc.ItemRemoved) for e in out[2:])


def test_wait_timeout_returns_control(pool_env: str, map_root: Path) -> None:
    m = htc.map(helpers.nap, [600], root=map_root)
    started = time.monotonic()
    assert m.wait(timeout=2) is False
    assert time.monotonic() - started < 5
    with pytest.raises(htc.WaitTimeout):
        m.results(timeout=0.5)
    m.cancel()
    assert m.wait(timeout=60)


def test_job_removed_outside_is_settled(pool_env: str, map_root: Path) -> None:
    m = htc.map(helpers.nap, [600, 600], root=map_root, chunksize=1)
    cluster = wait_until(lambda: m.clusters and m.clusters[0], timeout=60,
                         message="the map has no cluster")
    with pool_config(pool_env) as htcondor2:
        htcondor2.Schedd().act(htcondor2.JobAction.Remove, f"ClusterId == {cluster}")
    assert m.wait(timeout=60)
    assert m.status()["removed"] == 2


def test_as_completed_yields_every_item(pool_env: str, map_root: Path) -> None:
    m = htc.map(helpers.square, range(12), root=map_root, chunksize=1)
    seen = dict(m.as_completed(timeout=120))
    assert seen == {i: i * i for i in range(12)}
    failing = htc.map(helpers.fail_on_multiples_of_three, range(4), root=map_root)
    got = dict(failing.as_completed(timeout=120, errors="return"))
    assert isinstance(got[0], htc.RemoteError) and got[1] == 101


def test_attach_after_submitting_process_exits(pool: str, map_root: Path) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        import htcml_jupyter as htc
        from tests import helpers
        m = htc.map(helpers.scale, range(30), kwargs={{"factor": 5}}, root={str(map_root)!r},
                    name="orphan", pool={pool!r}, chunksize=1)
        print(m.name, flush=True)
        os._exit(0)  # the submitting process dies at once
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "orphan"
    m = htc.attach("orphan", root=map_root)
    assert m.results(timeout=120) == [x * 5 for x in range(30)]
    assert [info.name for info in htc.list_maps(map_root)] == ["orphan"]
    with pytest.raises(htc.MapNotFound):
        htc.attach("no-such-map", root=map_root)


def test_gpu_jobs_match_simulated_gpus(pool_env: str, map_root: Path) -> None:
    def visible_gpu(_: int) -> str:
        import os

        return os.environ.get("CUDA_VISIBLE_DEVICES", "")

    m = htc.map(visible_gpu, range(2), root=map_root, request_gpus=1, chunksize=1)
    results = m.results(timeout=120)
    assert all(r.startswith("GPU-") for r in results)


def test_max_idle_and_policy_options_reach_the_job_ad(pool_env: str, map_root: Path) -> None:
    # No machine matches, so every job the schedd materializes stays idle: with max_idle=2
    # the cluster holds back the other three instead of queueing all five at once.
    m = htc.map(helpers.nap, [600] * 5, root=map_root, chunksize=1, max_idle=2, priority=5,
                requirements="HtcmlTestNoSuchMachine =?= True",
                submit_extra={"My.HtcmlTestTag": '"tagged"'})
    try:
        constraint = f'HtcmlMap == "{m.name}"'
        ads = wait_until(lambda: _queue(pool_env, constraint,
                                        ["ProcId", "JobStatus", "JobPrio", "HtcmlTestTag",
                                         "JobMaterializeMaxIdle"]),
                         timeout=30, message="the map's jobs should be in the queue")
        assert all(ad.get("JobPrio") == 5 and ad.get("HtcmlTestTag") == "tagged"
                   for ad in ads), ads
        assert all(ad.get("JobMaterializeMaxIdle") == 2 for ad in ads), ads
        for _ in range(10):  # several schedd cycles: never more than max_idle idle jobs
            procs = _queue(pool_env, constraint, ["ProcId", "JobStatus"])
            assert len(procs) <= 2 and all(ad["JobStatus"] == 1 for ad in procs), procs
            time.sleep(0.5)
        assert sorted(ad["ProcId"] for ad in procs) == [0, 1]
    finally:
        m.cancel()
    wait_until(lambda: _queue_count(pool_env, m.name) == 0, timeout=60,
               message="cancel should empty the queue of the map's jobs")
    m.close()
