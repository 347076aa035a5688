"""Multi-node torchrun on the project's real pool: rendezvous, DDP, failure, eviction."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.devpool import PoolState
from htcml_jupyter.engine.errors import ItemHeld, PoolUnavailable
from htcml_jupyter.engine.options import OptionError
from htcml_jupyter.multinode import RunShape, TorchrunError, TorchrunRun, attach_run
from htcml_jupyter.multinode.submit import launcher_arguments
from htcml_jupyter.views.torchrun_panel import (
    TorchrunPanel,
    render_html,
    render_text,
    run_snapshot,
)
from tests.helpers import wait_until
from tests.test_notebooks import _execute, _outputs, notebook_dir

__all__ = ["notebook_dir"]  # the fixture, shared with the other tutorial notebooks


def ddp_train(epochs: int = 3, seed: int = 0) -> dict[str, Any]:
    """Two ranks start from different weights and see different data: DDP must make
    their parameters equal anyway; an all-reduce of ``rank + 1`` must give the sum."""
    import hashlib

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(seed + rank)
    model = DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(100 + rank)
    for epoch in range(epochs):
        x = torch.randn(16, 4, generator=data)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0:
            import htcml_jupyter as htc

            htc.report(step=epoch, loss=float(loss))
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    checksum = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
    dist.destroy_process_group()
    return {"rank": rank, "world": world, "sum": float(total.item()), "checksum": checksum}


def fail_on_rank(bad: int = 1) -> int:
    """Rank ``bad`` raises; the others keep calling all_reduce until stopped."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if dist.get_rank() == bad:
        raise ValueError(f"rank {bad} cannot go on")
    t = torch.ones(1)
    while True:
        dist.all_reduce(t)
        time.sleep(0.2)


def resumable_train(epochs: int = 12, pause: float = 0.7) -> dict[str, Any]:
    """A counter trained across ranks, saved every epoch; after a restart every rank
    resumes from rank 0's last saved state (broadcast to the others)."""
    import torch
    import torch.distributed as dist

    import htcml_jupyter as job

    dist.init_process_group("gloo")
    ckpt = job.checkpoint(every=3600)
    box = [ckpt.restore()]
    dist.broadcast_object_list(box, src=0)
    state = box[0]
    start = state["epoch"] + 1 if state else 0
    weight = state["weight"] if state else torch.zeros(1)
    for epoch in range(start, epochs):
        grad = torch.ones(1)
        dist.all_reduce(grad)
        weight += grad
        ckpt.save({"epoch": epoch, "weight": weight}, step=epoch)
        job.report(step=epoch, weight=float(weight))
        time.sleep(pause)
    return {"rank": dist.get_rank(), "weight": float(weight), "started_at": start}


def _queue(pool: str, cluster: int | None) -> list[Any]:
    with pool_config(pool) as htcondor2:
        return list(htcondor2.Schedd().query(f"ClusterId == {cluster}",
                                             ["ProcId", "JobStatus"]))


# ---------------------------------------------------------------------- without a pool
def test_shape_is_checked() -> None:
    with pytest.raises(OptionError, match="nodes must be a whole number"):
        RunShape(0, 1)
    with pytest.raises(OptionError, match="procs_per_node"):
        RunShape(2, True)
    with pytest.raises(OptionError, match="join_timeout"):
        RunShape(2, 1, -1)
    assert RunShape(3, 2).world_size == 6
    args = launcher_arguments(RunShape(3, 2, 30))
    assert args[0] == "torchrun_launch.py" and args[-1] == "--"
    assert args[args.index("--nodes") + 1] == "3" and args[args.index("--procs") + 1] == "2"


#: A torchrun worker that lists the TCP sockets listening on its rendezvous store's
#: port and on MASTER_PORT, as ``[address in hex, port]`` (from /proc/net/tcp*).
_LISTENERS = """
import json, os, sys
wanted = {int(os.environ["MASTER_PORT"]), int(sys.argv[2])}
found = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.rsplit(":", 1)
        if state == "0A" and int(port, 16) in wanted:
            found.append([address, int(port, 16)])
open(sys.argv[1], "w").write(json.dumps(found))
"""


def test_c10d_stores_listen_on_the_node_address_only(tmp_path: Path) -> None:
    """torch's TCPStore listens on every interface and torchrun has no option against
    it; the launcher hands each store server a socket bound to the node's address."""
    import json
    import socket
    import subprocess
    import sys

    from htcml_jupyter.jobside import torchrun_relay

    worker = tmp_path / "worker.py"
    worker.write_text(_LISTENERS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "listeners.json"
    subprocess.run([sys.executable, torchrun_relay.__file__, "127.0.0.1", "--nnodes=1",
                    "--nproc-per-node=1", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-conf=is_host=1",
                    "--local-addr=127.0.0.1", "--max-restarts=0", str(worker), str(out),
                    str(port)], check=True, timeout=120, capture_output=True)
    listeners = json.loads(out.read_text())
    assert port in {p for _, p in listeners} and len(listeners) == 2, listeners
    assert all(address == "0100007F" for address, _ in listeners), listeners


def test_local_processes_are_refused(tmp_path: Path) -> None:
    with pytest.raises((OptionError, PoolUnavailable), match=r"local|HTCondor pool"):
        htc.torchrun(ddp_train, nodes=2, pool="local", root=tmp_path)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------- on the pool
@pytest.mark.pool
def test_ddp_on_two_nodes(pool: str, map_root: Path) -> None:
    run = htc.torchrun(ddp_train, nodes=2, procs_per_node=1, kwargs={"epochs": 3},
                       pool=pool, root=map_root, request_memory="1GB")
    results = run.results(timeout=300)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world"] == 2 for r in results)
    assert all(r["sum"] == 3.0 for r in results)  # 1 + 2 over both ranks
    assert results[0]["checksum"] == results[1]["checksum"]
    nodes = run.nodes()
    assert [n.state for n in nodes] == ["done", "done"]
    assert sorted(r for n in nodes for r in n.ranks) == [0, 1]
    assert all(n.slot and n.host for n in nodes)
    assert run.rendezvous is not None and ":" in run.rendezvous
    ranks = run.ranks()
    assert [r.rank for r in ranks] == [0, 1] and {r.node for r in ranks} == {0, 1}
    assert _queue(pool, run.cluster) == []
    again = attach_run(run.name, map_root)
    assert again.results() == results
    text = render_text(run_snapshot(again))
    assert "2 done" in text and run.rendezvous in text
    panel = TorchrunPanel(again, start=False)
    assert run.rendezvous in panel.body.value and "slot1_" in panel.body.value
    assert panel.cancel_button.disabled  # nothing left to cancel
    # rank 0's loss is a live chart (the static HTML keeps an SVG of it)
    wait_until(lambda: len(again.reports(rank=0)) == 3, timeout=30,
               message="rank 0 should have reported each epoch")
    panel.update()
    assert list(panel.chart.lines) == [0] and list(panel.chart.lines[0].x) == [0, 1, 2]
    assert panel.chart.y_axes["linear"].label == "loss"
    assert "<svg" not in panel.body.value and "<svg" in render_html(run_snapshot(again))
    run.close()
    again.close()


@pytest.mark.pool
@pytest.mark.parametrize("bad", [1, 0])
def test_failed_rank_stops_the_run(pool: str, map_root: Path, bad: int) -> None:
    run = htc.torchrun(fail_on_rank, nodes=2, kwargs={"bad": bad}, pool=pool, root=map_root)
    deadline = time.monotonic() + 240
    while run.rendezvous is None or any(n.state == "idle" for n in run.nodes()):
        assert time.monotonic() < deadline, f"the run never started: {run.status()}"
        time.sleep(0.2)
    started = time.monotonic()
    assert run.wait(timeout=60)
    assert time.monotonic() - started < 30
    with pytest.raises(TorchrunError) as info:
        run.results()
    error = info.value
    assert error.rank == bad
    assert f"rank {bad} cannot go on" in str(error)
    rendered = "\n".join(error._render_traceback_())
    assert "ValueError" in rendered and "fail_on_rank" in rendered
    assert bad in error.errors and len(error.errors) == 2
    assert _queue(pool, run.cluster) == []
    assert "failed" in render_html(run_snapshot(run))
    run.close()


@pytest.mark.pool
def test_held_node_stops_the_run(pool: str, map_root: Path) -> None:
    run = htc.torchrun(fail_on_rank, nodes=2, kwargs={"bad": -1}, pool=pool, root=map_root)
    deadline = time.monotonic() + 240
    while sorted(r for n in run.nodes() for r in n.ranks) != [0, 1]:
        assert time.monotonic() < deadline, f"the ranks never started: {run.status()}"
        time.sleep(0.2)
    held = next(n for n in run.nodes() if 1 in n.ranks)
    with pool_config(pool) as htcondor2:
        htcondor2.Schedd().act(htcondor2.JobAction.Hold, [held.job_id],
                               reason="held to test the run")
    started = time.monotonic()
    assert run.wait(timeout=60)
    assert time.monotonic() - started < 30
    assert {n.node: n.state for n in run.nodes()} == {held.node: "held",
                                                      1 - held.node: "removed"}
    error = run.error()
    assert error is not None and error.rank == 1
    assert isinstance(error.cause, ItemHeld) and error.cause.code == 1  # held by a user
    # only the held node stays (held, its reason on show) until cancelled
    assert [(int(ad["ProcId"]), int(ad["JobStatus"])) for ad in _queue(pool, run.cluster)] \
        == [(held.node, 5)]
    run.cancel()
    wait_until(lambda: not _queue(pool, run.cluster), 30)
    run.close()


@pytest.mark.pool
def test_gpus_and_requirements_apply_per_node(pool: str, map_root: Path) -> None:
    run = htc.torchrun(ddp_train, nodes=2, pool=pool, root=map_root, request_gpus=1,
                       requirements="TARGET.Cpus >= 1")
    run.results(timeout=300)
    gpus = [n.assigned_gpus for n in run.nodes()]
    assert all(gpus) and len(set(gpus)) == 2  # each node its own (simulated) GPU
    assert all(n.cuda_visible_devices == n.assigned_gpus for n in run.nodes())
    with pool_config(pool) as htcondor2:
        ads = list(htcondor2.Schedd().history(f"ClusterId == {run.cluster}",
                                              ["RequestGPUs", "Requirements"], match=2))
    assert len(ads) == 2
    assert all(int(ad["RequestGPUs"]) == 1 and "TARGET.Cpus >= 1" in str(ad["Requirements"])
               for ad in ads)
    run.close()


@pytest.mark.pool
@pytest.mark.parametrize("victim", [0, 1])
def test_evicted_rank_restarts_the_run_from_checkpoint(pool: str, map_root: Path,
                                                       victim: int) -> None:
    run = htc.torchrun(resumable_train, nodes=2, pool=pool, root=map_root)
    deadline = time.monotonic() + 240
    while not run.reports(0) or run.reports(0)[-1]["step"] < 3:
        assert time.monotonic() < deadline and not run.done, run.status()
        time.sleep(0.2)
    item = next(r.item for r in run.ranks() if r.rank == victim)
    assert run.map.vacate([item]) == 1
    results = run.results(timeout=300)
    assert [r["weight"] for r in results] == [24.0, 24.0]  # as if never interrupted
    assert all(r["started_at"] >= 3 for r in results)      # resumed, not started over
    summary = run.checkpoints()
    assert summary[victim]["evictions"] == 1 and summary[victim]["resumed"]
    assert summary[1 - victim]["evictions"] == 0
    assert _queue(pool, run.cluster) == []
    run.close()


@pytest.mark.pool
def test_cell_magic(pool: str, map_root: Path, ip: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTCML_HOME", str(map_root))
    (map_root / "maps").mkdir()
    ip.user_ns["train_kwargs"] = {"epochs": 2}
    cell = ("def train_in_cell(epochs=1):\n"
            "    import torch.distributed as dist\n"
            "    dist.init_process_group('gloo')\n"
            "    return dist.get_rank() * 10 + epochs\n")
    ip.run_cell_magic("htc_torchrun", f"--nodes 2 --kwargs train_kwargs --pool {pool} "
                      f"--wait -o ranks_out --no-panel", cell)
    assert ip.user_ns["ranks_out"] == [2, 12]
    ip.run_cell_magic("htc_torchrun", f"--nodes 2 --pool {pool} -o handle --no-panel", cell)
    handle = ip.user_ns["handle"]
    assert isinstance(handle, TorchrunRun)
    assert handle.results(timeout=300) == [1, 11]
    handle.close()


@pytest.mark.pool
def test_multinode_notebook(pool: str, notebook_dir: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTCML_POOL", pool)
    text = _outputs(_execute("05-multinode.ipynb", notebook_dir))
    assert "world size 2" in text
    assert "parameters equal on every rank: True" in text
    assert "rendezvous at" in text
    assert "failed on rank 1" in text and "jobs left in the queue: 0" in text


@pytest.mark.pool
@pytest.mark.isolated
def test_ddp_on_a_pool_that_shares_nothing(isolated_pool: PoolState, iso_root: Path) -> None:
    """The nodes get Python and torch from the packed environment, as maps do there, and
    meet through the chirp relay without any shared folder."""
    root = iso_root / "torchrun"
    root.mkdir()
    root.chmod(0o755)
    run = htc.torchrun(ddp_train, nodes=2, procs_per_node=1, kwargs={"epochs": 3},
                       pool="isolated", root=root, request_memory="1GB")
    results = run.results(timeout=600)
    assert [r["sum"] for r in results] == [3.0, 3.0]
    assert results[0]["checksum"] == results[1]["checksum"]
    assert run.map.environment["kind"] == "pack"
    run.close()
