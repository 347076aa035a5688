"""The project's pool in a Debian 13 root (root on a machine without HTCondor packages).

``debootstrap`` makes the root once and ``minicondor`` runs in it under ``chroot``; jobs
run as the ordinary user ``htcml``; the host folders a job needs (the interpreter, the
map folders, ``/tmp``) are bind-mounted at the same paths.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ..devpool import (
    POOL_UID,
    POOL_USER,
    ROOTFS_EXTRA,
    ROOTFS_SUITE,
    TUNING,
    PoolError,
    PoolState,
    _interpreter_paths,
    _is_mounted,
    _run,
    _say,
    _write_client_config,
    chroot_env,
)
from ..paths import htcml_home


def _ensure_rootfs(rootfs: Path) -> None:
    marker = rootfs / ".htcml-ready"
    if marker.exists():
        return
    if shutil.which("debootstrap") is None:
        _say("installing debootstrap")
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "install", "-y", "-qq", "debootstrap"],
             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not (rootfs / "usr/bin").exists():
        _say(f"building a Debian {ROOTFS_SUITE} root in {rootfs} (about 30 s)")
        partial = rootfs.with_name(rootfs.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        _run(["debootstrap", "--variant=minbase", ROOTFS_SUITE, str(partial)])
        partial.rename(rootfs)
    _say("installing minicondor in the root (about 20 s)")
    shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["chroot", str(rootfs), "apt-get", "update", "-qq"], env=env)
    _run(["chroot", str(rootfs), "apt-get", "install", "-y", "-qq",
          "--no-install-recommends", "minicondor"], env=env)
    marker.write_text("ok\n")


def _ensure_user(rootfs: Path | None) -> int:
    """The ordinary user jobs run as, with the same uid on the host and in the root."""
    try:
        uid = pwd.getpwnam(POOL_USER).pw_uid
    except KeyError:
        _run(["useradd", "--uid", str(POOL_UID), "--user-group", "--no-create-home",
              "--shell", "/usr/sbin/nologin", POOL_USER])
        uid = pwd.getpwnam(POOL_USER).pw_uid
    if rootfs is not None:
        inside = _run(["chroot", str(rootfs), "getent", "passwd", POOL_USER], check=False)
        if not inside.strip():
            _run(["chroot", str(rootfs), "useradd", "--uid", str(uid), "--user-group",
                  "--no-create-home", "--shell", "/usr/sbin/nologin", POOL_USER])
    return uid


def _bind(source: str, rootfs: Path, mounts: list[str], *, read_only: bool = False,
          recursive: bool = False) -> None:
    target = rootfs / source.lstrip("/")
    if _is_mounted(str(target)):
        if str(target) not in mounts:
            mounts.append(str(target))
        return
    if os.path.isdir(source):
        target.mkdir(parents=True, exist_ok=True)
        # Let the job user walk through folders we had to create (e.g. /root).
        parent = target.parent
        while parent != rootfs and parent.stat().st_mode & 0o011 != 0o011:
            parent.chmod(parent.stat().st_mode | 0o711)
            parent = parent.parent
    _run(["mount", "--rbind" if recursive else "--bind", source, str(target)])
    if recursive:
        _run(["mount", "--make-rslave", str(target)])
    if read_only:
        _run(["mount", "-o", "remount,ro,bind", str(target)])
    mounts.append(str(target))


def up_rootfs(state_dir: Path, num_cpus: int) -> PoolState:
    if os.geteuid() != 0:
        raise PoolError("starting the pool in a Debian root needs root; install HTCondor "
                        "(apt-get install minicondor) or run `htcml pool up` as root")
    rootfs = state_dir / "rootfs"
    _ensure_rootfs(rootfs)
    uid = _ensure_user(rootfs)
    mounts: list[str] = []
    proc_dir = rootfs / "proc"
    if not _is_mounted(str(proc_dir)):
        _run(["mount", "-t", "proc", "proc", str(proc_dir)])
    mounts.append(str(proc_dir))
    _bind("/dev", rootfs, mounts, recursive=True)
    shm = rootfs / "dev/shm"
    shared = ["/tmp", "/home", str(htcml_home())]
    for path in shared:
        Path(path).mkdir(parents=True, exist_ok=True)
        _bind(path, rootfs, mounts)
    for path in _interpreter_paths():
        if not any(path == s or path.startswith(s + "/") for s in shared):
            _bind(path, rootfs, mounts, read_only=True)
    if not os.access(shm, os.W_OK):
        raise PoolError(f"{shm} is not writable inside the root")
    home = htcml_home()
    if os.geteuid() == 0:
        os.chown(home, uid, uid)
        home.chmod(0o755)
    run_condor = rootfs / "run/condor"
    run_condor.mkdir(parents=True, exist_ok=True)
    _run(["chroot", str(rootfs), "chown", "condor:condor", "/run/condor"])
    hostname = socket.gethostname()
    hosts = rootfs / "etc/hosts"
    if hostname not in hosts.read_text():
        with hosts.open("a") as f:
            f.write(f"127.0.1.1 {hostname}\n")
    config_d = rootfs / "etc/condor/config.d"
    (config_d / "90-htcml").write_text(TUNING.format(num_cpus=num_cpus) + ROOTFS_EXTRA)
    chroot = ["chroot", str(rootfs)]
    if not _master_running(chroot):
        _say("starting condor_master")
        _run([*chroot, "condor_master"])
    _wait_ready(chroot)
    token = _run([*chroot, "condor_token_create", "-identity", f"{POOL_USER}@{hostname}"])
    state = PoolState(mode="rootfs", state_dir=str(state_dir), client_config="",
                      job_user=POOL_USER, job_uid=uid, rootfs=str(rootfs), mounts=mounts,
                      shared_paths=[*shared, *_interpreter_paths()], started=time.time())
    _write_client_config(state, token)
    return state


def _kill_chrooted(rootfs: str) -> None:
    """End every process left running inside the root (a daemon that ignored condor_off)."""
    target = os.path.realpath(rootfs)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root") == target:
                os.kill(int(pid), 9)
        except OSError:
            continue


def _master_running(prefix: list[str]) -> bool:
    out = _run([*prefix, "condor_who", "-quick"], check=False)
    return 'MASTER = "Alive"' in out


def _wait_ready(prefix: list[str], timeout: float = 90) -> None:
    proc = subprocess.run([*prefix, "condor_who", f"-wait:{int(timeout)}",
                           'IsReady && STARTD_State =?= "Ready"'],
                          capture_output=True, text=True, env=chroot_env())
    if proc.returncode != 0:
        raise PoolError(f"the pool did not become ready within {timeout:.0f} s:\n"
                        f"{proc.stdout[-1000:]}{proc.stderr[-1000:]}")


def down_rootfs(state: PoolState) -> None:
    """Stop the daemons in the root, end what is left there, undo every mount."""
    chroot = ["chroot", state.rootfs]
    if _master_running(chroot):
        _run([*chroot, "condor_off", "-master"], check=False)
        deadline = time.time() + 30
        while time.time() < deadline and _master_running(chroot):
            time.sleep(0.5)
    _kill_chrooted(state.rootfs)
    for target in reversed(state.mounts):
        if _is_mounted(target):
            _run(["umount", "-l", target], check=False)
