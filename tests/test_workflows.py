"""Workflows that outlive the notebook, on the project's pool: a sweep's early-abort
watcher as a local-universe job, and chained stages run by DAGMan."""

from __future__ import annotations

import json
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
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.backends.condor_pool import watcher_description
from htcml_jupyter.backends.local import LocalBackend
from htcml_jupyter.engine.errors import HTCMLError
from htcml_jupyter.engine.inputs import InputFileError
from htcml_jupyter.engine.options import OptionError
from htcml_jupyter.engine.store import MapStore
from htcml_jupyter.workflows.dag import create_chain
from htcml_jupyter.workflows.watcher_job import (
    WATCHER_FILE,
    WATCHER_SILENT_AFTER,
    pool_watcher_active,
    watcher_job,
    watcher_record,
    write_record,
)
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parent.parent

#: The kernel that dies: it starts a sweep whose bad trials report a high loss and
#: would run for a long time, prints the sweep's name, and waits to be killed.
KERNEL = textwrap.dedent('''
    import sys, time
    import htcml_jupyter as htc

    def train(lr, steps=40):
        import time
        import htcml_jupyter as htc
        for step in range(steps):
            htc.report(step=step, loss=lr * (1 + step))
            time.sleep(0.5)
        return {"final": lr * steps}

    s = htc.sweep(train, grid={"lr": LRS}, kwargs={"steps": STEPS}, pool=sys.argv[2],
                  early_stop=htc.Threshold("loss", step=2, value=1.0), root=sys.argv[1])
    print(s.name, flush=True)
    time.sleep(600)
''')

#: The kernel that starts a chain and is killed at once.
CHAIN_KERNEL = textwrap.dedent('''
    import sys
    import htcml_jupyter as htc

    def train(lr, width):
        return {"lr": lr, "width": width, "w": lr * width}

    def evaluate(model, target=0.5):
        return {**model, "score": (model["w"] - target) ** 2}

    def keep_best(scored):
        return min(scored, key=lambda m: m["score"])

    wf = htc.chain(htc.stage(train, grid={"lr": LRS, "width": WIDTHS}),
                   htc.stage(evaluate, kwargs={"target": TARGET}),
                   htc.stage(keep_best, over="all"),
                   name="chain", root=sys.argv[1], pool=sys.argv[2])
    print(wf.name, flush=True)
    import time; time.sleep(600)
''')


def _start(script: str, root: Path, pool: str) -> tuple[subprocess.Popen[str], str]:
    """Run ``script`` as a separate Python process; returns it and its first line."""
    path = root / "kernel.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(path), str(root), pool], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise AssertionError(f"the kernel printed nothing: {proc.communicate()[1]}")
    return proc, line


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def _history(pool: str, constraint: str, projection: list[str]) -> list[Any]:
    with pool_config(pool) as htcondor2:
        return list(htcondor2.Schedd().history(constraint, projection))


@pytest.fixture
def killed() -> Iterator[list[subprocess.Popen[str]]]:
    """Kernels a test starts; any still alive at the end are killed."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- the watcher job


@pytest.mark.pool
def test_sweep_policy_applied_after_the_kernel_is_killed(
        pool_env: str, map_root: Path, killed: list[subprocess.Popen[str]]) -> None:
    lrs, steps = [0.01, 0.02, 5.0, 0.03, 6.0], 40
    script = KERNEL.replace("LRS", repr(lrs)).replace("STEPS", str(steps))
    proc, name = _start(script, map_root, pool_env)
    killed.append(proc)
    store = MapStore(map_root / name)
    assert watcher_record(store)["state"] in ("submitted", "watching")
    _kill(proc)  # before any trial reached the policy's step
    killed_at = time.time()
    expect = {i for i, lr in enumerate(lrs) if lr * 3 > 1.0}  # loss at step 2, by hand

    wait_until(lambda: watcher_record(store).get("state") == "finished", timeout=240,
               interval=0.5, message="the watcher did not see the sweep settled")
    record = watcher_record(store)
    assert set(record["aborted"]) == expect and record["errors"] == []
    s = htc.attach(name, root=map_root)
    assert isinstance(s, htc.Sweep)
    assert s.wait(timeout=60)
    rows = {r.trial: r for r in s.rows()}
    assert {t for t, r in rows.items() if r.status == "aborted early"} == expect
    assert all(rows[t].status == "done" for t in set(rows) - expect)
    for t in expect:
        assert "at step 2 is worse than 1" in str(rows[t].reason)
        assert 3 <= rows[t].steps < steps  # stopped early, its last metrics kept
    times = [json.loads(line)["time"] for line in
             (store.path / "aborted.jsonl").read_text().splitlines()]
    assert len(times) == len(expect) and min(times) > killed_at  # no double abort, no kernel
    # the trials' jobs were removed by the watcher, and the watcher itself exited cleanly
    job_ids = {s.job_of(t).job_id for t in expect}
    removed = _history(pool_env, f'HtcmlMap == "{name}" && JobStatus == 3',
                       ["ClusterId", "ProcId"])
    assert {f"{ad['ClusterId']}.{ad['ProcId']}" for ad in removed} == job_ids
    watcher = wait_until(lambda: _history(pool_env, f'HtcmlWatcherOf == "{name}"',
                                          ["ClusterId", "ProcId", "ExitCode", "JobUniverse"]),
                         timeout=30, interval=0.5, message="no watcher in the history")
    assert [f"{ad['ClusterId']}.{ad['ProcId']}" for ad in watcher] == [record["job"]]
    assert watcher[0]["ExitCode"] == 0 and watcher[0]["JobUniverse"] == 12  # local
    assert not (store.path / "tokens.d").exists()  # the handed-over tokens went with it


def slow_loss(lr: float, steps: int = 12) -> float:
    import time

    import htcml_jupyter as htc

    for step in range(steps):
        htc.report(step=step, loss=lr * (1 + step))
        time.sleep(0.5)
    return lr


@pytest.mark.pool
def test_a_live_kernel_leaves_the_policy_to_the_watcher(pool_env: str, map_root: Path) -> None:
    lrs = [0.01, 5.0, 0.02, 6.0]
    s = htc.sweep(slow_loss, grid={"lr": lrs}, root=map_root,
                  early_stop=htc.Threshold("loss", step=2, value=1.0))
    assert s.wait(timeout=180)
    wait_until(lambda: watcher_record(s.store).get("state") == "finished", timeout=30,
               interval=0.5, message="the watcher did not finish")
    record = watcher_record(s.store)
    expect = {i for i, lr in enumerate(lrs) if lr * 3 > 1.0}
    assert set(s.aborted) == expect == set(record["aborted"])  # every abort was the watcher's
    lines = (s.store.path / "aborted.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["item"] for line in lines) == sorted(expect)  # once each
    assert s.watch_errors == [] and s.status()["done"] == len(lrs) - len(expect)
    s.close()


@pytest.mark.pool
def test_a_cancelled_sweep_ends_its_watcher(pool_env: str, map_root: Path) -> None:
    s = htc.sweep(slow_loss, grid={"lr": [0.1, 0.2]}, kwargs={"steps": 200}, root=map_root,
                  early_stop=htc.Threshold("loss", step=500, value=1.0))
    wait_until(lambda: watcher_record(s.store).get("state") == "watching", timeout=60,
               interval=0.5, message="the watcher did not start")
    s.cancel()
    wait_until(lambda: watcher_record(s.store).get("state") == "finished", timeout=60,
               interval=0.5, message="the watcher outlived its cancelled sweep")
    with pool_config(pool_env) as htcondor2:
        queued = wait_until(lambda: not htcondor2.Schedd().query(
            constraint=f'HtcmlWatcherOf == "{s.name}"', projection=["ClusterId"]),
            timeout=30, interval=0.5, message="the watcher job is still queued")
    assert queued and s.status()["removed"] == 2 and s.aborted == {}
    s.close()


def test_watcher_description_runs_this_interpreter_in_the_local_universe(
        tmp_path: Path) -> None:
    store = MapStore(tmp_path / "sweep-1")
    commands = watcher_description(store, watcher_job(token_directory="/x/tokens.d"))
    assert commands["universe"] == "local"
    assert commands["executable"] == sys.executable
    # -P: nothing planted in the map folder (its working folder) shadows the stdlib
    assert commands["arguments"] == '"-P -m htcml_jupyter.workflows.watch ."'
    spaced = watcher_description(MapStore(tmp_path / "a b's" / "s-1"), watcher_job(
        python="/py", token_directory="/x y/it's tokens.d"))
    assert "_CONDOR_SEC_TOKEN_DIRECTORY='/x y/it''s tokens.d'" in spaced["environment"]
    assert commands["initialdir"] == str(store.path)  # where it runs, spaces and all
    assert "getenv" not in commands and "CONDOR_CONFIG" not in commands["environment"]
    assert "_CONDOR_SEC_TOKEN_DIRECTORY=/x/tokens.d" in commands["environment"]
    assert commands["My.HtcmlWatcherOf"] == '"sweep-1"'
    assert commands["periodic_remove"] == "JobStatus == 5"  # a watcher that cannot start


def test_kernel_stands_aside_only_while_the_watcher_is_alive(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    now = time.time()
    assert not pool_watcher_active(store)  # none
    write_record(store, {"state": "submitted", "submitted": now - 1})
    assert pool_watcher_active(store)  # starting
    write_record(store, {"state": "submitted", "submitted": now - WATCHER_SILENT_AFTER - 1})
    assert not pool_watcher_active(store)  # never started
    write_record(store, {"state": "watching", "submitted": now - 100, "heartbeat": now - 2})
    assert pool_watcher_active(store)
    write_record(store, {"state": "watching", "heartbeat": now - WATCHER_SILENT_AFTER - 1})
    assert not pool_watcher_active(store)  # silent: the kernel takes over
    for state in ("finished", "failed"):
        write_record(store, {"state": state, "heartbeat": now})
        assert not pool_watcher_active(store)
    (tmp_path / WATCHER_FILE).write_text("{cut sh")
    assert watcher_record(store) == {} and not pool_watcher_active(store)


# ---------------------------------------------------------------- chained stages


@pytest.mark.pool
def test_train_evaluate_keep_best_outlives_its_kernel(
        pool_env: str, map_root: Path, killed: list[subprocess.Popen[str]]) -> None:
    lrs, widths, target = [0.1, 0.2, 0.35], [1, 2], 0.6
    script = (CHAIN_KERNEL.replace("LRS", repr(lrs)).replace("WIDTHS", repr(widths))
              .replace("TARGET", repr(target)))
    proc, name = _start(script, map_root, pool_env)
    killed.append(proc)
    _kill(proc)  # DAGMan runs the rest

    points = [(lr, w) for lr in lrs for w in widths]
    scores = [(lr * w - target) ** 2 for lr, w in points]
    best = points[scores.index(min(scores))]

    wf = htc.attach_workflow(name, root=map_root)
    assert wf.stage_names == ["chain.0-train", "chain.1-evaluate", "chain.2-keep_best"]
    value = wf.result(timeout=240)
    assert wf.state == "succeeded"
    assert (value["lr"], value["width"]) == best
    assert value["score"] == pytest.approx(min(scores))
    assert [s["ok"] for s in wf.finished_stages()] == [True, True, True]
    # each stage is an ordinary map: attach reads its results, one job per item
    trained = htc.attach("chain.0-train", root=map_root)
    evaluated = htc.attach("chain.1-evaluate", root=map_root)
    assert [(r["lr"], r["width"]) for r in trained.results()] == points
    assert [r["score"] for r in evaluated.results()] == pytest.approx(scores)
    assert len(evaluated.clusters) == 1 and len(evaluated.tasks()) == len(points)
    assert all(t.host for t in evaluated.tasks())
    kept = htc.attach("chain.2-keep_best", root=map_root)
    assert kept.results() == [value]
    # the per-workflow DAGMan settings came from its own CONFIG file
    out = (map_root / name / "workflow.dag.dagman.out").read_text()
    assert "Using DAGMan config file" in out and "DAGMAN_USER_LOG_SCAN_INTERVAL setting: 1" in out


def _halve(x: int) -> float:
    if x == 3:
        raise ValueError("three cannot be halved here")
    return x / 2


def _total(values: list[float]) -> float:
    return sum(values)


@pytest.mark.pool
def test_a_failed_item_stops_the_chain_at_its_stage(pool_env: str, map_root: Path) -> None:
    wf = htc.chain(htc.stage(_halve, [1, 2, 3]), htc.stage(_total, over="all"),
                   root=map_root, pool=pool_env)
    assert wf.wait(timeout=180) == "failed"
    [first] = wf.finished_stages()
    assert first["ok"] is False and first["failed"] == [2]
    halved = htc.attach(wf.stage_names[0], root=map_root)
    assert isinstance(halved, htc.Map)
    errors = halved.results(errors="return")
    assert errors[:2] == [0.5, 1.0] and "three cannot be halved" in str(errors[2])
    assert htc.attach(wf.stage_names[1], root=map_root).clusters == []  # never queued
    with pytest.raises(HTCMLError, match="failed"):
        wf.result()


def nap_then(x: int, seconds: float = 60.0) -> int:
    import time

    time.sleep(seconds)
    return x


@pytest.mark.pool
def test_a_cancelled_chain_removes_its_jobs(pool_env: str, map_root: Path) -> None:
    wf = htc.chain(htc.stage(nap_then, [1, 2]), htc.stage(nap_then), root=map_root,
                   pool=pool_env, name="napping")
    first = wf.stage(0)
    # queued, running or not (others' jobs may hold the slots): status() looks for it
    wait_until(lambda: first.status() and first.clusters, timeout=120, interval=0.5,
               message="DAGMan did not queue the first stage")
    wf.cancel()
    assert wf.wait(timeout=60) == "removed"
    assert first.wait(timeout=60) and first.status()["removed"] == 2
    assert wf.stage(1).clusters == []
    with pool_config(pool_env) as htcondor2:
        assert htcondor2.Schedd().query(constraint='regexp("^napping", JobBatchName)',
                                        projection=["ClusterId"]) == []


def test_stages_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="items= or grid=, not both"):
        htc.stage(_halve, [1], grid={"x": [1]})
    with pytest.raises(ValueError, match="over="):
        htc.stage(_halve, [1], over="all")
    with pytest.raises(ValueError, match="'each'"):
        htc.stage(_total, over="some")
    with pytest.raises(OptionError):
        htc.stage(_halve, [1], request_memroy="1GB")
    with pytest.raises(TypeError, match="chain takes stages"):
        create_chain((), backend=LocalBackend(), root=tmp_path, name=None)
    with pytest.raises(HTCMLError, match="HTCondor pool"):
        create_chain((htc.stage(_halve, [1]),), backend=LocalBackend(), root=tmp_path,
                     name=None)
    with pytest.raises(ValueError, match="needs items= or grid="):
        create_chain((htc.stage(_total, over="all"),), backend=LocalBackend(),
                     root=tmp_path, name=None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.pool
def test_a_chain_under_a_folder_with_spaces_and_quotes(pool_env: str, map_root: Path) -> None:
    """DAGMan splits SCRIPT lines at spaces and honours no quotes: the PRE and POST
    scripts get no path, run with -P, and a map root with spaces and a quote works."""
    root = map_root / "with space's"
    root.mkdir()
    root.chmod(0o755)
    wf = htc.chain(htc.stage(_halve, [1, 2]), htc.stage(_total, over="all"),
                   root=root, pool=pool_env)
    assert wf.wait(timeout=180) == "succeeded"
    assert wf.result() == 1.5
    assert (root / wf.name).stat().st_mode & 0o777 == 0o700
    dag = (root / wf.name / "workflow.dag").read_text()
    assert " -P -m htcml_jupyter.workflows.node post . 1" in dag and str(root) not in dag


def _read_with_key(path: Path, key: Path) -> str:
    return f"{path.name}:{path.read_text()}:{key.read_text()}"


def _lengths(texts: list[str]) -> list[int]:
    return [len(t) for t in texts]


@pytest.mark.pool
def test_a_stage_sends_its_file_items_and_file_kwargs(pool_env: str, map_root: Path,
                                                      shared_tmp: Path) -> None:
    """A stage's ``htc.File`` items and ``File`` keyword arguments travel with its jobs,
    as a map's do: each job reads them from its own folder."""
    docs = [shared_tmp / f"doc{i}.txt" for i in range(2)]
    for i, doc in enumerate(docs):
        doc.write_text(f"text {i}")
    key = shared_tmp / "key.txt"
    key.write_text("K")
    wf = htc.chain(htc.stage(_read_with_key, [htc.File(d) for d in docs],
                             kwargs={"key": htc.File(key)}),
                   htc.stage(_lengths, over="all"), root=map_root, pool=pool_env)
    assert wf.wait(timeout=180) == "succeeded", wf.finished_stages()
    first = htc.attach(wf.stage_names[0], root=map_root)
    assert first.results() == ["doc0.txt:text 0:K", "doc1.txt:text 1:K"]
    assert wf.result() == [len("doc0.txt:text 0:K"), len("doc1.txt:text 1:K")]
    # the files went by HTCondor, not inside the pickled inputs
    store = MapStore.open(map_root, wf.stage_names[0])
    assert store.task_files() == {0: [str(key), str(docs[0])], 1: [str(key), str(docs[1])]}
    assert b"text 0" not in store.input_file(0).read_bytes()


@pytest.mark.pool
def test_a_chain_whose_record_cannot_be_written_is_taken_back_out(
        pool_env: str, map_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DAGMan is queued, then recording its cluster fails (a full disk): the workflow is
    removed from the queue again and the error says so; nothing is left behind."""
    from htcml_jupyter.workflows import dag

    written: list[str] = []

    def write_once(folder: Path, name: str, data: bytes) -> None:
        written.append(name)
        if name == dag.WORKFLOW_FILE and written.count(name) == 2:
            raise OSError(28, "No space left on device")
        write_file(folder, name, data)

    write_file = dag.write_file
    monkeypatch.setattr(dag, "write_file", write_once)
    with pytest.raises(HTCMLError, match=r"was queued, but recording it .* removed again"):
        htc.chain(htc.stage(nap_then, [1]), root=map_root, pool=pool_env, name="unrecorded")
    assert written.count(dag.WORKFLOW_FILE) == 2
    assert list(map_root.iterdir()) == []

    def queued() -> list[Any]:
        with pool_config(pool_env) as htcondor2:
            return list(htcondor2.Schedd().query(
                constraint=f'Iwd == "{map_root / "unrecorded"}"', projection=["ClusterId"]))

    wait_until(lambda: queued() == [], timeout=30, interval=0.5,
               message="the workflow's DAGMan job is still queued")
    removed = _history(pool_env, f'Iwd == "{map_root / "unrecorded"}"', ["JobStatus"])
    assert [int(ad["JobStatus"]) for ad in removed] == [3]  # removed, never left to run


def test_a_stage_folder_records_its_files_as_a_map_does(tmp_path: Path) -> None:
    """Without a pool: a stage's folder lists each job's File items and the File keyword
    arguments every job gets; a later stage's inputs are rewritten from the results of
    the one before without recording its jobs twice."""
    from htcml_jupyter.workflows.stages import stage_inputs, write_stage_folder

    docs = [tmp_path / f"doc{i}.txt" for i in range(2)]
    for doc in docs:
        doc.write_text("x")
    key = tmp_path / "key.txt"
    key.write_text("K")
    first = write_stage_folder(
        htc.stage(_read_with_key, [htc.File(d) for d in docs], kwargs={"key": htc.File(key)}),
        root=tmp_path, name="w.0-read", n_items=2, backend=LocalBackend(), workflow={})
    assert first.task_files() == {0: [str(key), str(docs[0])], 1: [str(key), str(docs[1])]}
    assert [t for t, _ in first.tasks()] == [0, 1]
    later = write_stage_folder(htc.stage(_read_with_key, kwargs={"key": htc.File(key)}),
                               root=tmp_path, name="w.1-read", n_items=3,
                               backend=LocalBackend(), workflow={})
    assert later.task_files() == {t: [str(key)] for t in range(3)}
    stage_inputs("each", ["a", "b", "c"], later)
    assert [(t, list(items)) for t, items in later.tasks()] == [(0, [0]), (1, [1]), (2, [2])]
    assert later.input_file(2).exists()
    with pytest.raises(InputFileError, match="does not exist"):
        write_stage_folder(htc.stage(_read_with_key, [htc.File(tmp_path / "gone.txt")],
                                     kwargs={"key": htc.File(key)}),
                           root=tmp_path, name="w.2-read", n_items=1,
                           backend=LocalBackend(), workflow={})
    assert not (tmp_path / "w.2-read").exists()  # a missing file leaves nothing behind
