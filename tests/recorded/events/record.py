"""Record the job event logs in this folder from small maps on the project's pool.

Run from the repository root, with the project's pool up (``htcml pool status``)::

    .venv/bin/python tests/recorded/events/record.py tests/recorded/events

Each map's ``logs/events.log``, ``tasks.jsonl`` and ``submissions.jsonl`` are copied into
``<out>/<scenario>/``; the job ids and times differ from run to run, so the tests read
what they compare (cluster ids) from the recorded ``submissions.jsonl``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.engine.mapping import Map

POOL = "/var/lib/htcml/pool/condor_config"


def reported(x: int) -> int:
    """Reports two steps, then returns x squared; item 2 raises (the job exits 3)."""
    import htcml_jupyter as htc

    htc.report(step=0, loss=1.5)
    htc.report(step=1, loss=0.25)
    if x == 2:
        raise ValueError(f"item {x} fails on purpose")
    return x * x


def sleeper(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def checkpointed(steps: int) -> int:
    """Saves a checkpoint after each step, spooling (exit 85) every time."""
    import htcml_jupyter as htc

    ckpt = htc.checkpoint(every=0)
    state = ckpt.restore()
    start = 0 if state is None else state + 1
    for step in range(start, steps):
        ckpt.save(step, step=step)
    return steps


def _until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.3)


def _running(m: Map, item: int) -> bool:
    return m.item_states()[item] is htc.ItemState.RUNNING


def _act(action: str, job_ids: list[str], reason: str) -> None:
    with pool_config(POOL) as htcondor2:
        htcondor2.Schedd().act(getattr(htcondor2.JobAction, action), job_ids, reason)


def basic(root: Path) -> Map:
    """submit, execute, attribute updates (reports), terminate with exit 0 and exit 3."""
    m = htc.map(reported, range(3), chunksize=1, root=root, name="basic")
    m.wait(timeout=120)
    return m


def hold_release(root: Path) -> Map:
    """Item 0: held while running, released, runs to the end.  Item 1: held while
    running, then retried (the held job is removed, a second cluster runs it).  Holds
    made through the bindings leave no reason in the log, only the code (1)."""
    m = htc.map(sleeper, [4, 30], chunksize=1, root=root, name="hold_release")
    _until(lambda: _running(m, 0) and _running(m, 1), "both jobs to run")
    _act("Hold", [m.job_of(0).job_id or "", m.job_of(1).job_id or ""], "recorded hold")
    _until(lambda: m.item_states()[:2] == [htc.ItemState.HELD] * 2, "both holds")
    m.release()  # both released ...
    _until(lambda: _running(m, 1), "item 1 to run again")
    _act("Hold", [m.job_of(1).job_id or ""], "held again")  # ... item 1 held again
    _until(lambda: m.item_states()[1] is htc.ItemState.HELD, "the second hold")
    m.retry([1])
    m.wait(timeout=180)
    return m


def read_data(x: int) -> str:
    with open("data.txt") as f:
        return f"{x}:{f.read().strip()}"


def hold_input(root: Path) -> Map:
    """Held by HTCondor itself: the input file is gone before the job starts (hold
    reason and code from the shadow); put back and released, the job runs to the end."""
    data = root / "data.txt"
    data.write_text("payload")
    data.chmod(0o644)
    m = htc.map(read_data, [0], chunksize=1, root=root, name="hold_input",
                input_files=[str(data)])
    data.unlink()
    _until(lambda: m.item_states()[0] is htc.ItemState.HELD, "the hold")
    data.write_text("payload")
    data.chmod(0o644)
    m.release()
    m.wait(timeout=120)
    return m


def evict(root: Path) -> Map:
    """A running job vacated (evicted), run again to the end."""
    m = htc.map(sleeper, [6], chunksize=1, root=root, name="evict")
    _until(lambda: _running(m, 0), "the job to run")
    time.sleep(1)
    m.vacate()
    m.wait(timeout=120)
    return m


def abort(root: Path) -> Map:
    """A job removed while running (condor_rm)."""
    m = htc.map(sleeper, [60], chunksize=1, root=root, name="abort")
    _until(lambda: _running(m, 0), "the job to run")
    _act("Remove", [m.job_of(0).job_id or ""], "recorded removal")
    m.wait(timeout=60)
    return m


def abort_idle(root: Path) -> Map:
    """Removed while idle: it asks for more memory than any slot has."""
    m = htc.map(sleeper, [1], chunksize=1, root=root, name="abort_idle",
                request_memory="900GB")
    time.sleep(3)
    m.cancel()
    m.wait(timeout=60)
    return m


def cluster_remove(root: Path) -> Map:
    """Late materialization (max_idle=1): two of three jobs never exist before the
    cluster is removed; the log ends with CLUSTER_REMOVE."""
    m = htc.map(sleeper, [60, 60, 60], chunksize=1, root=root, name="cluster_remove",
                max_idle=1, request_memory="900GB")
    time.sleep(3)
    m.cancel()
    _until(lambda: b"ClusterRemove" in m.store.event_log.read_bytes(),
           "the cluster's remove event", timeout=60)
    return m


def checkpoint(root: Path) -> Map:
    """Self-checkpointing: the job exits 85 after each of three saves."""
    m = htc.map(checkpointed, [3], chunksize=1, root=root, name="checkpoint")
    m.wait(timeout=180)
    return m


SCENARIOS: dict[str, Callable[[Path], Any]] = {
    "basic": basic, "hold_release": hold_release, "hold_input": hold_input, "evict": evict,
    "abort": abort, "abort_idle": abort_idle, "cluster_remove": cluster_remove,
    "checkpoint": checkpoint,
}


def main(out: Path, names: list[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="htcml-record-", dir="/tmp"))
    root.chmod(0o755)
    try:
        for name in names or list(SCENARIOS):
            m = SCENARIOS[name](root)
            time.sleep(2)  # the last events reach the log
            m.refresh()
            target = out / name
            target.mkdir(parents=True, exist_ok=True)
            for rel in ("logs/events.log", "tasks.jsonl", "submissions.jsonl"):
                shutil.copyfile(m.store.path / rel, target / Path(rel).name)
            print(name, m.status(), flush=True)
    finally:
        with pool_config(POOL) as htcondor2:
            htcondor2.Schedd().act(htcondor2.JobAction.Remove, f'regexp("^{root}/", Iwd)')
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    import os

    os.environ["HTCML_POOL"] = POOL
    main(Path(sys.argv[1]), sys.argv[2:])
