"""Damaged and hostile map folders, fed to list_maps, attach, status and the sidebar.

Jobs run on machines the notebook does not control and their files come back into the
map folder, and a map root may hold folders copied from anywhere.  Whatever is in
them, nothing is executed (pickles whose loading creates a marker file; a pool
configuration whose loading would run a command), no exception escapes the sidebar,
each bad map is listed with its reason, and every request answers within a second.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import htcml_jupyter as htc
from htcml_jupyter.engine.errors import HTCMLError, PoolUnavailable
from htcml_jupyter.jobside import wire
from tests import helpers
from tests.jupyter_server import JupyterLab
from tests.test_server_extension import Client, _server


class Touch:
    """A pickle that, when loaded, creates the file ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _copy(good: Path, root: Path, name: str) -> Path:
    folder = root / name
    shutil.copytree(good, folder, symlinks=True)
    return folder


def _corpus(root: Path, outside: Path, marker: Path) -> dict[str, str]:
    """Build the corpus under ``root``; returns ``{name: what is wrong with it}``."""
    good = htc.map(helpers.square, range(3), root=root, backend="local", name="good")
    sweep = htc.sweep(helpers.scale, grid={"x": [1, 2]}, root=root, backend="local",
                      name="policy-sweep", early_stop=htc.Threshold("loss", 1, 10.0),
                      watcher="kernel")
    assert good.wait(timeout=120) and sweep.wait(timeout=120)
    good.close()
    sweep.close()
    secret = outside / "secret.txt"
    secret.write_text("outside")
    evil = pickle.dumps(Touch(str(marker)))
    meta = json.loads((good.store.path / "map.json").read_text())
    cases: dict[str, str] = {}

    def case(name: str, why: str) -> Path:
        cases[name] = why
        return _copy(good.store.path, root, name)

    (case("truncated", "map.json cut short") / "map.json").write_text(
        json.dumps(meta)[:40])
    wrongs: list[object] = [[], "text", 7, None,
                               {**meta, "pool": "x", "n_items": "many", "options": 5},
                               {**meta, "pool": {"backend": "condor", "config": 5}},
                               {**meta, "options": {"request_cpus": [1]}}]
    for i, wrong in enumerate(wrongs):
        (case(f"wrong-type-{i}", "map.json of the wrong types") / "map.json").write_text(
            json.dumps(wrong))
    folder = case("meta-link", "map.json is a link")
    (folder / "map.json").unlink()
    (folder / "map.json").symlink_to(secret)
    folder = case("meta-fifo", "map.json is a FIFO")
    (folder / "map.json").unlink()
    os.mkfifo(folder / "map.json")
    for rel in ("tasks.jsonl", "submissions.jsonl", "outputs/task-0.pkl", "logs/events.log",
                "logs/task-0.out"):
        folder = case("link-" + rel.replace("/", "-"), f"{rel} is a link")
        (folder / rel).unlink(missing_ok=True)
        (folder / rel).symlink_to(secret)
    for sub in ("outputs", "logs", "inputs"):
        folder = case(f"link-folder-{sub}", f"{sub}/ is a link")
        shutil.rmtree(folder / sub)
        (folder / sub).symlink_to(outside, target_is_directory=True)
    folder = case("huge-outcome", "a 2 GB outcome file")
    with open(folder / "outputs" / "task-0.pkl", "wb") as f:
        f.truncate(2 << 30)
    folder = case("pickle-outcome", "an outcome file that is a pickle that runs code")
    (folder / "outputs" / "task-1.pkl").write_bytes(evil)
    folder = case("pickle-value", "an outcome whose value runs code when unpickled")
    record = {"index": 2, "ok": True, "value": evil, "started": 0.0, "seconds": 0.0}
    (folder / "outputs" / "task-2.pkl").write_bytes(
        wire.encode_outcome({"host": "x", "python": "3"}, [record]))
    policy = _copy(sweep.store.path, root, "pickle-policy")
    cases["pickle-policy"] = "a sweep whose policy runs code when unpickled"
    (policy / "policy.pkl").write_bytes(evil)
    folder = case("config-elsewhere", "map.json names a pool configuration of its own")
    evil_config = outside / "condor_config"
    evil_config.write_text(f"include command : /usr/bin/touch {marker}\n")
    (folder / "map.json").write_text(json.dumps(
        {**meta, "pool": {"backend": "condor", "config": str(evil_config),
                          "description": "hostile", "job_uid": 0}}))
    case("bad\nname", "a name with a newline")
    case("trailing\n", "a name that ends with a newline")
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str],
                                                                        Path]]:
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "home" / "maps", base / "outside"
    root.mkdir(parents=True)
    outside.mkdir()
    marker = base / "code-ran"
    cases = _corpus(root, outside, marker)
    yield root, cases, marker
    assert not marker.exists(), "something in the corpus was executed"


def test_list_maps_lists_every_folder_with_its_reason(corpus: tuple[Path, dict[str, str],
                                                                     Path]) -> None:
    root, cases, marker = corpus
    listed = {info.name: info for info in htc.list_maps(root)}
    assert set(cases) | {"good", "policy-sweep"} <= set(listed)
    assert listed["good"].problem is None and listed["good"].n_items == 3
    for name in ("truncated", "meta-link", "meta-fifo", *(f"wrong-type-{i}" for i in range(4))):
        assert listed[name].problem, (name, listed[name])
    assert "link" in str(listed["meta-link"].problem)
    assert "not a regular file" in str(listed["meta-fifo"].problem)
    assert not marker.exists()


def test_attach_and_status_execute_nothing(corpus: tuple[Path, dict[str, str], Path]) -> None:
    root, cases, marker = corpus
    for name in sorted(cases):
        started = time.monotonic()
        try:
            m = htc.attach(name, root=root, watch=False)
            try:
                counts = m.status()
                assert sum(counts.values()) >= 0
            finally:
                m.close()
        except (HTCMLError, ValueError, OSError):
            pass  # a clear refusal is fine; anything else escapes and fails the test
        assert time.monotonic() - started < 1.0, name
        assert not marker.exists(), name
    with pytest.raises(PoolUnavailable, match="not a pool configured here"):
        htc.attach("config-elsewhere", root=root)
    with pytest.raises(ValueError, match="map name"):
        htc.attach("trailing\n", root=root)


@pytest.fixture(scope="module")
def sidebar(corpus: tuple[Path, dict[str, str], Path],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    root = corpus[0]
    with _server(tmp_path_factory.mktemp("lab-hostile"), {"HTCML_HOME": str(root.parent)}) \
            as server:
        yield server


def _timed(call: object) -> tuple[object, float]:
    started = time.monotonic()
    reply = call()  # type: ignore[operator]
    return reply, time.monotonic() - started


def test_the_sidebar_lists_every_bad_map_with_why(corpus: tuple[Path, dict[str, str], Path],
                                                  sidebar: JupyterLab) -> None:
    _, cases, marker = corpus
    client = Client(sidebar)
    for _ in range(3):  # the first listing attaches every map; each stays under 1 s
        reply, seconds = _timed(client.get)
        assert reply.status == 200, reply  # type: ignore[attr-defined]
        assert seconds < 1.0, seconds
    rows = {m["name"]: m for m in reply.body["maps"]}  # type: ignore[attr-defined]
    assert set(cases) | {"good", "policy-sweep"} <= set(rows)
    assert rows["good"]["error"] is None and rows["good"]["counts"]["done"] == 3
    for name in ("truncated", "meta-link", "meta-fifo", "config-elsewhere", "bad\nname",
                 "trailing\n", *(f"wrong-type-{i}" for i in range(6))):
        assert rows[name]["error"], (name, rows[name])
    assert "not a pool configured here" in rows["config-elsewhere"]["error"]
    assert not marker.exists()


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_sidebar_actions_on_bad_maps_answer_clearly(corpus: tuple[Path, dict[str, str], Path],
                                                    sidebar: JupyterLab, action: str) -> None:
    _, cases, marker = corpus
    client = Client(sidebar)
    for name in sorted(cases):
        reply, seconds = _timed(lambda n=name: client.post(n, action))
        status = reply.status  # type: ignore[attr-defined]
        assert status in (200, 400, 404, 409, 502), (name, reply)
        assert seconds < 1.0, (name, seconds)
        assert not marker.exists(), name


def test_output_files_named_by_a_job_stay_in_the_map_folder(tmp_path: Path) -> None:
    """A job reports the names of the files it wrote; names that climb out of the map
    folder (``..``, absolute, or through a link) are refused, never handed back."""
    from htcml_jupyter.engine.folder_files import UnsafeEntry

    m = htc.map(helpers.square, range(3), root=tmp_path, backend="local", chunksize=3)
    assert m.wait(timeout=120)
    outcome = m.store.output_file(0)
    header, records = wire.decode_outcome(outcome.read_bytes())
    names = {0: ["../../../etc/passwd"], 1: ["/etc/passwd"], 2: ["out/x.txt"]}
    for record in records:
        record["files"], record["call"] = names[record["index"]], record["index"]
    outcome.write_bytes(wire.encode_outcome(header, records))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.txt").write_text("outside")
    folder = m.store.files_folder(0) / "2"
    folder.mkdir(parents=True)
    (folder / "out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    again = htc.attach(m.name, root=tmp_path)
    try:
        for item, why in ((0, "outside its folder"), (1, "outside its folder"),
                          (2, "through a link")):
            with pytest.raises(UnsafeEntry, match=why):
                again.output_files(item)
        (folder / "out").unlink()
        (folder / "out").mkdir()
        assert again.output_files(2) == [folder / "out" / "x.txt"]
    finally:
        again.close()
        m.close()
