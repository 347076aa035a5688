"""A Binder-like container for tests/test_binder.py: a Debian 13 root built once and
kept under /var/lib/htcml/binder-root (``HTCML_BINDER_ROOT``), with an ordinary user
jovyan (uid 1000), binder/apt.txt applied, and repo2docker's base notebook
environment made with the Python that binder/runtime.txt names.

Debian 13's own Python is 3.13; binder/runtime.txt asks for 3.11 (the Python the pinned
CPU build of torch is made for), which repo2docker installs with conda.  Here this
machine's Python 3.11 is copied into the root (without its packages and tests) and
registered with the dynamic linker, and the base environment is a venv of it.
Everything mounted is unmounted and every process left inside the root is ended, also
on failure.
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

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("HTCML_BINDER_ROOT", "/var/lib/htcml/binder-root"))
SUITE = "trixie"
MARKER = ".htcml-binder-ready"
NB_USER, NB_UID = "jovyan", 1000  # as on mybinder.org
HOME = f"/home/{NB_USER}"  # repo2docker's REPO_DIR: the repository is copied here
ENV_PREFIX = "/srv/notebook-env"  # plays ${NB_PYTHON_PREFIX}, owned by jovyan as there
BASE_ENV = ENV_PREFIX + ".base"  # the base environment as built, copied for every run
PYTHON_PREFIX = "/opt/python"  # the Python runtime.txt names, copied from this machine
# What the Binder image has before the repository's own files: TLS roots, Python with
# venv and pip, and repo2docker's base environment (Jupyter, nbconvert, a kernel).
BASE_APT = ["python3", "python3-venv", "ca-certificates"]
BASE_PIP = ["jupyterlab", "notebook", "nbconvert", "ipykernel"]
HOST_CA = "/etc/ssl/certs/htcml-host-ca.crt"  # this machine's CA bundle (its egress proxy)


def say(msg: str) -> None:
    print(f"[binder test] {msg}", flush=True)


def sh(cmd: list[str], *, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)[:300]} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def runtime_python() -> str:
    """The Python version binder/runtime.txt names (``python-3.11`` gives ``3.11``)."""
    text = (REPO / "binder/runtime.txt").read_text().strip()
    if not text.startswith("python-"):
        raise AssertionError(f"binder/runtime.txt should name a Python, e.g. python-3.11: "
                             f"{text!r}")
    return text.removeprefix("python-")


def apt_txt() -> list[str]:
    """The packages binder/apt.txt names (repo2docker drops comments and blank lines)."""
    lines = (REPO / "binder/apt.txt").read_text().splitlines()
    return [p for p in (line.partition("#")[0].strip() for line in lines) if p]


def as_jovyan(script: str, *, timeout: float = 600,
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


# --------------------------------------------------------------------------- processes


def mounts_under(root: Path) -> list[str]:
    prefix = os.path.realpath(root)
    with open("/proc/self/mounts") as f:
        targets = [line.split()[1] for line in f]
    return [t for t in targets if t == prefix or t.startswith(prefix + "/")]


def processes_in(root: Path) -> list[int]:
    target = os.path.realpath(root)
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root") == target:
                pids.append(int(pid))
        except OSError:
            continue
    return pids


def memory_in(root: Path) -> dict[str, int]:
    """Proportional set size (kB) of every process inside the root, by name: what the
    container holds in memory, shared libraries counted once across processes."""
    used: dict[str, int] = {}
    for pid in processes_in(root):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    used[comm] = used.get(comm, 0) + int(line.split()[1])
                    break
        except (OSError, ValueError):
            continue
    return used


def _kill_all_in(root: Path) -> None:
    for _ in range(20):
        pids = processes_in(root)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"processes still running inside {root}: {processes_in(root)}")


def _unmount_all(root: Path) -> None:
    # Deepest first; a plain umount, then a lazy one for anything still busy.
    for target in sorted(set(mounts_under(root)), key=len, reverse=True):
        for _ in range(5):  # a path may be mounted more than once
            if target not in mounts_under(root):
                break
            if subprocess.run(["umount", target], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", target], capture_output=True)


@contextmanager
def mounted(root: Path) -> Iterator[None]:
    """proc, /dev and a real /dev/shm inside the root; always undone, processes first
    (and so is anything else mounted under the root meanwhile)."""
    _kill_all_in(root)
    _unmount_all(root)  # left over from a run that was killed
    try:
        sh(["mount", "-t", "proc", "proc", str(root / "proc")])
        sh(["mount", "--bind", "/dev", str(root / "dev")])
        # A plain bind gives a root-only /dev/shm: jobs that make locks would fail.
        sh(["mount", "-t", "tmpfs", "-o", "mode=1777,size=1g", "tmpfs",
            str(root / "dev/shm")])
        yield
    finally:
        _kill_all_in(root)
        _unmount_all(root)


# --------------------------------------------------------------------------- the root


def _wanted() -> dict[str, Any]:
    return {"suite": SUITE, "apt": sorted({*BASE_APT, *apt_txt()}), "pip": BASE_PIP,
            "user": [NB_USER, NB_UID], "env": ENV_PREFIX, "python": runtime_python()}


def _copy_python(version: str) -> None:
    """This machine's Python ``version`` into the root at PYTHON_PREFIX: the runtime
    repo2docker would install for runtime.txt (its packages and tests left out)."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != version:
        raise AssertionError(f"binder/runtime.txt names Python {version}; run this test "
                             f"with a Python {version} to copy into the root")
    src, dst = Path(sys.base_prefix), ROOT / PYTHON_PREFIX.lstrip("/")
    lib = f"lib/python{version}"
    skip = {src / lib / "site-packages", src / lib / "test"}
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True,
                    ignore=lambda d, names: [n for n in names if Path(d) / n in skip])
    (dst / lib / "site-packages").mkdir()
    # libpython is a shared library: where the copy is, the dynamic linker must look.
    (ROOT / "etc/ld.so.conf.d/htcml-binder-python.conf").write_text(f"{PYTHON_PREFIX}/lib\n")
    sh(["chroot", str(ROOT), "ldconfig"])
    sh(["chroot", str(ROOT), f"{PYTHON_PREFIX}/bin/python{version}", "-c", "import ssl, ctypes"])


def ensure_root() -> None:
    """Build (once) the Debian root with apt.txt applied, jovyan, the runtime.txt
    Python and the base environment (kept as BASE_ENV)."""
    marker = ROOT / MARKER
    wanted = _wanted()
    try:
        if json.loads(marker.read_text()) == wanted:
            say(f"reusing the root in {ROOT}")
            return
    except (OSError, ValueError):
        pass
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not (ROOT / "usr/bin").exists():
        if shutil.which("debootstrap") is None:
            say("installing debootstrap")
            sh(["apt-get", "update", "-qq"], env=apt_env)
            sh(["apt-get", "install", "-y", "-qq", "debootstrap"], env=apt_env)
        partial = ROOT.with_name(ROOT.name + ".partial")
        _kill_all_in(partial)
        _unmount_all(partial)
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        sh(["debootstrap", "--variant=minbase", SUITE, str(partial)], timeout=1200)
        partial.rename(ROOT)
        say(f"debootstrap {SUITE}: {time.time() - started:.0f} s")
    marker.unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", ROOT / "etc/resolv.conf")
    with mounted(ROOT):
        started = time.time()
        chroot = ["chroot", str(ROOT)]
        sh([*chroot, "apt-get", "update", "-qq"], env=apt_env)
        # As repo2docker applies apt.txt: no recommended packages.
        sh([*chroot, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
            *wanted["apt"]], env=apt_env, timeout=1200)
        sh([*chroot, "apt-get", "clean"])
        say(f"apt-get install {' '.join(wanted['apt'])}: {time.time() - started:.0f} s")
        if subprocess.run([*chroot, "id", "-u", NB_USER], capture_output=True).returncode:
            sh([*chroot, "useradd", "--uid", str(NB_UID), "--user-group", "--create-home",
                "--shell", "/bin/bash", NB_USER])
        refresh_host_files()
        _copy_python(wanted["python"])
        for prefix in (ENV_PREFIX, BASE_ENV):
            shutil.rmtree(ROOT / prefix.lstrip("/"), ignore_errors=True)
        (ROOT / ENV_PREFIX.lstrip("/")).mkdir(parents=True)
        sh([*chroot, "chown", f"{NB_UID}:{NB_UID}", ENV_PREFIX])
        started = time.time()
        as_jovyan(f"{PYTHON_PREFIX}/bin/python{wanted['python']} -m venv {ENV_PREFIX}")
        as_jovyan("python -m pip install -q --upgrade pip", timeout=600)
        as_jovyan(f"python -m pip install -q {' '.join(BASE_PIP)}", timeout=1200)
        sh(["cp", "-a", str(ROOT / ENV_PREFIX.lstrip("/")), str(ROOT / BASE_ENV.lstrip("/"))])
        say(f"base environment ({' '.join(BASE_PIP)}): {time.time() - started:.0f} s")
    marker.write_text(json.dumps(wanted) + "\n")


def fresh_environment() -> None:
    """The notebook environment as the image has it before requirements.txt: a copy of
    the base environment, at the same path (its scripts name their interpreter)."""
    env = ROOT / ENV_PREFIX.lstrip("/")
    shutil.rmtree(env, ignore_errors=True)
    sh(["cp", "-a", str(ROOT / BASE_ENV.lstrip("/")), str(env)])


def refresh_host_files() -> None:
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


def copy_repository() -> None:
    """The repository into jovyan's home, which starts empty (no ~/.htcml from before)."""
    home = ROOT / HOME.lstrip("/")
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    for name in _repository_files():
        src, dst = REPO / name, home / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    sh(["chown", "-R", f"{NB_UID}:{NB_UID}", str(home)])
    home.chmod(0o755)
