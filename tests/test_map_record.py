"""The map record (``map.json``): typed, versioned, read back from folders of every kind.

``tests/recorded/maps-v0/`` holds finished map folders written by the code before the
record had a schema (version 0): a map on local processes, a map, a sweep, an adaptive
sweep, two chain stages and a torchrun run on the project's pool.  They must still
attach, as the handle of their kind, with their results.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter.engine.mapping import Map
from htcml_jupyter.engine.record import SCHEMA, MapRecord, RecordError
from htcml_jupyter.engine.store import MapStore
from htcml_jupyter.multinode import TorchrunRun
from htcml_jupyter.multinode.submit import TorchrunBackend
from htcml_jupyter.training.adaptive import AdaptiveSweep
from htcml_jupyter.training.sweeps import Sweep
from htcml_jupyter.workflows.node import StageMap
from tests.helpers import square

RECORDED = Path(__file__).resolve().parent / "recorded" / "maps-v0"


def rank_of() -> int:
    """One process of a run: its global rank, as torchrun set it."""
    import os

    return int(os.environ["RANK"])


def _copy(name: str, root: Path) -> MapStore:
    """A recorded folder copied under ``root`` (attaching may add files to it)."""
    shutil.copytree(RECORDED / name, root / name)
    return MapStore(root / name)


def _launcher_in_front(handle: Any) -> None:
    """The handle's backend starts each node with the torchrun launcher."""
    m = handle.map
    assert isinstance(m.backend, TorchrunBackend)
    launch = m.backend.launch(m.store, m.options)
    assert "torchrun_launch.py" in launch.arguments_prefix, launch.arguments_prefix
    assert any(f.endswith("torchrun_launch.py") for f in launch.input_files)
    assert m.backend.job_attributes() == {"My.HtcmlTorchrun": '"2x1"'}


# ---------------------------------------------------------------------- the record alone
def _v0(**extra: Any) -> dict[str, Any]:
    return {"name": "m", "function": "f", "created": 1.0, "n_items": 3, "chunksize": "auto",
            "chunk_items": 2, "options": {"request_memory": "1GB"},
            "pool": {"backend": "local", "workers": 2, "description": "local processes"},
            "batch_name": "m", "code_locations": {"f": "/x.py"}, "batch_size": None,
            "setup": None, **extra}


@pytest.mark.parametrize(("extra", "kind"), [
    ({}, "map"),
    ({"sweep": {"params": [{"a": 1}], "metric": "loss", "mode": "min", "function": "f"}},
     "sweep"),
    ({"workflow": {"name": "w", "folder": "/tmp/w"}}, "stage"),
    ({"torchrun": {"nodes": 2, "procs_per_node": 1, "join_timeout": 60}}, "torchrun"),
])
def test_version_0_kind_is_inferred_and_written_back_as_version_1(
        extra: dict[str, Any], kind: str) -> None:
    record = MapRecord.from_json(_v0(**extra))
    assert record.schema == 0 and record.kind == kind
    assert record.n_items == 3 and record.chunk_items == 2 and record.chunksize == "auto"
    assert record.options.request_memory == "1GB"
    assert record.backend["backend"] == "local"
    written = record.to_json()
    assert written["schema"] == SCHEMA == 1 and written["kind"] == kind
    again = MapRecord.from_json(json.loads(json.dumps(written)))
    assert again.kind == kind and again.schema == SCHEMA
    assert again.to_json() == written
    if kind == "torchrun":
        assert again.torchrun is not None and again.torchrun.nodes == 2
        assert again.backend["launcher"] == "torchrun"  # a v0 run's backend gains it
    if kind == "sweep":
        assert again.sweep is not None and again.sweep.metric == "loss"
        assert again.sweep.params == [{"a": 1}] and again.sweep.adaptive is None


def test_future_and_damaged_records_say_what_to_do() -> None:
    with pytest.raises(RecordError, match=r"schema 7.*upgrade htcml_jupyter"):
        MapRecord.from_json({**_v0(), "schema": 7, "kind": "map"})
    with pytest.raises(RecordError, match="kind"):
        MapRecord.from_json({**_v0(), "schema": 1, "kind": "teapot"})
    with pytest.raises(RecordError, match="kind 'sweep' lacks the 'sweep' part"):
        MapRecord.from_json({**_v0(), "schema": 1, "kind": "sweep"})
    with pytest.raises(RecordError, match="kind 'map' holds the 'torchrun' part"):
        MapRecord.from_json({**_v0(torchrun={"nodes": 2, "procs_per_node": 1}),
                             "schema": 1, "kind": "map"})
    with pytest.raises(RecordError, match="n_items"):
        MapRecord.from_json({**_v0(), "n_items": "many"})
    with pytest.raises(RecordError, match="not the map's record"):
        MapRecord.from_json([1, 2])  # type: ignore[arg-type]
    without_options = {k: v for k, v in _v0().items() if k != "options"}
    with pytest.raises(RecordError, match="no 'options'"):
        MapRecord.from_json(without_options)
    # a new record written from a few fields: the rest take their defaults
    assert MapRecord.from_json(without_options, complete=True).options.request_cpus == 1


def test_a_new_map_records_its_kind_and_schema(tmp_path: Path) -> None:
    m = htc.map(square, range(3), backend="local", root=tmp_path, name="fresh")
    assert m.results(timeout=120) == [0, 1, 4]
    raw = json.loads((tmp_path / "fresh" / "map.json").read_text())
    assert raw["schema"] == SCHEMA and raw["kind"] == "map"
    assert raw["pool"]["backend"] == "local" and raw["n_items"] == 3
    assert m.record.kind == "map" and m.record.options == m.options
    m.close()


def test_store_reads_and_writes_the_record(tmp_path: Path) -> None:
    record = MapRecord.from_json(_v0(name="rec"))
    store = MapStore.create(tmp_path, "rec", record)
    raw = json.loads((store.path / "map.json").read_text())
    assert raw["schema"] == SCHEMA and raw["kind"] == "map" and raw["pool"]["backend"] == "local"
    assert store.read_record() == record.with_schema()
    store.write_record(store.read_record().replace(n_items=5))
    assert store.read_record().n_items == 5


# ---------------------------------------------------------------------- folders of version 0
def test_version_0_local_map_attaches(tmp_path: Path) -> None:
    store = _copy("v0-local", tmp_path)
    assert store.read_record().kind == "map" and store.read_record().schema == 0
    m = htc.attach("v0-local", root=tmp_path)
    assert type(m) is Map and m.backend.kind == "local"
    assert m.results() == [0, 1, 4, 9]
    assert m.status()["done"] == 4
    m.close()


@pytest.mark.pool
@pytest.mark.parametrize(("name", "handle", "results"), [
    ("v0-pool", Map, [0, 1, 4]),
    ("v0-sweep", Sweep, [{"loss": 0.1 * 3}, {"loss": 0.2 * 3}]),
    ("v0-chain.0-double", StageMap, [2, 4]),
    ("v0-chain.1-add_one", StageMap, [3, 5]),
])
def test_version_0_pool_folders_attach(pool: str, tmp_path: Path, name: str, handle: type,
                                       results: list[Any]) -> None:
    store = _copy(name, tmp_path)
    record = store.read_record()
    assert record.schema == 0
    assert record.kind == {"v0-pool": "map", "v0-sweep": "sweep"}.get(name, "stage")
    m = htc.attach(name, root=tmp_path, watch=False)
    assert type(m) is handle
    assert m.results() == pytest.approx(results) if handle is not Sweep else \
        [r["loss"] for r in m.results()] == pytest.approx([r["loss"] for r in results])
    assert m.status()["done"] == len(results)
    m.close()


@pytest.mark.pool
def test_version_0_adaptive_sweep_attaches(pool: str, tmp_path: Path) -> None:
    store = _copy("v0-adaptive", tmp_path)
    record = store.read_record()
    assert record.kind == "sweep" and record.sweep is not None
    assert record.sweep.adaptive is not None and record.sweep.adaptive["n_trials"] == 2
    s = htc.attach("v0-adaptive", root=tmp_path, watch=False)
    assert isinstance(s, AdaptiveSweep)
    assert all(0.3 <= r["loss"] <= 0.6 for r in s.results())
    s.close()


@pytest.mark.pool
def test_version_0_torchrun_attaches_as_a_run_with_its_launcher(pool: str,
                                                                tmp_path: Path) -> None:
    store = _copy("v0-torchrun", tmp_path)
    assert store.read_record().kind == "torchrun"
    run = htc.attach("v0-torchrun", root=tmp_path)
    assert isinstance(run, TorchrunRun)
    assert run.results() == [{"rank": 0, "world": 2}, {"rank": 1, "world": 2}]
    assert run.shape.nodes == 2 and [n.state for n in run.nodes()] == ["done", "done"]
    _launcher_in_front(run)
    run.close()


def rank_one_fails() -> int:
    """One process of a run: rank 1 raises at once, the others return their rank."""
    import os

    rank = int(os.environ["RANK"])
    if rank == 1:
        raise ValueError("rank 1 gives up")
    return rank


# ---------------------------------------------------------------------- the backend recorded
@pytest.mark.pool
def test_attached_torchrun_run_keeps_its_launcher(pool: str, map_root: Path) -> None:
    """A run attached again (another process, the sidebar) is a run, and a retry of its
    nodes would start them with the torchrun launcher, not as plain map jobs."""
    run = htc.torchrun(rank_of, nodes=2, pool=pool, root=map_root, join_timeout=120,
                       request_memory="512MB")
    assert run.results(timeout=300) == [0, 1]
    raw = json.loads((run.map.store.path / "map.json").read_text())
    assert raw["kind"] == "torchrun" and raw["pool"]["launcher"] == "torchrun"
    again = htc.attach(run.name, root=map_root)
    assert isinstance(again, TorchrunRun)
    assert again.results() == [0, 1] and again.shape == run.shape
    _launcher_in_front(again)
    from htcml_jupyter.server.catalog import MapCatalog

    catalog = MapCatalog(map_root)
    try:  # what the sidebar retries through
        summary = catalog.summaries()[0]
        assert summary.name == run.name and summary.counts["done"] == 2
        seen = catalog._map(next(i for i in htc.list_maps(map_root) if i.name == run.name))
        assert isinstance(seen.backend, TorchrunBackend)
    finally:
        catalog.close()
    run.close()
    again.close()
    assert not os.path.exists(map_root / run.name / "map.json.tmp")


@pytest.mark.pool
def test_the_sidebar_retries_a_runs_node_with_its_launcher(pool: str, map_root: Path) -> None:
    """A retry from the sidebar's catalog queues the failed node as a node of the run:
    the torchrun launcher in front of the runner, the run's shape in the job's ad."""
    from htcml_jupyter.backends.bindings import pool_config
    from htcml_jupyter.server.catalog import MapCatalog

    run = htc.torchrun(rank_one_fails, nodes=2, pool=pool, root=map_root, join_timeout=60,
                       request_memory="512MB")
    try:
        assert run.wait(timeout=300)
        assert run.map.item_states()[1].value == "failed"
        catalog = MapCatalog(map_root)
        try:
            _, retried = catalog.retry(run.name)
        finally:
            catalog.close()
        assert 1 in retried
        again = htc.attach(run.name, root=map_root)
        assert isinstance(again, TorchrunRun) and len(again.clusters) == 2
        with pool_config(pool) as htcondor2:
            ads = htcondor2.Schedd().query(f"ClusterId == {again.clusters[-1]}",
                                           ["Args", "Arguments", "HtcmlTorchrun"])
        assert ads, "the retried node is not in the queue"
        arguments = str(ads[0].get("Arguments") or ads[0].get("Args"))
        assert "torchrun_launch.py" in arguments and "--nodes 2" in arguments, arguments
        assert ads[0]["HtcmlTorchrun"] == "2x1"
        again.close()
    finally:
        run.cancel()
        run.close()
