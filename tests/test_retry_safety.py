"""Retries on the real pool: one at a time, and always with the map's own environment.

Two retries at once (the sidebar clicked twice, the sidebar and the notebook) must give
one set of new jobs; a retry from a process other than the map's creator (the Jupyter
server behind the sidebar) must run the interpreter and cloudpickle the map recorded,
never its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.engine.errors import HTCMLError
from htcml_jupyter.engine.submission import SUBMIT_LOCK
from tests import helpers

pytestmark = pytest.mark.pool

ROOT = Path(__file__).resolve().parent.parent


def _failed_map(map_root: Path, flag: Path, n: int = 4, items: list[Any] | None = None
                ) -> Any:
    """A map whose every item failed (its flag file was missing); the flag is then made,
    so a retry succeeds."""
    m = htc.map(helpers.fail_until_flag, items or range(n), kwargs={"flag": str(flag)},
                root=map_root, chunksize=1)
    assert m.wait(timeout=120)
    assert m.status()["failed"] == n
    flag.write_text("go")
    return m


def _in_child(code: str, **names: Any) -> subprocess.Popen[str]:
    """Run ``code`` in a fresh interpreter with ``names`` bound (as JSON)."""
    prelude = "".join(f"{k} = {json.dumps(v)!s}\n" for k, v in names.items())
    return subprocess.Popen([sys.executable, "-c", prelude + code], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _job_commands(pool: str, cluster: int) -> list[str]:
    with pool_config(pool) as htcondor2:
        schedd = htcondor2.Schedd()
        ads = schedd.query(constraint=f"ClusterId == {cluster}", projection=["Cmd"])
        if not ads:
            ads = list(schedd.history(constraint=f"ClusterId == {cluster}",
                                      projection=["Cmd"], match=10))
    return [str(ad["Cmd"]) for ad in ads]


def test_two_threads_retrying_at_once_queue_one_set_of_jobs(
        pool_env: str, map_root: Path, shared_tmp: Path) -> None:
    m = _failed_map(map_root, shared_tmp / "flag")
    start = threading.Barrier(2)
    answers: list[list[int]] = []

    def retry() -> None:
        start.wait()
        answers.append(m.retry())

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(answers) == [[], [0, 1, 2, 3]]
    assert len(m.clusters) == 2
    assert len(list(m.store.tasks())) == 8  # four jobs, then four retried: once
    assert m.results(timeout=120) == [0, 1, 2, 3]
    assert (m.store.path / SUBMIT_LOCK).stat().st_mode & 0o777 == 0o600


def test_two_processes_retrying_at_once_queue_one_set_of_jobs(
        pool_env: str, map_root: Path, shared_tmp: Path) -> None:
    # Big inputs: each retry reads and writes 32 MB between deciding what to run and
    # recording its jobs, so two unguarded retries would surely both decide to run all.
    big = [bytes([i]) * (8 << 20) for i in range(4)]
    m = _failed_map(map_root, shared_tmp / "flag", items=big)
    go = shared_tmp / "go"
    code = ("import os, time, json\n"
            "import htcml_jupyter as htc\n"
            "m = htc.attach(name, root=root, watch=False)\n"
            "m.status()\n"
            "open(ready, 'w').close()\n"
            "while not os.path.exists(go):\n"
            "    time.sleep(0.002)\n"
            "print(json.dumps(m.retry()))\n")
    children = [_in_child(code, name=m.name, root=str(map_root), go=str(go),
                          ready=str(shared_tmp / f"ready-{i}")) for i in range(2)]
    helpers.wait_until(lambda: all((shared_tmp / f"ready-{i}").exists() for i in range(2)),
                       timeout=60, message="both processes should attach the map")
    go.touch()
    answers = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        answers.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(answers) == [[], [0, 1, 2, 3]]
    again = htc.attach(m.name, root=map_root)
    assert len(again.clusters) == 2
    assert len(list(again.store.tasks())) == 8
    assert again.results(timeout=120) == big


def test_a_retry_from_another_process_runs_the_maps_interpreter(
        pool_env: str, map_root: Path, shared_tmp: Path) -> None:
    m = _failed_map(map_root, shared_tmp / "flag", n=2)
    first = _job_commands(pool_env, m.clusters[0])
    assert first and set(first) == {sys.executable}
    assert m.environment["interpreter"] == sys.executable
    # Another process whose own interpreter is elsewhere (as a Jupyter server's may be).
    code = ("import sys, json\n"
            "sys.executable = '/nonexistent/server-python'\n"
            "import htcml_jupyter as htc\n"
            "print(json.dumps(htc.attach(name, root=root).retry()))\n")
    child = _in_child(code, name=m.name, root=str(map_root))
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == [0, 1]
    again = htc.attach(m.name, root=map_root)
    assert len(again.clusters) == 2
    assert set(_job_commands(pool_env, again.clusters[1])) == {sys.executable}
    assert again.results(timeout=120) == [0, 1]


def test_a_retry_whose_packed_environment_is_gone_says_so_and_packs_nothing(
        pool_env: str, map_root: Path, shared_tmp: Path) -> None:
    m = _failed_map(map_root, shared_tmp / "flag", n=2)
    gone = shared_tmp / "env-gone.tar.gz"
    meta = m.store.read_meta()
    meta["environment"] = {**meta["environment"], "kind": "pack", "archive": str(gone),
                           "route": "transfer"}
    m.store.write_meta(meta)
    started = time.monotonic()
    with pytest.raises(HTCMLError, match=r"packed environment .*env-gone\.tar\.gz is gone"):
        htc.attach(m.name, root=map_root).retry()
    assert time.monotonic() - started < 30  # nothing was packed
    again = htc.attach(m.name, root=map_root)
    assert len(again.clusters) == 1  # nothing was queued
    assert again.status()["failed"] == 2 or again.status()["removed"] == 2
    assert not os.path.exists(gone)
