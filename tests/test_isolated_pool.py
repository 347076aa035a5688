"""The project's isolated pool: execute nodes that share no files with this machine.

Jobs there see neither ``/home``, nor this interpreter, nor the map folder; what they
need comes by file transfer, as on CHTC or the OSPool.  A map that relies on the
notebook's interpreter fails there with a clear message.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter import devpool
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.backends.pools import backend_from_meta, isolated_backend, resolve_backend
from htcml_jupyter.devpool import PoolState
from htcml_jupyter.devpool.common import is_mounted, run
from tests.helpers import square, wait_until

pytestmark = [
    pytest.mark.pool,
    pytest.mark.isolated,
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolated pool needs root"),
]

PROBE = """\
import json, os, sys
home = sorted(os.listdir("/home")) if os.path.isdir("/home") else []
with open("paths.json") as f:
    paths = json.load(f)
report = {
    "version": "{}.{}.{}".format(*sys.version_info[:3]),
    "executable": sys.executable,
    "home": home,
    "seen": {p: os.path.exists(p) for p in paths},
    "shm_writable": os.access("/dev/shm", os.W_OK),
}
with open("probe.json", "w") as f:
    json.dump(report, f)
"""


@pytest.fixture(scope="module")
def home_marker() -> Iterator[Path]:
    """A folder in this machine's /home, which no job of the isolated pool may see."""
    marker = Path(tempfile.mkdtemp(prefix="htcml-isolated-marker-", dir="/home"))
    yield marker
    shutil.rmtree(marker, ignore_errors=True)


def _folder(root: Path, name: str, mode: int = 0o755) -> Path:
    path = root / name
    path.mkdir()
    path.chmod(mode)
    return path


def _submit_probe(state: PoolState, job_dir: Path, paths: list[str]) -> tuple[int, float]:
    (job_dir / "probe.py").write_text(PROBE)
    (job_dir / "paths.json").write_text(json.dumps(paths))
    with pool_config(state.client_config) as htcondor2:
        sub = htcondor2.Submit({
            "executable": "/usr/bin/python3",
            "transfer_executable": "false",
            "arguments": "probe.py",
            "initialdir": str(job_dir),
            "transfer_input_files": "probe.py, paths.json",
            "should_transfer_files": "YES",
            "when_to_transfer_output": "ON_EXIT",
            "transfer_output_files": "probe.json",
            "output": "probe.out",
            "error": "probe.err",
            "log": "probe.log",
            "job_max_vacate_time": "3",
            "request_memory": "100MB",
        })
        submitted = time.time()
        cluster = int(htcondor2.Schedd().submit(sub).cluster())
    return cluster, submitted


SCRATCH_PROBE = """\
import json, os, sys
name = sys.argv[1]
places = ["/tmp", "/var/tmp", "/dev/shm"]
before = {p: os.path.exists(os.path.join(p, name)) for p in places}
for p in places:
    with open(os.path.join(p, name), "w") as f:
        f.write("left by an earlier job")
machine = ""
with open(os.environ["_CONDOR_MACHINE_AD"]) as f:
    for line in f:
        if line.startswith("Name = "):
            machine = line.split("@")[-2]
with open("scratch.json", "w") as f:
    json.dump({"before": before, "machine": machine,
               "after": {p: os.path.exists(os.path.join(p, name)) for p in places}}, f)
"""


def _run_scratch_probe(state: PoolState, job_dir: Path, name: str) -> dict[str, Any]:
    """Run :data:`SCRATCH_PROBE` as one job and return what it found."""
    job_dir.mkdir(mode=0o777)
    job_dir.chmod(0o777)
    (job_dir / "scratch.py").write_text(SCRATCH_PROBE)
    with pool_config(state.client_config) as htcondor2:
        sub = htcondor2.Submit({
            "executable": "/usr/bin/python3", "transfer_executable": "false",
            "arguments": f"scratch.py {name}", "initialdir": str(job_dir),
            "transfer_input_files": "scratch.py", "should_transfer_files": "YES",
            "when_to_transfer_output": "ON_EXIT", "transfer_output_files": "scratch.json",
            "output": "out", "error": "err", "log": "log", "job_max_vacate_time": "3",
            "request_memory": "100MB",
        })
        cluster = int(htcondor2.Schedd().submit(sub).cluster())

    def settled() -> Any:
        ad = _job_ad(state, cluster)
        return ad if ad is not None and ad.get("JobStatus") in (4, 5) else None

    ad = wait_until(settled, timeout=120, message="the scratch probe did not finish")
    assert ad["JobStatus"] == 4, f"scratch probe held: {ad.get('HoldReason')}"
    result: dict[str, Any] = json.loads((job_dir / "scratch.json").read_text())
    return result


def test_every_job_has_its_own_tmp_var_tmp_and_dev_shm(isolated_pool: PoolState,
                                                       iso_root: Path) -> None:
    """HTCondor's defaults (MOUNT_UNDER_SCRATCH, a private /dev/shm): what one job
    leaves in /tmp, /var/tmp or /dev/shm is gone for the next job on that machine."""
    name = f"htcml-left-{os.getpid()}-{time.time_ns()}"
    first = _run_scratch_probe(isolated_pool, iso_root / "scratch-1", name)
    assert first["after"] == {"/tmp": True, "/var/tmp": True, "/dev/shm": True}, first
    second = _run_scratch_probe(isolated_pool, iso_root / "scratch-2", name)
    assert second["machine"] == first["machine"] != "", (first, second)
    assert second["before"] == {"/tmp": False, "/var/tmp": False, "/dev/shm": False}, \
        f"a later job on {second['machine']} saw an earlier job's files: {second}"
    for root in isolated_pool.roots.values():  # nor did it go to the machine's own /tmp
        assert not (Path(root) / "tmp" / name).exists()
        assert not (Path(root) / "var/tmp" / name).exists()


def test_execute_roots_keep_htcondor_defaults(isolated_pool: PoolState) -> None:
    for name, root in isolated_pool.roots.items():
        if name == "submit":
            continue
        value = run(["chroot", root, "condor_config_val", "MOUNT_UNDER_SCRATCH"])
        assert value.strip().strip('"') == "/tmp,/var/tmp", (name, value)
        assert is_mounted(root), f"{root} is not a mount point of its own"


def _job_ad(state: PoolState, cluster: int) -> Any:
    with pool_config(state.client_config) as htcondor2:
        schedd = htcondor2.Schedd()
        ads = schedd.query(constraint=f"ClusterId == {cluster}",
                           projection=["JobStatus", "HoldReason"])
        if not ads:
            ads = list(schedd.history(constraint=f"ClusterId == {cluster}",
                                      projection=["JobStatus", "HoldReason", "ExitCode"],
                                      match=1))
    return ads[0] if ads else None


def test_plain_job_sees_nothing_of_the_notebook(isolated_pool: PoolState, iso_root: Path,
                                                home_marker: Path) -> None:
    job_dir = _folder(iso_root, "probe", 0o777)
    map_folder = _folder(iso_root, "a-map-folder")
    notebook_python = sys.executable
    paths = [notebook_python, os.path.realpath(notebook_python), sys.base_prefix,
             str(map_folder), str(job_dir), str(home_marker)]
    cluster, _ = _submit_probe(isolated_pool, job_dir, paths)

    def settled() -> Any:
        ad = _job_ad(isolated_pool, cluster)
        return ad if ad is not None and ad.get("JobStatus") in (4, 5) else None

    ad = wait_until(settled, timeout=120, message="the probe job did not finish")
    assert ad["JobStatus"] == 4, f"probe job held: {ad.get('HoldReason')}"
    report = json.loads((job_dir / "probe.json").read_text())  # came back by transfer
    assert report["version"].startswith("3.13."), report
    assert report["executable"] == "/usr/bin/python3"
    assert home_marker.name not in report["home"], report["home"]
    assert not any(report["seen"].values()), report["seen"]
    assert report["shm_writable"], "/dev/shm is not writable for jobs"


def test_execute_side_has_its_own_filesystem_domain(isolated_pool: PoolState) -> None:
    with pool_config(isolated_pool.client_config) as htcondor2:
        collector = htcondor2.Collector()
        slots = collector.query(htcondor2.AdType.Startd,
                                projection=["Name", "FileSystemDomain"])
        schedds = collector.query(htcondor2.AdType.Schedd,
                                  projection=["Name", "FileSystemDomain"])
    assert slots and schedds
    exec_domains = {ad["FileSystemDomain"] for ad in slots}
    submit_domains = {ad.get("FileSystemDomain") for ad in schedds}
    assert exec_domains == {isolated_pool.exec_filesystem_domain}, exec_domains
    assert not exec_domains & submit_domains, (exec_domains, submit_domains)
    names = {ad["Name"] for ad in slots}
    assert all("@exec" in n for n in names), names


def test_isolated_pool_name_resolves_and_rebuilds(isolated_pool: PoolState,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    backend = isolated_backend()
    assert backend is not None
    assert backend.description == "the project's isolated pool"
    assert backend.config == isolated_pool.client_config
    assert backend.job_uid == isolated_pool.job_uid
    monkeypatch.setenv("HTCML_POOL", "isolated")
    chosen = resolve_backend()
    assert getattr(chosen, "config", None) == isolated_pool.client_config
    rebuilt = backend_from_meta(backend.describe())
    assert rebuilt.describe() == backend.describe()
    shared = devpool.running_state()
    if shared is not None:
        assert shared.client_config != isolated_pool.client_config


def test_map_with_debian_python_fails_with_version_mismatch(isolated_pool: PoolState,
                                                             iso_root: Path) -> None:
    root = _folder(iso_root, "maps-python")
    m = htc.map(square, [1, 2], pool="isolated", python="/usr/bin/python3", root=root)
    assert m.backend.description == "the project's isolated pool"
    assert m.wait(timeout=120), m.status()
    assert m.holds == {}, m.holds
    errors = m.errors
    assert sorted(errors) == [0, 1], m.status()
    for err in errors.values():
        assert "VersionMismatch" in err.short_type or "VersionMismatch" in str(err), err
        mine = "{}.{}".format(*sys.version_info[:2])
        assert f"Python {mine}" in err.message and "Python 3.13" in err.message, err.message


def test_map_with_default_settings_cannot_find_the_interpreter(isolated_pool: PoolState,
                                                                iso_root: Path) -> None:
    root = _folder(iso_root, "maps-default")
    # The notebook's interpreter by its path: what every map did before environments
    # were packed, and what environment="shared" still does.
    m = htc.map(square, [1, 2], pool="isolated", root=root, environment="shared")
    assert m.wait(timeout=120), m.status()
    assert not [r for r in m.results(errors="return") if not isinstance(r, Exception)]
    problems = list(m.holds.values()) + [e.message for e in m.errors.values()]
    assert len(problems) == 2, m.status()
    for text in problems:
        assert sys.executable in text or os.path.realpath(sys.executable) in text, text
        assert "No such file" in text or "not found" in text.lower(), text
    m.cancel()
