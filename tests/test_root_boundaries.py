"""Root submitting for the pool's job user: that user owns the map folder, and nothing
they put there makes root write outside it, follow a link, or load their pickle.

Each test plants, as the job user (a real process with that uid), what a job could:
links in place of files and folders root writes, a pickle in place of one root loads.
Then root does its usual work on the map, and the targets the links point at (files and
a folder root made under /etc) must be untouched.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from htcml_jupyter.devpool import POOL_UID
from htcml_jupyter.engine.folder_files import UnsafeEntry
from htcml_jupyter.engine.payload import dump_items
from htcml_jupyter.engine.store import MapStore
from htcml_jupyter.engine.submission import read_arguments
from htcml_jupyter.workflows.watcher_job import hand_over_tokens, watcher_record, write_record

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root and the job user need root")

#: The interpreter the job user runs (root's own lives under /root, mode 0700).
JOB_PYTHON = "/usr/bin/python3"


class Touch:
    """A pickle that, when loaded, creates the file ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def as_job_user(code: str, *args: str) -> None:
    """Run ``code`` (Python, standard library) as the pool's job user, without root's
    groups, in the folder ``/``."""
    done = subprocess.run([JOB_PYTHON, "-I", "-c", code, *args], user=POOL_UID,
                          group=POOL_UID, extra_groups=[], cwd="/", capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr


@pytest.fixture
def targets() -> Iterator[tuple[Path, Path]]:
    """A root-only file and folder outside every map folder (stand-ins for /etc/shadow
    and /etc/cron.d)."""
    tag = secrets.token_hex(4)
    file, folder = Path(f"/etc/htcml-test-{tag}"), Path(f"/etc/htcml-test-{tag}.d")
    file.write_text("untouched")
    file.chmod(0o644)
    folder.mkdir(mode=0o755)
    yield file, folder
    file.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def store(map_root: Path) -> MapStore:
    """A map folder as root leaves it after submitting for the job user."""
    made = MapStore.create(map_root, "m", {"name": "m", "n_items": 2}, owner_uid=POOL_UID)
    dump_items([(0, "a"), (1, "b")], made.input_file(0))
    made.add_tasks([(0, range(2))])
    made.write_file("policy.pkl", pickle.dumps("a policy"))
    made.make_seed_files()
    made.chown(POOL_UID)
    return made


def _untouched(file: Path, folder: Path) -> None:
    assert file.read_text() == "untouched" and file.stat().st_uid == 0
    assert list(folder.iterdir()) == []


PLANT_LINKS = """
import os, sys
folder, file, target_dir = sys.argv[1:4]
for name in ("tasks.jsonl", "submissions.jsonl", "map.json", "watcher.json"):
    path = os.path.join(folder, name)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(file, path)
os.rename(os.path.join(folder, "inputs"), os.path.join(folder, "inputs.old"))
os.symlink(target_dir, os.path.join(folder, "inputs"))
os.symlink(target_dir, os.path.join(folder, "tokens.d"))
"""


def test_root_follows_no_link_the_job_user_planted(store: MapStore,
                                                   targets: tuple[Path, Path]) -> None:
    file, folder = targets
    assert (store.path / "outputs").stat().st_uid == POOL_UID
    as_job_user(PLANT_LINKS, str(store.path), str(file), str(folder))

    # Appending to a record refuses the link, with a message that names it.
    with pytest.raises(UnsafeEntry, match=r"tasks\.jsonl is a symbolic link"):
        store.add_tasks([(1, range(2, 3))])
    with pytest.raises(UnsafeEntry, match="symbolic link"):
        store.add_submission(7, [1])
    # A record that is replaced as a whole replaces the link itself.
    store.write_meta({"name": "m", "n_items": 2})
    assert not (store.path / "map.json").is_symlink()
    assert (store.read_record().name, store.read_record().n_items) == ("m", 2)
    write_record(store, {"state": "submitted"})
    assert watcher_record(store) == {"state": "submitted"}
    # A folder that is a link is neither written into nor read from.
    with pytest.raises(UnsafeEntry, match=r"inputs is a link"):
        dump_items([(2, "c")], store.input_file(1))
    with pytest.raises(UnsafeEntry, match=r"(tasks\.jsonl|inputs) is a (symbolic )?link"):
        read_arguments(store, [0])
    with pytest.raises(UnsafeEntry, match=r"tokens\.d is a link"):
        store.write_file("tokens.d/pool", b"secret", mode=0o600)
    _untouched(file, folder)


def test_root_loads_no_pickle_the_job_user_wrote(store: MapStore, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    assert store.read_own("policy.pkl") == pickle.dumps("a policy")  # root's own: loaded
    assert (store.path / "policy.pkl").stat().st_uid == 0
    evil = pickle.dumps(Touch(str(marker)))
    as_job_user("""
import os, sys
folder, evil = sys.argv[1], bytes.fromhex(sys.argv[2])
for rel in ("policy.pkl", "inputs/task-0.pkl"):
    path = os.path.join(folder, rel)
    os.unlink(path)                      # the folder is the job user's: allowed
    with open(path, "wb") as f:
        f.write(evil)
""", str(store.path), evil.hex())
    with pytest.raises(UnsafeEntry, match=rf"belongs to uid {POOL_UID}"):
        store.read_own("policy.pkl")
    with pytest.raises(UnsafeEntry, match=rf"task-0\.pkl belongs to uid {POOL_UID}"):
        read_arguments(store, [0, 1])
    assert not marker.exists()


def test_a_fifo_or_a_link_to_a_fifo_does_not_hang_root(store: MapStore) -> None:
    as_job_user("""
import os, sys
folder = sys.argv[1]
os.unlink(os.path.join(folder, "tasks.jsonl"))
os.mkfifo(os.path.join(folder, "tasks.jsonl"))
""", str(store.path))
    with pytest.raises(UnsafeEntry, match="not a regular file"):
        store.add_tasks([(1, range(2, 3))])
    with pytest.raises(UnsafeEntry, match="not a regular file"):
        list(store.tasks())


@pytest.mark.pool
def test_token_copy_is_private_and_follows_no_link(pool: str, store: MapStore,
                                                   targets: tuple[Path, Path]) -> None:
    """The watcher's copy of the submitting user's IDTOKENS: 0600 from the first byte,
    in a 0700 folder; a link the job user put at a token's name is replaced, and a link
    in place of the folder is refused."""
    file, folder = targets
    as_job_user("""
import os, sys
folder, file = sys.argv[1:3]
os.mkdir(os.path.join(folder, "tokens.d"), 0o700)
for name in sys.argv[3:]:
    os.symlink(file, os.path.join(folder, "tokens.d", name))
""", str(store.path), str(file), *_token_names(pool))
    copied = hand_over_tokens(store, _token_directory(pool))
    assert copied == str(store.path / "tokens.d")
    names = _token_names(pool)
    assert names and sorted(os.listdir(copied)) == names
    for name in names:
        st = (Path(copied) / name).lstat()
        assert st.st_mode & 0o777 == 0o600 and not (Path(copied) / name).is_symlink()
        assert (Path(copied) / name).read_bytes() == \
            (Path(_token_directory(pool)) / name).read_bytes()
    _untouched(file, folder)
    shutil.rmtree(copied)
    as_job_user("import os, sys; os.symlink(sys.argv[2], os.path.join(sys.argv[1], "
                "'tokens.d'))", str(store.path), str(folder))
    with pytest.raises(UnsafeEntry, match=r"tokens\.d is a link"):
        hand_over_tokens(store, _token_directory(pool))
    _untouched(file, folder)


def _token_names(config: str) -> list[str]:
    return sorted(n for n in os.listdir(_token_directory(config)) if not n.startswith("."))


def _token_directory(config: str) -> str:
    from htcml_jupyter.backends.bindings import call_with_pool

    found = call_with_pool(config, lambda h: h.param.get("SEC_TOKEN_DIRECTORY"))
    assert found and os.path.isdir(found), found
    return str(found)


def test_records_and_folders_of_a_workflow_are_private(map_root: Path) -> None:
    """What root keeps as its own when it gives a folder to the job user: its record,
    the function, the inputs, the policy; and no record it wrote is a link."""
    made = MapStore.create(map_root, "w", {"name": "w"})
    dump_items([(0, 1)], made.input_file(0))
    made.write_file("function.pkl", b"f")
    made.chown(POOL_UID)
    owners = {rel: (made.path / rel).stat().st_uid
              for rel in ("map.json", "function.pkl", "inputs/task-0.pkl", "inputs", ".")}
    assert owners == {"map.json": 0, "function.pkl": 0, "inputs/task-0.pkl": 0,
                      "inputs": POOL_UID, ".": POOL_UID}
    assert json.loads((made.path / "map.json").read_text())["name"] == "w"
