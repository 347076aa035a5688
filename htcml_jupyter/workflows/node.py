"""What DAGMan runs around each stage's jobs: ``python -m htcml_jupyter.workflows.node
pre|post <workflow folder> <stage>``.

``pre`` (before a later stage is queued) reads the results of the stage before and
writes them as this stage's inputs, still pickled (the jobs of this stage unpickle them:
nothing a job wrote is unpickled on the submit host); ``post`` (after its jobs left the
queue) records whether every item succeeded, and exits 1 when not, which stops the
workflow there.  Both first record the stage's cluster in its map folder, read from the
job event log, so ``htc.attach`` follows the stage's jobs like any map's.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..engine.errors import HTCMLError
from ..engine.mapping import Map
from ..engine.state import ItemState
from ..engine.store import MapStore
from ..jobside.calls import Pickled
from .stages import stage_inputs
from .watch import pool_backend

#: The workflow's record of each finished stage (one JSON line each).
STAGES_FILE = "stages.jsonl"
#: The workflow's description, written when it is submitted.
WORKFLOW_FILE = "workflow.json"


def read_workflow(folder: Path) -> dict[str, Any]:
    """The description of the workflow in ``folder``."""
    record: dict[str, Any] = json.loads((folder / WORKFLOW_FILE).read_text())
    return record


def confirm_submissions(store: MapStore) -> list[int]:
    """Record the clusters DAGMan queued for this stage (found in its event log) that its
    map folder does not list yet; returns them.  One job per item, in item order."""
    import htcondor2

    if not store.event_log.exists():
        return []
    clusters: list[int] = []
    log = htcondor2.JobEventLog(str(store.event_log))
    try:
        for event in log.events(stop_after=0):
            if event.type.name == "SUBMIT" and event.cluster not in clusters:
                clusters.append(int(event.cluster))
    finally:
        log.close()
    n_items = store.read_record().n_items
    added = []
    with open(store.path / "submissions.jsonl", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two confirmations never add one cluster twice
        known = {int(s["cluster"]) for s in store.submissions()}
        for cluster in clusters:
            if cluster not in known:
                store.add_submission(cluster, list(range(n_items)))
                added.append(cluster)
    return added


class StageMap(Map):
    """A stage's map: until its cluster is known, each refresh (at most once a second)
    looks for it in the event log, so a handle made before DAGMan queued the stage
    follows its jobs."""

    _looked = 0.0
    _found = False

    def refresh(self) -> bool:
        if not self._found and time.monotonic() - self._looked >= 1.0:
            self._looked = time.monotonic()
            confirm_submissions(self.store)
            self._found = bool(self.store.submissions())
        return super().refresh()


def stage_map(folder: Path, index: int) -> StageMap:
    """The map of stage ``index`` of the workflow in ``folder``."""
    name = read_workflow(folder)["stages"][index]["map"]
    store = MapStore(folder.parent / name)
    return StageMap(store, pool_backend(store.read_record().backend))


def pre(folder: Path, index: int) -> int:
    """Write stage ``index``'s inputs from the results of the stage before it."""
    stages = read_workflow(folder)["stages"]
    before = stage_map(folder, index - 1)
    if not before.wait(timeout=120):
        print(f"stage {index - 1} is not finished after 120 s", file=sys.stderr)
        return 1
    failed = [i for i, s in enumerate(before.item_states()) if s is not ItemState.DONE]
    if failed:
        print(f"stage {index - 1} has items without a result: {failed}", file=sys.stderr)
        return 1
    try:
        results = [Pickled(before.result_bytes(i)) for i in range(before.n_items)]
    except HTCMLError as exc:
        print(f"stage {index - 1}: {exc}", file=sys.stderr)
        return 1
    store = MapStore(folder.parent / stages[index]["map"])
    stage_inputs(stages[index]["over"], results, store)
    return 0


def post(folder: Path, index: int) -> int:
    """Record how stage ``index`` ended; 0 when every item has a result."""
    m = stage_map(folder, index)
    m.wait(timeout=120)
    states = m.item_states()
    failed = [i for i, s in enumerate(states) if s is not ItemState.DONE]
    row = {"stage": index, "map": m.name, "ok": not failed, "failed": failed,
           "states": m.status(), "time": time.time()}
    with (folder / STAGES_FILE).open("a") as f:
        f.write(json.dumps(row) + "\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m htcml_jupyter.workflows.node",
                                     description="Run before or after a workflow stage.")
    parser.add_argument("when", choices=("pre", "post"))
    parser.add_argument("folder", type=Path, help="the workflow's folder")
    parser.add_argument("stage", type=int, help="the stage's index (0 is the first)")
    args = parser.parse_args(argv)
    step = pre if args.when == "pre" else post
    return step(args.folder.resolve(), args.stage)


if __name__ == "__main__":
    sys.exit(main())
