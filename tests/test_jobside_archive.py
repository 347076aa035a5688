"""The job side as one file (``jobside.pyz``): what it holds, that it runs a job in an
empty folder, that its bytecode is used, and that a map's folder keeps the one it was
made with.  No pool needed."""

from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from htcml_jupyter.engine.payload import dump_function, dump_items
from htcml_jupyter.engine.store import MapStore
from htcml_jupyter.jobside import torchrun_launch, wire
from htcml_jupyter.jobside.archive import ARCHIVE_NAME, MODULES, archive_bytes
from htcml_jupyter.multinode.submit import launcher_files


def double(x: int) -> int:
    return 2 * x


def fails(x: int) -> int:
    raise ValueError(f"no good: {x}")


def _box(tmp_path: Path, fn: object, data: bytes | None = None) -> Path:
    box = tmp_path / "box"
    box.mkdir()
    (box / ARCHIVE_NAME).write_bytes(archive_bytes() if data is None else data)
    dump_function(fn, {}, box / "function.pkl")  # type: ignore[arg-type]
    dump_items([(0, 3), (1, 4)], box / "task-0.pkl")
    return box


def _run(box: Path) -> subprocess.CompletedProcess[str]:
    # as a job: the folder holds nothing else, no PYTHONPATH, no byte code written
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, ARCHIVE_NAME, "function.pkl", "task-0.pkl",
                           "outcome.pkl"], cwd=box, env=env, capture_output=True, text=True,
                          timeout=60)


def _records(box: Path) -> list[dict[str, object]]:
    return wire.decode_outcome((box / "outcome.pkl").read_bytes())[1]


def test_the_archive_holds_the_job_side_chirp_and_cloudpickle_with_byte_code() -> None:
    with zipfile.ZipFile(__import__("io").BytesIO(archive_bytes())) as archive:
        names = set(archive.namelist())
        for name in ("__main__", *MODULES, "htchirp", "cloudpickle/__init__"):
            assert f"{name}.py" in names and f"{name}.pyc" in names, name
        pyc = archive.read("runner.pyc")
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(pyc[4:8], "little") == 0b01  # hash-based, source not checked
    assert archive_bytes() == archive_bytes()  # the same bytes each time


def test_the_archive_runs_a_job_and_makes_what_htcondor_sends_back(tmp_path: Path) -> None:
    box = _box(tmp_path, double)
    proc = _run(box)
    assert proc.returncode == wire.EXIT_OK, proc.stderr
    assert [pickle.loads(r["value"]) for r in _records(box)] == [6, 8]  # type: ignore[arg-type]
    assert (box / wire.CHECKPOINT_DIR).is_dir() and (box / wire.OUTPUTS_DIR).is_dir()
    assert not list(box.glob("**/__pycache__"))


def test_a_failing_item_traceback_starts_in_the_users_code(tmp_path: Path) -> None:
    box = _box(tmp_path, fails)
    proc = _run(box)
    assert proc.returncode == wire.EXIT_ITEM_FAILED
    error = _records(box)[0]["error"]
    assert isinstance(error, dict) and "no good: 3" in error["message"]
    text = str(error["traceback"])
    assert "in fails" in text
    assert "runner.py" not in text and "calls.py" not in text, text


def _rewritten(replace: dict[str, bytes]) -> bytes:
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive_bytes())) as src, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, replace.get(info.filename, src.read(info.filename)))
    return out.getvalue()


def test_the_job_runs_the_byte_code_without_compiling(tmp_path: Path) -> None:
    # the sources are broken: only the byte code can run the job
    broken = {f"{m}.py": b"raise SystemExit(99)\n" for m in ("__main__", *MODULES)}
    box = _box(tmp_path, double, _rewritten(broken))
    proc = _run(box)
    assert proc.returncode == wire.EXIT_OK, proc.stderr


def test_another_python_falls_back_to_the_sources(tmp_path: Path) -> None:
    import io

    with zipfile.ZipFile(io.BytesIO(archive_bytes())) as archive:
        other = {name: b"\x00\x00\r\n" + archive.read(name)[4:]  # another magic number
                 for name in archive.namelist() if name.endswith(".pyc")}
    box = _box(tmp_path, double, _rewritten(other))
    proc = _run(box)
    assert proc.returncode == wire.EXIT_OK, proc.stderr
    assert [pickle.loads(r["value"]) for r in _records(box)] == [6, 8]  # type: ignore[arg-type]


def test_a_map_keeps_the_archive_it_was_made_with(tmp_path: Path) -> None:
    store = MapStore.create(tmp_path, "m", {"name": "m"})
    store.make_seed_files()
    path = store.job_side_archive
    assert path.read_bytes() == archive_bytes()
    path.write_bytes(b"made by an earlier version")
    store.make_seed_files()  # a retry: the map's own job side stays
    assert path.read_bytes() == b"made by an earlier version"


def test_what_htcondor_sends_back_exists_even_when_the_runner_cannot_load(
        tmp_path: Path) -> None:
    # HTCondor holds a job whose transfer_output_files are missing (on exit and on an
    # eviction): the archive's entry point makes them before it loads the runner
    broken = {"runner.py": b"raise SystemExit(7)\n", "runner.pyc": b"not byte code"}
    box = _box(tmp_path, double, _rewritten(broken))
    proc = _run(box)
    assert proc.returncode == 7
    assert (box / "outcome.pkl").exists()
    assert (box / wire.CHECKPOINT_DIR).is_dir() and (box / wire.OUTPUTS_DIR).is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives a map folder away")
def test_root_keeps_the_archive_when_it_gives_the_folder_to_the_job_user(
        tmp_path: Path) -> None:
    store = MapStore.create(tmp_path, "m", {"name": "m"})
    store.make_seed_files()
    store.chown(65534)  # nobody: the job user may replace files, not root's archive
    assert store.job_side_archive.stat().st_uid == 0
    assert store.path.stat().st_uid == 65534


def answer() -> int:
    return 42


def test_a_module_shipped_beside_the_archive_belongs_to_the_job_side(tmp_path: Path) -> None:
    """Where htcml_jupyter is not installed (a packed environment, an image), a pickled
    function may name a job-side module that travels beside the archive: a torchrun
    run's ``RankCall`` lives in ``torchrun_launch.py``."""
    box = _box(tmp_path, torchrun_launch.RankCall(answer))
    for launcher_file in launcher_files():  # what a run's nodes get beside the archive
        shutil.copy(launcher_file, box)
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-S", ARCHIVE_NAME, "function.pkl", "task-0.pkl",
                           "outcome.pkl"], cwd=box, env=env, capture_output=True, text=True,
                          timeout=60)  # -S: no site-packages, so no installed htcml_jupyter
    assert proc.returncode == wire.EXIT_OK, proc.stderr
    assert [pickle.loads(r["value"]) for r in _records(box)] == [42, 42]  # type: ignore[arg-type]
