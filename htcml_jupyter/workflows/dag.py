"""Chained stages as one DAGMan workflow: ``htc.chain(stage, stage, ...)``.

Each stage is one DAG node whose job is the stage's map: the same runner jobs, submit
description (:func:`~htcml_jupyter.backends.submit_description.submit_description`),
event log and outcome files as :func:`htcml_jupyter.map`, one job per item.  DAGMan
queues a stage when the one before has succeeded, runs :mod:`.node` around each stage,
and keeps going after the notebook is gone.  The workflow's folder holds the DAG files,
its ``dagman.config`` (per-workflow DAGMan settings) and ``workflow.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends.condor import CondorBackend
from ..engine.errors import HTCMLError, WaitTimeout
from ..engine.folder_files import write_atomic as write_file
from ..engine.mapping import Map
from ..engine.store import MapStore, check_map_name, new_map_name
from ..engine.submission import submits_for_job_user
from ..engine.usage import MapUsage
from .node import STAGES_FILE, WORKFLOW_FILE, read_workflow, stage_map
from .stages import Stage, stage_map_name, write_stage_folder
from .watch import pool_backend

if TYPE_CHECKING:
    from ..backends.protocol import Backend

#: DAGMan settings of every workflow, written to its own ``dagman.config``: node logs
#: under /tmp are allowed (map folders often are there), and node job events are read
#: every second (the default, 5 s, adds seconds to every stage).
DAGMAN_CONFIG = {"DAGMAN_AVOID_SLASH_TMP": "False", "DAGMAN_USER_LOG_SCAN_INTERVAL": "1"}
DAG_FILE = "workflow.dag"


def _node_script(when: str, index: int) -> Any:
    """DAGMan's PRE or POST script of stage ``index``.

    DAGMan splits a SCRIPT line at every space and honours no quotes, so no path goes
    on it: the script runs in the workflow's folder (DAGMan's own) and is given ``.``.
    The interpreter runs with ``-P`` (``-I`` before Python 3.11): a file planted in that
    folder, which the job user can write, cannot shadow the standard library."""
    from htcondor2 import dags

    if any(c.isspace() or c in "\"'" for c in sys.executable):
        raise HTCMLError(f"DAGMan cannot run the interpreter {sys.executable!r}: its path "
                         f"holds a space or a quote, which a DAG's SCRIPT line cannot "
                         f"carry; run the workflow from an environment at a plain path")
    flag = "-P" if sys.version_info >= (3, 11) else "-I"
    return dags.Script(executable=sys.executable,
                       arguments=[flag, "-m", "htcml_jupyter.workflows.node", when, ".",
                                  str(index)])


def _stage_submit(store: MapStore, backend: CondorBackend, folder: Path, index: int) -> Any:
    """Stage ``index``'s node job: the map's job description (the backend's launch), one
    job per item, each with its ``File`` inputs (``$(files)``) from an itemdata file in
    the workflow's folder (DAGMan submits from there)."""
    import htcondor2

    record = store.read_record()
    commands = backend.job_description(store, record.options, store.name,
                                       jobs=record.n_items)
    files = store.task_files()
    rows = [f"{task} {''.join(f', {f}' for f in files.get(task, ()))}".rstrip() + "\n"
            for task, _ in store.tasks()]
    items = f"stage{index}.tasks"
    write_file(folder, items, "".join(rows).encode())
    submit = htcondor2.Submit(commands)
    submit.setQArgs(f"task,files from {items}")
    return submit


def write_dag(folder: Path, stores: list[MapStore], backend: CondorBackend) -> Path:
    """Write the DAG of the workflow in ``folder``: one node per stage, in a chain, with
    :mod:`.node` before (later stages) and after each; returns the DAG file."""
    from htcondor2 import dags

    dag = dags.DAG(dagman_config=DAGMAN_CONFIG)
    layer = None
    for index, store in enumerate(stores):
        spec: dict[str, Any] = {
            "name": f"stage{index}",
            "submit_description": _stage_submit(store, backend, folder, index),
            "post": _node_script("post", index)}
        if index:
            spec["pre"] = _node_script("pre", index)
        layer = dag.layer(**spec) if layer is None else layer.child_layer(**spec)
    return Path(dags.write_dag(dag, folder, dag_file_name=DAG_FILE))


class Workflow:
    """A chain of stages run by DAGMan; rebuild it anywhere with
    :func:`attach_workflow`.  Each stage is a map (:meth:`stage`, ``htc.attach``)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.record = read_workflow(folder)

    @property
    def name(self) -> str:
        """The workflow's name (its folder's name)."""
        return self.folder.name

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}: {len(self)} stages; {self.state}>"

    def __len__(self) -> int:
        return len(self.record["stages"])

    @property
    def stage_names(self) -> list[str]:
        """The map name of each stage, first to last (``htc.attach(name)`` opens one)."""
        return [s["map"] for s in self.record["stages"]]

    def stage(self, index: int) -> Map:
        """The map of stage ``index`` (negative counts from the end)."""
        return stage_map(self.folder, range(len(self))[index])

    def usage(self, live: bool = True) -> MapUsage:
        """What the jobs of every stage used, summed (:meth:`Map.usage` of each stage;
        ``usage().summary()`` in one line)."""
        parts = []
        for index in range(len(self)):
            m = self.stage(index)
            try:
                parts.append(m.usage(live=live))
            finally:
                m.close()
        return MapUsage.combine(parts)

    def finished_stages(self) -> list[dict[str, Any]]:
        """How each finished stage ended: ``stage``, ``map``, ``ok``, ``failed`` items."""
        path = self.folder / STAGES_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _dagman_end(self) -> tuple[str, int | None] | None:
        import htcondor2

        log_file = self.folder / f"{DAG_FILE}.dagman.log"
        if not log_file.exists():
            return None
        log = htcondor2.JobEventLog(str(log_file))
        try:
            for event in log.events(stop_after=0):
                if event.type.name == "JOB_TERMINATED":
                    return "done", int(event.get("ReturnValue", -1))
                if event.type.name == "JOB_ABORTED":
                    return "removed", None
        finally:
            log.close()
        return None

    @property
    def state(self) -> str:
        """``running``, ``succeeded``, ``failed`` (a stage had items without a result, or
        DAGMan failed) or ``removed``."""
        end = self._dagman_end()
        if end is None:
            return "running"
        kind, code = end
        return "removed" if kind == "removed" else ("succeeded" if code == 0 else "failed")

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> str:
        """Block until DAGMan has finished; returns :attr:`state`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state == "running":
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"workflow {self.name!r} is still running after "
                                  f"{timeout} s: {self.finished_stages()}")
            time.sleep(poll)
        return self.state

    def result(self, timeout: float | None = None) -> Any:
        """The last stage's result (its list of results when it has several items)."""
        state = self.wait(timeout)
        if state != "succeeded":
            raise HTCMLError(f"workflow {self.name!r} {state}: {self.finished_stages()} "
                             f"(DAGMan's account: {self.folder / (DAG_FILE + '.dagman.out')})")
        values = self.stage(-1).results()
        return values[0] if len(values) == 1 else values

    def cancel(self) -> None:
        """Remove DAGMan and with it every queued job of the workflow."""
        pool_backend(self.record["pool"]).remove_dag(int(self.record["dagman"]),
                                                     "cancelled by htcml_jupyter")


def create_chain(stages: tuple[Stage, ...], *, backend: Backend, root: Path,
                 name: str | None) -> Workflow:
    """Write every stage's map folder and the DAG, queue DAGMan; returns the handle."""
    if not stages or not all(isinstance(s, Stage) for s in stages):
        raise TypeError("chain takes stages: htc.chain(htc.stage(train, grid={...}), "
                        "htc.stage(evaluate), htc.stage(keep_best, over='all'))")
    counts: list[int] = []
    for step in stages:
        counts.append(step.count(counts[-1] if counts else None))
    if not isinstance(backend, CondorBackend):
        raise HTCMLError("a workflow runs on an HTCondor pool (DAGMan); pass pool=... or "
                         "start the project's pool with `htcml pool up`")
    name = check_map_name(name or new_map_name(stages[-1].name.lstrip("_") or "chain"))
    folder = root / name
    if folder.exists():
        raise ValueError(f"{folder} already exists; choose another name for the workflow")
    names = [stage_map_name(name, i, s) for i, s in enumerate(stages)]
    for map_name in names:
        backend.check_visible(root / map_name)
        if (root / map_name).exists():
            raise ValueError(f"a map named {map_name!r} already exists in {root}")
    root.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=0o700)  # the job user's alone once given to it (DAGMan writes here)
    made: list[MapStore] = []
    try:
        record = {"name": name, "created": time.time(), "pool": backend.describe(),
                  "stages": [{"map": n, "function": s.name, "over": s.over, "n_items": c}
                             for n, s, c in zip(names, stages, counts, strict=True)]}
        for map_name, step, count in zip(names, stages, counts, strict=True):
            made.append(write_stage_folder(step, root=root, name=map_name, n_items=count,
                                           backend=backend,
                                           workflow={"name": name, "folder": str(folder)}))
        dag_file = write_dag(folder, made, backend)
        write_file(folder, WORKFLOW_FILE, json.dumps(record, indent=1).encode())
        uid = submits_for_job_user(backend)
        if uid is not None:  # DAGMan runs as the pool's job user and writes here
            for store in [*made, MapStore(folder)]:
                store.chown(uid)
        record["dagman"] = cluster = backend.submit_dag(dag_file)
        try:
            # the folder is the job user's now: a link planted there is replaced, not
            # followed
            write_file(folder, WORKFLOW_FILE, json.dumps(record, indent=1).encode())
        except BaseException as exc:
            # a workflow nobody can follow or cancel would run unseen: take it back out
            backend.remove_dag(cluster, "its workflow could not record the submission")
            raise HTCMLError(f"DAGMan ({cluster}) was queued, but recording it in {folder} "
                             f"failed ({type(exc).__name__}: {exc}); it was removed again. "
                             f"Free space in the map root and run the chain again") from exc
    except BaseException:  # nothing is left queued: leave nothing behind
        for store in made:
            shutil.rmtree(store.path, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Workflow(folder)


def chain(*stages: Stage, name: str | None = None, pool: str | None = None,
          root: str | Path | None = None) -> Workflow:
    """Run ``stages`` one after the other as an HTCondor DAG; returns at once.

    >>> wf = htc.chain(htc.stage(train, grid={"lr": [0.1, 0.01]}),
    ...                htc.stage(evaluate),                 # once per trained model
    ...                htc.stage(keep_best, over="all"))    # once, on every score
    >>> wf.result()                                         # keep_best's return value

    DAGMan runs the workflow: it goes on when this process ends, and
    :func:`attach_workflow` finds it again.  A stage starts when every item of the one
    before has a result; one that failed stops the workflow there.  ``pool`` and
    ``root`` are as for :func:`htcml_jupyter.map`; ``name`` names the workflow, and its
    stages' maps are ``<name>.<index>-<function>``.
    """
    from ..backends.pools import resolve_backend
    from ..paths import default_map_root

    backend = resolve_backend(pool, "condor")
    return create_chain(stages, backend=backend, name=name,
                        root=Path(root) if root is not None else default_map_root())


def attach_workflow(name: str, root: str | Path | None = None) -> Workflow:
    """The workflow called ``name``, rebuilt from its folder (in any process)."""
    from ..paths import default_map_root

    folder = (Path(root) if root is not None else default_map_root()) / check_map_name(name)
    if not (folder / WORKFLOW_FILE).exists():
        raise HTCMLError(f"no workflow named {name!r} in {folder.parent}")
    return Workflow(folder)
