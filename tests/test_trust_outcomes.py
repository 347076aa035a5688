"""What a job writes is data until the user asks for its values.

A hostile execute node can replace any file a job sends back.  Reading a map's state
(``status()``, ``list_maps()``, ``attach()``, the panel's data, the sidebar server's
listing) must never run a pickle from such a file; only the calls that return values
(``results()``, ``result()``, ``as_completed()``, ``iter_results()``) unpickle them.
Checked on the real pool, with a file that a pickle creates when it is loaded.
"""

from __future__ import annotations

import os
import pickle
import shlex
import time
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter.engine.reports import ReportBook
from htcml_jupyter.engine.store import MapStore
from htcml_jupyter.jobside import wire
from htcml_jupyter.server.catalog import MapCatalog
from htcml_jupyter.views.progress import snapshot
from tests import helpers


class _Planted:
    """Loading its pickle runs a shell command that creates ``flag``."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.flag))}",))


def _plant(store: MapStore, flag: Path) -> None:
    """Replace the outcomes of jobs 0-2 and add a policy, as a hostile node would."""
    hostile = pickle.dumps(_Planted(flag))
    header = {"python": "3", "host": "evil"}
    # job 0: the earlier format, a header and then one pickle of every record
    store.output_file(0).write_bytes(
        wire.MAGIC + b'{"python": "3"}\n' + hostile)
    # job 1: "succeeded", its value a pickle that runs the command
    store.output_file(1).write_bytes(wire.encode_outcome(
        header, [{"index": 1, "ok": True, "value": hostile, "started": 0, "seconds": 0}]))
    # job 2: "failed", its pickled exception runs the command
    error = {"type": "builtins.ValueError", "message": "no", "traceback": "", "host": "evil",
             "python": "3", "exception": hostile}
    store.output_file(2).write_bytes(wire.encode_outcome(
        header, [{"index": 2, "ok": False, "error": error, "started": 0, "seconds": 0}]))
    (store.path / "policy.pkl").write_bytes(hostile)


@pytest.mark.pool
def test_reading_state_never_unpickles_what_jobs_wrote(pool_env: str,
                                                       map_root: Path) -> None:
    flag = map_root / "planted-pickle-ran"
    m = htc.map(helpers.square, range(6), chunksize=1, root=map_root)
    s = htc.sweep(helpers.square, grid={"x": [1, 2]}, root=map_root)
    assert m.results(timeout=120) == [0, 1, 4, 9, 16, 25]
    assert s.results(timeout=120) == [1, 4]
    m.close()
    s.close()
    for store in (m.store, s.store):
        _plant(store, flag)

    for name in (m.name, s.name):
        assert htc.attach(name, root=map_root).status()["done"] >= 1
        observed = htc.attach(name, root=map_root, watch=False)
        assert isinstance(observed, htc.Map)
        counts = observed.status()
        observed.item_states()
        panel = snapshot(observed)  # what the panel draws, failed items' errors included
        observed.close()
        assert not flag.exists(), f"reading the state of {name} ran a job's pickle"
    assert {i.name for i in htc.list_maps(map_root)} >= {m.name, s.name}
    catalog = MapCatalog(map_root)
    try:
        rows = catalog.summaries()  # the JupyterLab sidebar's listing
    finally:
        catalog.close()
    time.sleep(1.5)  # a sweep's watcher thread would have looked at its policy by now
    assert not flag.exists(), "listing maps, or a sweep's watcher, ran a job's pickle"
    assert {r.name for r in rows} >= {m.name, s.name}
    # the sweep: trial 0's outcome is the earlier format (not read), trial 1 "succeeded"
    assert counts == {"idle": 0, "running": 0, "done": 1, "failed": 1, "held": 0,
                      "removed": 0}
    assert [p.item for p in panel.problems] == [0]
    again = htc.attach(m.name, root=map_root, watch=False)
    assert isinstance(again, htc.Map)
    assert again.status() == {"idle": 0, "running": 0, "done": 4, "failed": 2, "held": 0,
                              "removed": 0}
    assert "earlier, pickled format" in str(again.error(0))
    assert again.errors[2].message == "no" and not flag.exists()  # not unpickled either

    # Honest files still give their values; asking for a planted value is what runs it.
    assert [again.result(i) for i in (3, 4, 5)] == [9, 16, 25]
    assert not flag.exists()
    again.result(1)
    assert flag.exists(), "the planted value was never unpickled: the test proves nothing"
    again.close()


def test_reports_of_the_wrong_shape_are_skipped() -> None:
    book = ReportBook()
    book.add([{"i": 0, "m": {"loss": 0.5}, "s": 1},
              "text", {"i": "x", "m": {}}, {"i": 1, "m": ["no"]}, {"i": True, "m": {}},  # type: ignore[list-item]
              {"i": 2, "m": {"loss": "high", "acc": 0.9}, "s": "one"},
              {"i": 3, "saved": {"a": 1}}], default_item=None, evictions=0)
    book.add("not a list", default_item=0, evictions=0)  # type: ignore[arg-type]
    assert book.metrics == {0: [{"step": 1, "time": None, "loss": 0.5}],
                            2: [{"step": None, "time": None, "acc": 0.9}]}
    assert book.checkpoint_notes == {3: {"saved": None, "restored": []}}


def reports_twice(x: int) -> int:
    import htcml_jupyter

    htcml_jupyter.report(step=0, loss=1.0)
    htcml_jupyter.report(step=1, loss=0.5)
    return x * 2


def _want_io_proxy(pool: str, cluster: int) -> list[Any]:
    from htcml_jupyter.backends.bindings import pool_config

    with pool_config(pool) as htcondor2:
        schedd = htcondor2.Schedd()
        ads = schedd.query(constraint=f"ClusterId == {cluster}", projection=["WantIOProxy"])
        if not ads:
            ads = list(schedd.history(constraint=f"ClusterId == {cluster}",
                                      projection=["WantIOProxy", "ClusterId"], match=10))
    assert ads, f"no job ads for cluster {cluster}"
    return [ad.get("WantIOProxy") for ad in ads]


@pytest.mark.pool
def test_chirp_false_jobs_have_no_io_proxy_and_skip_reports(pool_env: str,
                                                            map_root: Path) -> None:
    quiet = htc.map(reports_twice, range(3), chunksize=3, root=map_root, chirp=False)
    told = htc.map(reports_twice, range(3), chunksize=3, root=map_root)
    assert quiet.results(timeout=120) == [0, 2, 4]
    assert told.results(timeout=120) == [0, 2, 4]
    assert _want_io_proxy(pool_env, quiet.clusters[0]) == [None]
    assert _want_io_proxy(pool_env, told.clusters[0]) == [True]
    assert quiet.all_reports() == {}
    helpers.wait_until(lambda: len(told.all_reports()) == 3, timeout=30,
                       message="the jobs with chirp should have reported")
    stderr = "".join(quiet.stderr(i) for i in range(3))
    assert stderr.count("chirp=False") == 1, stderr  # one warning for the whole job
    assert htc.attach(quiet.name, root=map_root).options.chirp is False


def test_torchrun_needs_chirp(map_root: Path) -> None:
    with pytest.raises(htc.OptionError, match="chirp=False"):
        htc.torchrun(reports_twice, nodes=2, root=map_root, chirp=False)
    assert not list(map_root.iterdir())  # nothing was made


@pytest.mark.pool
def test_the_cell_magic_takes_no_chirp(pool_env: str, ip: Any, map_root: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTCML_HOME", str(map_root))
    (map_root / "maps").mkdir()
    (map_root / "maps").chmod(0o755)
    ip.user_ns["xs"] = [1, 2]
    ip.run_cell_magic("htc_map", "--over xs --no-chirp -o quiet --no-panel",
                      "def doubled(x):\n    return 2 * x\n")
    m = ip.user_ns.pop("quiet")
    assert m.options.chirp is False
    assert m.results(timeout=120) == [2, 4]
    assert _want_io_proxy(pool_env, m.clusters[0]) == [None] * len(m.tasks())


def test_outcome_files_round_trip_and_damage_is_a_value_error() -> None:
    error = {"type": "builtins.KeyError", "message": "k", "traceback": "tb", "host": "h",
             "python": "3.11.7", "exception": pickle.dumps(KeyError("k"))}
    records = [
        {"index": 4, "ok": True, "value": pickle.dumps([1, 2]), "started": 1.5, "seconds": 2},
        {"index": 5, "ok": False, "error": error, "started": 1.0, "seconds": 0.5},
        {"index": 6, "ok": True, "value": b"", "started": None, "seconds": None,
         "call": 6, "files": ["a.txt"]},
        wire.lost_record(7, "lost", "h", "3.11.7"),
        {"index": 8, "ok": False, "error": {**error, "exception": None}, "started": 1,
         "seconds": 1, "payload": True},
    ]
    data = wire.encode_outcome({"host": "h", "setup_runs": []}, records)
    header, back = wire.decode_outcome(data)
    assert sorted(back, key=lambda r: r["index"]) == records
    assert header["ok"] == [[4, 5], [6, 7]] and header["host"] == "h"
    assert wire.ok_items(header) == {4, 6}
    damaged = [data[:len(data) // 2], data[:-1], b"", b"HTCML-OUTCOME 2\n{}\n",
               data.replace(b'"plain": 1', b'"plain": 99'),
               data.replace(b'"size": ', b'"size": 9'),
               wire.OUTCOME_MAGIC + b"[1, 2]\n", wire.OUTCOME_MAGIC + b"\xff\xfe\n"]
    for bad in damaged:
        with pytest.raises(ValueError):
            wire.decode_outcome(bad)
