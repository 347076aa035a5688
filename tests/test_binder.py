"""The Binder set-up (binder/), run the way repo2docker and mybinder.org would run it,
with all six tutorials.

Binder builds an Ubuntu 24.04 image: apt.txt as root, a notebook environment with the
Python runtime.txt names, then requirements.txt and postBuild as jovyan into it, and at
each start runs binder/start as jovyan (no root) before the notebook server.  Here
(tests/binder_root.py): a Debian 13 root with ``condor`` 23.9 from apt.txt (Ubuntu 24.04
has 23.4), jovyan, and a fresh copy of the base environment for every run.  The
repository's files (tracked and not ignored) are copied in, requirements.txt and
postBuild run as jovyan, then binder/start runs as jovyan with a command that executes
the six notebooks one after another with nbclient, against the personal pool it
started.  Every notebook must run without an error output and without a stderr stream
from a map that succeeded; the memory of everything in the container is sampled all the
while (Binder's free tier allows 2 GB).

One difference from Binder, forced by this machine: it cannot reach PyPI's torch CPU
index (``--extra-index-url https://download.pytorch.org/whl/cpu`` in requirements.txt),
so that line is replaced by ``--find-links`` to the same pinned build,
``torch==2.13.0+cpu`` for CPython 3.11, which this machine's package registry serves
(/opt/wheels).  Everything else comes from the files in binder/ as they are.

Needs root (debootstrap, chroot, mounts) and the package registries; the first run
builds the root (about a minute here), every run installs requirements.txt anew (a few
minutes) and runs the notebooks (several minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests import binder_root as box
from tests.test_notebooks import map_stderr

ALL_TUTORIALS = ["01-quickstart.ipynb", "02-hyperparameter-sweep.ipynb",
                 "03-checkpointing.ipynb", "04-embeddings.ipynb", "05-multinode.ipynb",
                 "06-real-pools.ipynb", "07-adaptive-search.ipynb"]
#: HTCML_BINDER_TUTORIALS=02-hyperparameter-sweep.ipynb,... runs only those (while
#: working on one); the suite runs them all.
TUTORIALS = [n for n in os.environ.get("HTCML_BINDER_TUTORIALS", "").split(",") if n] \
    or ALL_TUTORIALS
OUT = "/tmp/tutorials"  # inside the root: executed notebooks, times, the one running
TORCH_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
WHEELS = Path(os.environ.get("HTCML_BINDER_WHEELS", "/opt/wheels"))
TORCH_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
BINDER_MEMORY_MB = 2048

pytestmark = [
    pytest.mark.binder,
    pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0,
                       reason="builds a Debian root with debootstrap: needs root on Linux"),
]

#: Runs inside the container (as the command binder/start is given): each notebook in
#: turn, in the notebooks folder, as a notebook server would; saves what it got.
RUNNER = """\
import json, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient

out, names = Path(sys.argv[1]), sys.argv[2:]
times = {}
for name in names:
    (out / "current").write_text(name)
    nb = nbformat.read(f"notebooks/{name}", as_version=4)
    started, error = time.time(), None
    try:
        NotebookClient(nb, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": "notebooks"}}).execute()
    except Exception as exc:  # saved with the notebook; the test reports it
        error = f"{type(exc).__name__}: {exc}"[-3000:]
    times[name] = {"seconds": round(time.time() - started, 1), "error": error}
    nbformat.write(nb, out / name)
    (out / "times.json").write_text(json.dumps(times))
(out / "current").write_text("")
"""


def _requirements_here() -> str:
    """binder/requirements.txt with PyTorch's CPU index replaced by the same pinned CPU
    build from this machine's registry (see the module docstring)."""
    text = (box.REPO / "binder/requirements.txt").read_text()
    assert TORCH_INDEX in text and "torch==2.13.0+cpu" in text, text
    return text.replace(TORCH_INDEX, "--find-links /srv/wheels")


class MemorySampler:
    """The container's memory (PSS of every process in the root), sampled twice a
    second and kept as the peak per notebook."""

    def __init__(self) -> None:
        self.peaks: dict[str, tuple[int, dict[str, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        current = box.ROOT / OUT.lstrip("/") / "current"
        while not self._stop.wait(0.5):
            try:
                name = current.read_text().strip()
            except OSError:
                continue
            if not name:
                continue
            used = box.memory_in(box.ROOT)
            total = sum(used.values())
            if total > self.peaks.get(name, (0, {}))[0]:
                self.peaks[name] = (total, used)


def _text(output: dict[str, Any]) -> str:
    text = output.get("text") or output.get("data", {}).get("text/plain") or ""
    return "".join(text) if isinstance(text, list) else str(text)


def _all_text(nb: dict[str, Any]) -> str:
    return "\n".join(_text(o) for c in nb["cells"] if c["cell_type"] == "code"
                     for o in c.get("outputs", []))


def _du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_symlink()
               and p.is_file())


def test_binder_runs_every_tutorial_on_a_personal_pool() -> None:
    if not (WHEELS / TORCH_WHEEL).exists():
        pytest.skip(f"{WHEELS / TORCH_WHEEL} is not on this machine")
    timings: dict[str, float] = {}
    started = time.time()
    box.ensure_root()
    timings["root"] = time.time() - started
    box.refresh_host_files()
    out = box.ROOT / OUT.lstrip("/")
    with box.mounted(box.ROOT):
        step = time.time()
        box.fresh_environment()
        box.copy_repository()
        wheels = box.ROOT / "srv/wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        box.sh(["mount", "--bind", "-o", "ro", str(WHEELS), str(wheels)])
        (box.ROOT / "tmp/requirements.txt").write_text(_requirements_here())
        # repo2docker: requirements.txt, then `chmod +x binder/postBuild && ./binder/postBuild`.
        box.as_jovyan("python -m pip install --no-cache-dir -q -r /tmp/requirements.txt",
                      timeout=1800)
        box.as_jovyan("chmod +x binder/postBuild && ./binder/postBuild", timeout=600)
        timings["requirements+postBuild"] = time.time() - step
        env_mb = _du(box.ROOT / box.ENV_PREFIX.lstrip("/")) / 1e6
        base_mb = _du(box.ROOT / box.BASE_ENV.lstrip("/")) / 1e6
        versions = box.as_jovyan("python -c 'import sys, torch; print(sys.version.split()[0],"
                                 " torch.__version__)'").stdout.split()
        # At start: binder/start, then the command it is given (here, run the notebooks).
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        os.chown(out, box.NB_UID, box.NB_UID)
        (out / "run.py").write_text(RUNNER)
        step = time.time()
        with MemorySampler() as memory:
            run = box.as_jovyan(f"./binder/start python {OUT}/run.py {OUT} "
                                + " ".join(TUTORIALS), timeout=3600, check=False)
        timings["start+notebooks"] = time.time() - step
        users = set()
        for pid in box.processes_in(box.ROOT):
            try:
                users.add((Path(f"/proc/{pid}/comm").read_text().strip(),
                           os.stat(f"/proc/{pid}").st_uid))
            except OSError:
                continue
        box.as_jovyan("htcml pool down", timeout=120, check=False)
        times = json.loads((out / "times.json").read_text()) if (
            out / "times.json").exists() else {}
        executed = {name: json.loads((out / name).read_text()) for name in TUTORIALS
                    if (out / name).exists()}
    timings["total"] = time.time() - started
    assert not box.mounts_under(box.ROOT), box.mounts_under(box.ROOT)

    box.say(f"environment: Python {' '.join(versions)}; {env_mb:.0f} MB "
            f"({env_mb - base_mb:.0f} MB over the base environment's {base_mb:.0f} MB)")
    box.say("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    for name in TUTORIALS:
        peak, used = memory.peaks.get(name, (0, {}))
        top = sorted(used.items(), key=lambda kv: -kv[1])[:5]
        box.say(f"{name}: {times.get(name, {}).get('seconds', '?')} s, container peak "
                f"{peak / 1024:.0f} MB (" + ", ".join(f"{c} {v / 1024:.0f}" for c, v in top)
                + ")")
    assert run.returncode == 0 and len(executed) == len(TUTORIALS), (
        f"binder/start + notebooks failed ({run.returncode}):\n"
        f"{run.stdout[-4000:]}\n{run.stderr[-6000:]}")
    assert versions[0].startswith(box.runtime_python() + "."), versions
    assert versions[1] == "2.13.0+cpu", versions

    # The pool's daemons ran as jovyan (so did its jobs), not as root or condor.
    daemons = {(comm, uid) for comm, uid in users if comm.startswith("condor_")}
    assert any(comm == "condor_master" for comm, _ in daemons), users
    assert {uid for _, uid in daemons} == {box.NB_UID}, daemons

    failures = {name: t["error"] for name, t in times.items() if t["error"]}
    assert not failures, failures
    for name, nb in executed.items():
        errors = [o for c in nb["cells"] for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, (name, errors)
        assert not map_stderr(name, nb), (name, map_stderr(name, nb))
        peak_mb = memory.peaks.get(name, (0, {}))[0] / 1024
        assert 0 < peak_mb < BINDER_MEMORY_MB, f"{name}: the container peaked at {peak_mb:.0f} MB"

    # What each tutorial shows when it works (each also asserts its own results).
    shows = {
        "01-quickstart.ipynb": ["CPUs", "project's pool", "[0.5, 0.8, 0.3]", "slow_square"],
        "02-hyperparameter-sweep.ipynb": ["aborted early", "test accuracy of the best model"],
        "03-checkpointing.ipynb": ["evictions: 1", "identical to an uninterrupted run: True"],
        "04-embeddings.ipynb": ["nearest to itself: True"],
        "05-multinode.ipynb": ["parameters equal on every rank: True", "failed on rank 1"],
        "06-real-pools.ipynb": ["VersionMismatch"],
        "07-adaptive-search.ipynb": ["trials: 16", "GridSearchCV best:"],
    }
    for name, nb in executed.items():
        text = _all_text(nb)
        missing = [s for s in shows[name] if s not in text]
        assert not missing, (name, missing, text[-3000:])
