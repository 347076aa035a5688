"""The map folder: what root may give to the job user, and map names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from htcml_jupyter.engine.store import MapStore

JOB_UID = 1777


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_chown_never_follows_links_the_job_user_planted(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"           # stands for /etc/shadow
    secret.write_text("root only")
    secret.chmod(0o600)
    shared = tmp_path / "cache.tar.gz"     # stands for a cached environment pack
    shared.write_text("pack")
    store = MapStore.create(tmp_path / "maps", "m1", {"name": "m1"})
    (store.path / "outputs" / "x").symlink_to(secret)
    (store.path / "logs" / "dir").symlink_to(tmp_path, target_is_directory=True)
    os.link(shared, store.path / "cache.tar.gz")
    store.chown(JOB_UID)
    assert secret.stat().st_uid == 0 and shared.stat().st_uid == 0
    assert tmp_path.stat().st_uid == 0
    assert (store.path / "outputs" / "x").lstat().st_uid == JOB_UID
    assert (store.path / "outputs").stat().st_uid == JOB_UID
    # root's own record stays root's (the job user may read it, not rewrite it)
    assert (store.path / "map.json").stat().st_uid == 0
    assert (store.path / "map.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 101, "a\nb", "x\n",
                                  "x\r", "x\n\n"])
def test_open_refuses_names_that_are_not_map_names(tmp_path: Path, name: str) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "map.json").write_text("{}")
    with pytest.raises(ValueError, match="map name"):
        MapStore.open(tmp_path / "maps", name)


def test_item_index_is_per_job_and_follows_retries() -> None:
    from htcml_jupyter.engine.state import TaskTable

    table = TaskTable()
    for task in range(4):
        table.add_task(task, range(task * 250_000, (task + 1) * 250_000))
    index = table.item_task
    assert len(index) == 1_000_000 and index[0] == 0 and index[999_999] == 3
    assert index[250_000] == 1 and 1_000_000 not in index
    table.add_task(4, [3, 250_001])          # a retry moves two items to a new job
    assert index[3] == 4 and index[250_001] == 4 and index[4] == 0
    assert index.moved_from(0, range(0, 250_000)) == 1
    assert list(index.current(1, range(250_000, 250_003))) == [250_000, 250_002]
    assert len(index) == 1_000_000
    assert len(index._runs) == 4 and len(index._moved) == 2  # per job, plus moved items


def test_a_submission_note_is_abandoned_only_when_its_process_is_gone(tmp_path: Path) -> None:
    import subprocess
    import sys

    store = MapStore.create(tmp_path, "notes", {"name": "notes"})
    store.add_pending_submission("mine", [0])         # this process: still running
    subprocess.run([sys.executable, "-c",
                    "import sys, pathlib; from htcml_jupyter.engine.store import MapStore; "
                    "MapStore(pathlib.Path(sys.argv[1])).add_pending_submission('gone', [1])",
                    str(store.path)], check=True)
    assert store.pending_submissions() == {"mine": [0], "gone": [1]}
    assert store.pending_submissions(abandoned_only=True) == {"gone": [1]}
