"""The Binder set-up (binder/), run the way repo2docker and mybinder.org would run it.

Binder builds an Ubuntu 24.04 image: apt.txt as root, then requirements.txt and
postBuild as jovyan into the notebook environment, and at each start runs binder/start
as jovyan (no root) before the notebook server.  The closest thing here: a Debian 13
root (which has `condor` 23.9, as Ubuntu 24.04 has 23.4) made with debootstrap and kept
between runs under /var/lib/htcml/binder-root, with an ordinary user jovyan (uid 1000).
Each run copies in the repository's files (tracked and not ignored), repeats the
requirements.txt and postBuild steps as jovyan, then runs binder/start as jovyan with a
command that executes notebooks/01-quickstart.ipynb, and checks the executed notebook.

Needs root (debootstrap, chroot, mounts) and the package registries; the first run
builds the root (a few minutes), later runs take well under two minutes.  Everything
mounted is unmounted and every process left inside the root is ended, also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("HTCML_BINDER_ROOT", "/var/lib/htcml/binder-root"))
SUITE = "trixie"
MARKER = ".htcml-binder-ready"
NB_USER, NB_UID = "jovyan", 1000  # as on mybinder.org
HOME = f"/home/{NB_USER}"  # repo2docker's REPO_DIR: the repository is copied here
ENV_PREFIX = "/srv/notebook-env"  # plays ${NB_PYTHON_PREFIX}, owned by jovyan as there
# What the Binder image has before the repository's own files: Python with venv and pip,
# TLS roots, and repo2docker's base environment (Jupyter, nbconvert, a kernel).
BASE_APT = ["python3", "python3-venv", "ca-certificates"]
BASE_PIP = ["jupyterlab", "notebook", "nbconvert", "ipykernel"]
HOST_CA = "/etc/ssl/certs/htcml-host-ca.crt"  # this machine's CA bundle (its egress proxy)
NOTEBOOK = "notebooks/01-quickstart.ipynb"
EXECUTED = "/tmp/01-quickstart.executed.ipynb"

pytestmark = [
    pytest.mark.binder,
    pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0,
                       reason="builds a Debian root with debootstrap: needs root on Linux"),
]


def _say(msg: str) -> None:
    print(f"[binder test] {msg}", flush=True)


def _sh(cmd: list[str], *, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)[:300]} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _apt_txt() -> list[str]:
    """The packages binder/apt.txt names (repo2docker drops comments and blank lines)."""
    lines = (REPO / "binder/apt.txt").read_text().splitlines()
    return [p for p in (line.partition("#")[0].strip() for line in lines) if p]


def _as_jovyan(script: str, *, timeout: float = 600,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a bash script as jovyan inside the root, with an environment like Binder's."""
    env = {
        "HOME": HOME, "USER": NB_USER, "LOGNAME": NB_USER, "SHELL": "/bin/bash",
        "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "PATH": f"{ENV_PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        # Not on Binder: this machine reaches PyPI through a proxy with its own CA.
        "PIP_CERT": HOST_CA, "SSL_CERT_FILE": HOST_CA, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_DEFAULT_TIMEOUT": "120",
    }
    cmd = ["chroot", f"--userspec={NB_UID}:{NB_UID}", str(ROOT), "/usr/bin/env", "-i",
           *[f"{k}={v}" for k, v in env.items()], "/bin/bash", "-c", f"cd {HOME} && {script}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"as jovyan: {script[:200]} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


# --------------------------------------------------------------------------- mounts


def _mounts_under(root: Path) -> list[str]:
    prefix = os.path.realpath(root)
    with open("/proc/self/mounts") as f:
        targets = [line.split()[1] for line in f]
    return [t for t in targets if t == prefix or t.startswith(prefix + "/")]


def _processes_in(root: Path) -> list[int]:
    target = os.path.realpath(root)
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root") == target:
                pids.append(int(pid))
        except OSError:
            continue
    return pids


def _kill_all_in(root: Path) -> None:
    for _ in range(20):
        pids = _processes_in(root)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"processes still running inside {root}: {_processes_in(root)}")


def _unmount_all(root: Path) -> None:
    # Deepest first; a plain umount, then a lazy one for anything still busy.
    for target in sorted(set(_mounts_under(root)), key=len, reverse=True):
        for _ in range(5):  # a path may be mounted more than once
            if target not in _mounts_under(root):
                break
            if subprocess.run(["umount", target], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", target], capture_output=True)


@contextmanager
def _mounted(root: Path) -> Iterator[None]:
    """proc, /dev and a real /dev/shm inside the root; always undone, processes first."""
    _kill_all_in(root)
    _unmount_all(root)  # left over from a run that was killed
    try:
        _sh(["mount", "-t", "proc", "proc", str(root / "proc")])
        _sh(["mount", "--bind", "/dev", str(root / "dev")])
        # A plain bind gives a root-only /dev/shm: jobs that make locks would fail.
        _sh(["mount", "-t", "tmpfs", "-o", "mode=1777,size=1g", "tmpfs",
             str(root / "dev/shm")])
        yield
    finally:
        _kill_all_in(root)
        _unmount_all(root)


# --------------------------------------------------------------------------- the root


def _wanted() -> dict[str, Any]:
    return {"suite": SUITE, "apt": sorted({*BASE_APT, *_apt_txt()}), "pip": BASE_PIP,
            "user": [NB_USER, NB_UID], "env": ENV_PREFIX}


def _ensure_root() -> None:
    """Build (once) the Debian root with apt.txt applied, jovyan, and the base env."""
    marker = ROOT / MARKER
    wanted = _wanted()
    try:
        if json.loads(marker.read_text()) == wanted:
            _say(f"reusing the root in {ROOT}")
            return
    except (OSError, ValueError):
        pass
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not (ROOT / "usr/bin").exists():
        if shutil.which("debootstrap") is None:
            _say("installing debootstrap")
            _sh(["apt-get", "update", "-qq"], env=apt_env)
            _sh(["apt-get", "install", "-y", "-qq", "debootstrap"], env=apt_env)
        partial = ROOT.with_name(ROOT.name + ".partial")
        _kill_all_in(partial)
        _unmount_all(partial)
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        _sh(["debootstrap", "--variant=minbase", SUITE, str(partial)], timeout=1200)
        partial.rename(ROOT)
        _say(f"debootstrap {SUITE}: {time.time() - started:.0f} s")
    marker.unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", ROOT / "etc/resolv.conf")
    with _mounted(ROOT):
        started = time.time()
        chroot = ["chroot", str(ROOT)]
        _sh([*chroot, "apt-get", "update", "-qq"], env=apt_env)
        # As repo2docker applies apt.txt: no recommended packages.
        _sh([*chroot, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
             *wanted["apt"]], env=apt_env, timeout=1200)
        _sh([*chroot, "apt-get", "clean"])
        _say(f"apt-get install {' '.join(wanted['apt'])}: {time.time() - started:.0f} s")
        if subprocess.run([*chroot, "id", "-u", NB_USER], capture_output=True).returncode:
            _sh([*chroot, "useradd", "--uid", str(NB_UID), "--user-group", "--create-home",
                 "--shell", "/bin/bash", NB_USER])
        (ROOT / ENV_PREFIX.lstrip("/")).mkdir(parents=True, exist_ok=True)
        _sh([*chroot, "chown", f"{NB_UID}:{NB_UID}", ENV_PREFIX])
        _refresh_host_files()
        started = time.time()
        _as_jovyan(f"test -x {ENV_PREFIX}/bin/python || python3 -m venv {ENV_PREFIX}")
        _as_jovyan(f"python -m pip install -q {' '.join(BASE_PIP)}", timeout=1200)
        _say(f"base environment ({' '.join(BASE_PIP)}): {time.time() - started:.0f} s")
    marker.write_text(json.dumps(wanted) + "\n")


def _refresh_host_files() -> None:
    """What a container gets from its host: name service, the host name, TLS roots."""
    shutil.copy("/etc/resolv.conf", ROOT / "etc/resolv.conf")
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", ROOT / HOST_CA.lstrip("/"))
    hosts = ROOT / "etc/hosts"
    text = hosts.read_text() if hosts.exists() else "127.0.0.1 localhost\n"
    name = socket.gethostname()
    if name not in text.split():
        hosts.write_text(text + f"127.0.1.1 {name}\n")


def _repository_files() -> list[str]:
    """The files a clone would have, plus files not yet committed (not the ignored ones)."""
    proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                           "--exclude-standard"], cwd=REPO, capture_output=True)
    if proc.returncode == 0:
        names = [n for n in proc.stdout.decode().split("\0") if n]
    else:  # not a git checkout: everything but the usual local folders
        skip = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(REPO).parts)]
    return [n for n in names if os.path.lexists(REPO / n)]


def _copy_repository() -> None:
    home = ROOT / HOME.lstrip("/")
    shutil.rmtree(home, ignore_errors=True)  # a fresh container: no ~/.htcml from before
    home.mkdir(parents=True)
    for name in _repository_files():
        src, dst = REPO / name, home / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    _sh(["chown", "-R", f"{NB_UID}:{NB_UID}", str(home)])
    home.chmod(0o755)


# --------------------------------------------------------------------------- the test


def _outputs(nb: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("".join(c["source"]), o) for c in nb["cells"] if c["cell_type"] == "code"
            for o in c.get("outputs", [])]


def _text(output: dict[str, Any]) -> str:
    text = output.get("text") or output.get("data", {}).get("text/plain") or ""
    return "".join(text) if isinstance(text, list) else str(text)


def test_binder_quickstart_runs_on_a_personal_pool() -> None:
    timings: dict[str, float] = {}
    started = time.time()
    _ensure_root()
    timings["root"] = time.time() - started
    _refresh_host_files()
    with _mounted(ROOT):
        step = time.time()
        _copy_repository()
        # repo2docker: requirements.txt, then `chmod +x binder/postBuild && ./binder/postBuild`.
        if (REPO / "binder/requirements.txt").exists():
            _as_jovyan("python -m pip install --no-cache-dir -q -r binder/requirements.txt")
        if (REPO / "binder/postBuild").exists():
            _as_jovyan("chmod +x binder/postBuild && ./binder/postBuild")
        timings["requirements+postBuild"] = time.time() - step
        step = time.time()
        # At start: binder/start, then the command it is given (here, run the notebook
        # where a notebook server would start it: in the notebook's folder).
        run = _as_jovyan(
            f"./binder/start jupyter nbconvert --to notebook --execute {NOTEBOOK} "
            f"--ExecutePreprocessor.timeout=300 --output {EXECUTED}",
            timeout=600, check=False)
        timings["start+notebook"] = time.time() - step
        users = set()
        for pid in _processes_in(ROOT):
            try:
                users.add((Path(f"/proc/{pid}/comm").read_text().strip(),
                           os.stat(f"/proc/{pid}").st_uid))
            except OSError:
                continue
        _as_jovyan("htcml pool down", timeout=120, check=False)
        executed = ROOT / EXECUTED.lstrip("/")
        assert run.returncode == 0 and executed.exists(), (
            f"binder/start + nbconvert failed ({run.returncode}):\n"
            f"{run.stdout[-4000:]}\n{run.stderr[-6000:]}")
        nb = json.loads(executed.read_text())
    timings["total"] = time.time() - started
    _say("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    assert not _mounts_under(ROOT), _mounts_under(ROOT)

    # The pool's daemons ran as jovyan (so did its jobs), not as root or condor.
    daemons = {(comm, uid) for comm, uid in users if comm.startswith("condor_")}
    assert any(comm == "condor_master" for comm, _ in daemons), users
    assert {uid for _, uid in daemons} == {NB_UID}, daemons

    outputs = _outputs(nb)
    errors = [f"{src[:60]!r}: {o.get('ename')}: {o.get('evalue')}"
              for src, o in outputs if o.get("output_type") == "error"]
    assert not errors, errors
    pool = "".join(_text(o) for src, o in outputs if src.strip() == "%htc_pool")
    assert "CPUs" in pool and "project's pool" in pool, pool
    assert any("[0.5, 0.8, 0.3]" in _text(o) for _, o in outputs), [_text(o) for _, o in outputs]
    maps = "".join(_text(o) for src, o in outputs if src.strip() == "%htc_maps")
    assert "slow_square" in maps and "price" in maps, maps
