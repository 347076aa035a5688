"""The handle of a multi-node torchrun: nodes, rendezvous, per-rank results, failure.

A :class:`TorchrunRun` wraps the :class:`~htcml_jupyter.Map` whose jobs are the run's
nodes.  States come from the map (the job event log); what the nodes said to each
other (node 0's address, each node's host, slot, GPUs and global ranks) is read from
the files they wrote through chirp into the run's folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..backends.condor import CondorBackend
from ..engine.errors import HTCMLError, MapNotFound, PoolUnavailable, RemoteError, WaitTimeout
from ..engine.mapping import Map
from ..engine.state import ItemState, TaskPhase, TaskStatus
from ..engine.store import MapStore
from ..jobside.torchrun_launch import RANK_STOPPED
from ..jobside.torchrun_relay import contact_name, node_name
from ..jobside.wire import JOB_LOST, decode_outcome
from .submit import RunShape, TorchrunBackend

if TYPE_CHECKING:
    from ..backends.protocol import Backend


@dataclass(frozen=True)
class NodeStatus:
    """One node (one job) of a run."""

    node: int
    #: ``idle``, ``running``, ``done``, ``failed``, ``held`` or ``removed``.
    state: str
    job_id: str | None
    host: str | None
    #: The slot HTCondor gave the node (``slot1_1@machine``).
    slot: str | None
    #: What the node's launcher last said: waiting for the rendezvous, running, ...
    activity: str | None
    #: ``CUDA_VISIBLE_DEVICES`` and HTCondor's ``AssignedGPUs`` as the node saw them.
    cuda_visible_devices: str | None
    assigned_gpus: str | None
    #: The global ranks of the node's processes, by local rank (empty until known).
    ranks: tuple[int, ...]
    hold_reason: str | None
    exit_code: int | None


@dataclass(frozen=True)
class RankInfo:
    """Where one global rank ran."""

    rank: int
    node: int
    local_rank: int
    #: The map item that holds this rank's result.
    item: int
    host: str | None
    cuda_visible_devices: str | None
    assigned_gpus: str | None


def run_map(store: MapStore, backend: Backend) -> Map:
    """The map of the run in ``store``, whose jobs start as its nodes: ``backend`` (the
    pool its record names) with the torchrun launcher in front, so a retry queues nodes,
    not plain map jobs."""
    part = store.read_record().torchrun
    if part is None:
        raise MapNotFound(f"{store.name!r} is a map, not a torchrun run")
    if not isinstance(backend, CondorBackend):
        raise PoolUnavailable(f"the run {store.name!r} names {backend.description}, not an "
                              f"HTCondor pool")
    shape = RunShape(part.nodes, part.procs_per_node, part.join_timeout)
    return Map(store, TorchrunBackend(backend, shape))


class TorchrunError(HTCMLError):
    """A run failed: ``cause`` is the first failing rank's error (remote traceback
    included), ``rank`` that rank (None when no rank ran), ``errors`` every rank's."""

    def __init__(self, name: str, cause: HTCMLError, rank: int | None,
                 errors: dict[int, HTCMLError]):
        self.name, self.cause, self.rank, self.errors = name, cause, rank, errors
        where = f"rank {rank}" if rank is not None else "a node"
        if isinstance(cause, RemoteError):
            what = f"{where} raised {cause.short_type}: {cause.message}"
        else:
            what = f"{where}: {cause}"
        super().__init__(f"torchrun {name!r} failed: {what}")

    def _render_traceback_(self) -> list[str]:
        head = [f"TorchrunError: {self.args[0]} ({len(self.errors)} rank(s) without a "
                f"result)"]
        render = getattr(self.cause, "_render_traceback_", None)
        return head + (render() if callable(render) else [str(self.cause)])


def _node_state(status: TaskStatus) -> str:
    if status.phase is TaskPhase.FINISHED:
        return "done" if status.exit_code == 0 else "failed"
    return status.phase.value


class TorchrunRun:
    """A multi-node torchrun submitted with :func:`htcml_jupyter.torchrun`.

    If any node fails or is held, :meth:`wait` (and the panel) removes every other
    node, so no slot is left waiting on a process group that cannot complete.
    """

    def __init__(self, m: Map):
        part = m.store.read_record().torchrun
        if part is None:
            raise MapNotFound(f"{m.name!r} is a map, not a torchrun run; use "
                              f"htc.attach({m.name!r})")
        self.map = m
        self.shape = RunShape(part.nodes, part.procs_per_node, part.join_timeout)
        self._stopped: str | None = None

    def __getattr__(self, name: str) -> Any:
        """What the run has as a map (per item, one item per process): ``retry()``,
        ``usage()``, ``clusters``, ``item_states()``, ``options``..."""
        if name == "map":  # not set yet (a copy being built): never look it up in itself
            raise AttributeError(name)
        return getattr(self.map, name)

    def __enter__(self) -> TorchrunRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ basics
    @property
    def name(self) -> str:
        """The run's name (its map's name; ``attach_run(name)`` finds it again)."""
        return self.map.name

    @property
    def cluster(self) -> int | None:
        """The HTCondor cluster of the run's nodes."""
        clusters = self.map.clusters
        return clusters[-1] if clusters else None

    def __repr__(self) -> str:
        states = ", ".join(f"{k}={v}" for k, v in self.status().items() if v)
        return (f"<TorchrunRun {self.name!r}: {self.shape.nodes} nodes x "
                f"{self.shape.procs_per_node} procs; {states}>")

    def _relay(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = json.loads((self.map.store.path / name).read_text())
            return found
        except (OSError, ValueError):
            return None

    @property
    def rendezvous(self) -> str | None:
        """``host:port`` of node 0's rendezvous, once it published it (the latest one
        after a restart)."""
        cluster = self.cluster
        found = self._relay(contact_name(cluster)) if cluster is not None else None
        return f"{found['host']}:{found['port']}" if found else None

    # ------------------------------------------------------------------ nodes
    def nodes(self) -> list[NodeStatus]:
        """Every node's job state, host, slot, GPUs and ranks."""
        cluster = self.cluster
        out = []
        for status in sorted(self.map.tasks(), key=lambda t: t.task):
            info = (self._relay(node_name(cluster, status.task)) if cluster is not None
                    else None) or {}
            ranks = info.get("ranks") or {}
            out.append(NodeStatus(
                node=status.task, state=_node_state(status), job_id=status.job_id,
                host=info.get("host") or status.host, slot=info.get("slot"),
                activity=info.get("state"),
                cuda_visible_devices=info.get("cuda_visible_devices"),
                assigned_gpus=info.get("assigned_gpus"),
                ranks=tuple(int(ranks[str(i)]) for i in status.items if str(i) in ranks),
                hold_reason=status.hold_reason, exit_code=status.exit_code))
        return out

    def status(self) -> dict[str, int]:
        """Counts of nodes per state."""
        counts = dict.fromkeys(("idle", "running", "done", "failed", "held", "removed"), 0)
        for node in self.nodes():
            counts[node.state] += 1
        return counts

    def _records(self, task: int) -> list[dict[str, Any]]:
        try:
            return decode_outcome(self.map.store.output_file(task).read_bytes())[1]
        except (OSError, ValueError, TypeError, KeyError):
            return []

    def ranks(self) -> list[RankInfo]:
        """Where each global rank ran, in rank order (ranks not yet known come last, by
        item)."""
        nodes = {n.node: n for n in self.nodes()}
        out = []
        procs = self.shape.procs_per_node
        for node in nodes.values():
            known = dict(zip(range(node.node * procs, (node.node + 1) * procs), node.ranks,
                             strict=False))
            for record in self._records(node.node):
                if record.get("rank") is not None:
                    known.setdefault(int(record["index"]), int(record["rank"]))
            for local in range(procs):
                item = node.node * procs + local
                out.append(RankInfo(rank=known.get(item, -1), node=node.node,
                                    local_rank=local, item=item, host=node.host,
                                    cuda_visible_devices=node.cuda_visible_devices,
                                    assigned_gpus=node.assigned_gpus))
        return sorted(out, key=lambda r: (r.rank < 0, r.rank, r.item))

    # ------------------------------------------------------------------ waiting
    def _stop_others(self) -> None:
        """When a node failed, was held or was removed, remove the rest of the run."""
        if self._stopped is not None:
            return
        nodes = self.nodes()
        bad = [n for n in nodes if n.state in ("failed", "held", "removed")]
        if not bad:
            return
        first = bad[0]
        why = {"failed": f"exited with {first.exit_code}", "held": f"was held "
               f"({first.hold_reason})", "removed": "was removed"}[first.state]
        self._stopped = f"node {first.node} {why}; the run was stopped"
        live = [n.job_id for n in nodes if n.state in ("idle", "running") and n.job_id]
        if live:
            self.map.backend.remove_jobs(self.map.store, live, self._stopped)

    @property
    def done(self) -> bool:
        """True when every node has ended (done, failed, held or removed)."""
        self._stop_others()
        return self.map.done

    def wait(self, timeout: float | None = None, poll: float = 0.2) -> bool:
        """Block until every node has ended; True unless ``timeout`` ran out.  A node
        that fails or is held ends the whole run (the other nodes are removed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll)
        return True

    # ------------------------------------------------------------------ results
    def _first_failure(self) -> tuple[int | None, HTCMLError] | None:
        """The rank whose failure came first: a Python error before a lost or stopped
        rank, the earliest by its end time; else a held node."""
        states = self.map.item_states()
        ranks = {r.item: r.rank for r in self.ranks()}
        candidates: list[tuple[int, float, int]] = []
        for node in range(self.shape.nodes):
            for record in self._records(node):
                item = int(record["index"])
                if record.get("ok") or states[item] is not ItemState.FAILED:
                    continue
                kind = str(record.get("error", {}).get("type", ""))
                rank_order = 1 if kind in (JOB_LOST, RANK_STOPPED) else 0
                ended = float(record.get("started") or 0) + float(record.get("seconds") or 0)
                candidates.append((rank_order, ended or float("inf"), item))
        if candidates:
            item = min(candidates)[2]
        else:
            settled = [i for i, s in enumerate(states) if s in (ItemState.HELD,
                                                               ItemState.FAILED,
                                                               ItemState.REMOVED)]
            held = [i for i in settled if states[i] is ItemState.HELD]
            if not settled:
                return None
            item = (held or settled)[0]
        error = self.map.error(item)
        if error is None:
            return None
        rank = ranks.get(item)
        return (rank if rank is not None and rank >= 0 else None), error

    def error(self) -> TorchrunError | None:
        """Why the run failed (the first rank's error first), or None."""
        if not self.map.done:
            return None
        first = self._first_failure()
        if first is None:
            return None
        errors: dict[int, HTCMLError] = {}
        for info in self.ranks():
            err = self.map.error(info.item)
            if err is not None:
                errors[info.rank if info.rank >= 0 else info.item] = err
        return TorchrunError(self.name, first[1], first[0], errors)

    def results(self, timeout: float | None = None) -> list[Any]:
        """What the function returned on each process, in global rank order (element
        ``r`` is rank ``r``'s return value).  Waits first; raises :class:`TorchrunError`
        with the first failing rank's remote traceback when the run failed."""
        if not self.wait(timeout):
            raise WaitTimeout(f"torchrun {self.name!r} is not finished after {timeout} s: "
                              f"{self.status()}")
        failure = self.error()
        if failure is not None:
            raise failure
        values = self.map.results()
        return [values[info.item] for info in self.ranks()]

    def reports(self, rank: int = 0) -> list[dict[str, Any]]:
        """What ``rank`` sent with ``htc.report()``, oldest first."""
        for info in self.ranks():
            if info.rank == rank:
                return self.map.reports(info.item)
        return []

    def checkpoints(self) -> dict[int, dict[str, Any]]:
        """Per global rank: last saved step, steps restored, evictions (see
        :meth:`Map.checkpoints`)."""
        by_item = self.map.checkpoints()
        return {info.rank: by_item[info.item] for info in self.ranks()
                if info.item in by_item}

    def queued_jobs(self) -> list[str]:
        """Ids of the run's jobs still in the schedd's queue (asks the schedd)."""
        cluster, backend = self.cluster, self.map.backend
        if cluster is None or not isinstance(backend, CondorBackend):
            return []
        return backend.queued_jobs(self.map.store, cluster)

    # ------------------------------------------------------------------ actions
    def cancel(self) -> None:
        """Remove every node of the run."""
        self.map.cancel()

    def panel(self) -> Any:
        """Show a live panel: nodes, rendezvous, rank 0's reports; returns it."""
        from ..views.torchrun_panel import TorchrunPanel

        return TorchrunPanel(self).show()

    def close(self) -> None:
        """Stop reading the event log (the jobs and the folder are untouched)."""
        self.map.close()

