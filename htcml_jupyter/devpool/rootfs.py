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

from ..paths import htcml_home
from .common import (
    POOL_UID,
    POOL_USER,
    ROOTFS_EXTRA,
    ROOTFS_SUITE,
    TUNING,
    PoolError,
    PoolState,
    chroot_env,
    interpreter_paths,
    is_mounted,
    prepare_root,
    reconfig_root,
    run,
    say,
    write_client_config,
    write_settings,
)


def ensure_rootfs(rootfs: Path) -> None:
    """Make a Debian 13 root with ``minicondor`` at ``rootfs`` unless it is ready.

    Parameters
    ----------
    rootfs
        The root's folder; a ``.htcml-ready`` file in it marks it finished.
    """
    marker = rootfs / ".htcml-ready"
    if marker.exists():
        return
    if shutil.which("debootstrap") is None:
        say("installing debootstrap")
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", "debootstrap"],
             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not (rootfs / "usr/bin").exists():
        say(f"building a Debian {ROOTFS_SUITE} root in {rootfs} (about 30 s)")
        partial = rootfs.with_name(rootfs.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        run(["debootstrap", "--variant=minbase", ROOTFS_SUITE, str(partial)])
        partial.rename(rootfs)
    say("installing minicondor in the root (about 20 s)")
    shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["chroot", str(rootfs), "apt-get", "update", "-qq"], env=env)
    run(["chroot", str(rootfs), "apt-get", "install", "-y", "-qq",
          "--no-install-recommends", "minicondor"], env=env)
    marker.write_text("ok\n")


def ensure_user(rootfs: Path | None) -> int:
    """Make sure the job user exists on the host and in ``rootfs``, with one uid.

    Parameters
    ----------
    rootfs
        A Debian root that needs the user too, or None for the host alone.

    Returns
    -------
    int
        The job user's uid.
    """
    try:
        uid = pwd.getpwnam(POOL_USER).pw_uid
    except KeyError:
        run(["useradd", "--uid", str(POOL_UID), "--user-group", "--no-create-home",
              "--shell", "/usr/sbin/nologin", POOL_USER])
        uid = pwd.getpwnam(POOL_USER).pw_uid
    if rootfs is not None:
        inside = run(["chroot", str(rootfs), "getent", "passwd", POOL_USER], check=False)
        if not inside.strip():
            run(["chroot", str(rootfs), "useradd", "--uid", str(uid), "--user-group",
                  "--no-create-home", "--shell", "/usr/sbin/nologin", POOL_USER])
    return uid


def bind(source: str, rootfs: Path, mounts: list[str], *, read_only: bool = False,
          recursive: bool = False) -> None:
    """Bind-mount the host folder ``source`` at the same path inside ``rootfs``.

    Parameters
    ----------
    source
        The host folder (or file).
    rootfs
        The root to mount it in.
    mounts
        The list of mount points made so far; the new one is appended.
    read_only
        Remount the bind read-only.
    recursive
        Bind with the mounts below ``source`` (and keep them from propagating back).
    """
    target = rootfs / source.lstrip("/")
    if is_mounted(str(target)):
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
    run(["mount", "--rbind" if recursive else "--bind", source, str(target)])
    if recursive:
        run(["mount", "--make-rslave", str(target)])
    if read_only:
        run(["mount", "-o", "remount,ro,bind", str(target)])
    mounts.append(str(target))


def up_rootfs(state_dir: Path, num_cpus: int) -> PoolState:
    """Start the shared pool in a Debian root under ``state_dir`` (as root).

    Parameters
    ----------
    state_dir
        The pool's state folder; the root lies in ``rootfs`` inside it.
    num_cpus
        The CPUs the execute side offers.

    Returns
    -------
    PoolState
        How to reach the pool and what to undo.
    """
    if os.geteuid() != 0:
        raise PoolError("starting the pool in a Debian root needs root; install HTCondor "
                        "(apt-get install minicondor) or run `htcml pool up` as root")
    rootfs = state_dir / "rootfs"
    ensure_rootfs(rootfs)
    uid = ensure_user(rootfs)
    mounts: list[str] = []
    proc_dir = rootfs / "proc"
    if not is_mounted(str(proc_dir)):
        run(["mount", "-t", "proc", "proc", str(proc_dir)])
    mounts.append(str(proc_dir))
    bind("/dev", rootfs, mounts, recursive=True)
    shm = rootfs / "dev/shm"
    shared = ["/tmp", "/home", str(htcml_home())]
    for path in shared:
        Path(path).mkdir(parents=True, exist_ok=True)
        bind(path, rootfs, mounts)
    for path in interpreter_paths():
        if not any(path == s or path.startswith(s + "/") for s in shared):
            bind(path, rootfs, mounts, read_only=True)
    if not os.access(shm, os.W_OK):
        raise PoolError(f"{shm} is not writable inside the root")
    home = htcml_home()
    if os.geteuid() == 0:
        # root's folder stays root's: jobs write only into the map folders given to them
        os.chown(home, 0, 0)
        home.chmod(0o755)
    prepare_root(rootfs)
    changed = write_settings(rootfs, TUNING.format(num_cpus=num_cpus) + ROOTFS_EXTRA)
    chroot = ["chroot", str(rootfs)]
    if not master_running(chroot):
        say("starting condor_master")
        run([*chroot, "condor_master"])
    elif changed:
        reconfig_root(rootfs)
    wait_ready(chroot)
    identity = f"{POOL_USER}@{socket.gethostname()}"
    token = run([*chroot, "condor_token_create", "-identity", identity])
    state = PoolState(mode="rootfs", state_dir=str(state_dir), client_config="",
                      job_user=POOL_USER, job_uid=uid, rootfs=str(rootfs), mounts=mounts,
                      shared_paths=[*shared, *interpreter_paths()], started=time.time())
    write_client_config(state, token)
    return state


def kill_in_root(rootfs: str) -> None:
    """End every process left running inside the root (a daemon that ignored condor_off).

    Parameters
    ----------
    rootfs
        The root; a process belongs to it when ``/proc/PID/root`` points there.
    """
    target = os.path.realpath(rootfs)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root") == target:
                os.kill(int(pid), 9)
        except OSError:
            continue


def master_running(prefix: list[str]) -> bool:
    """Whether ``condor_who`` run with ``prefix`` (e.g. ``chroot ROOT``) finds a master.

    Parameters
    ----------
    prefix
        The command that runs a tool in the pool's root.

    Returns
    -------
    bool
        True when the master answers.
    """
    out = run([*prefix, "condor_who", "-quick"], check=False)
    return 'MASTER = "Alive"' in out


def wait_ready(prefix: list[str], timeout: float = 90,
               condition: str = 'IsReady && STARTD_State =?= "Ready"') -> None:
    """Wait until the master started with ``prefix`` reports its daemons ready.

    Parameters
    ----------
    prefix
        The command that runs a tool in the pool's root.
    timeout
        Seconds to wait before raising :class:`PoolError`.
    condition
        The ``condor_who -wait`` expression (by default: the startd is ready too).
    """
    proc = subprocess.run([*prefix, "condor_who", f"-wait:{int(timeout)}", condition],
                          capture_output=True, text=True, env=chroot_env())
    if proc.returncode != 0:
        raise PoolError(f"the pool did not become ready within {timeout:.0f} s:\n"
                        f"{proc.stdout[-1000:]}{proc.stderr[-1000:]}")


def root_masters(rootfs: str) -> list[int]:
    """The ids of the ``condor_master`` processes running inside ``rootfs``.

    Parameters
    ----------
    rootfs
        The root; a process belongs to it when ``/proc/PID/root`` points there.

    Returns
    -------
    list of int
        Process ids (empty when no master runs there).
    """
    target = os.path.realpath(rootfs)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if (Path(f"/proc/{pid}/comm").read_text().strip() == "condor_master"
                    and os.readlink(f"/proc/{pid}/root") == target):
                found.append(int(pid))
        except OSError:
            continue
    return found


def stop_root(rootfs: str, timeout: float = 30) -> None:
    """Stop the master running in ``rootfs`` and end whatever is left there.

    The master is found by process (its ``/proc/PID/root``), never by name: every root
    on this machine has the same host name, so ``condor_off -master`` run in one root
    may reach another root's master.

    Parameters
    ----------
    rootfs
        The root whose daemons to stop.
    timeout
        Seconds a master has to shut down (SIGTERM) before everything left is killed.
    """
    for pid in root_masters(rootfs):
        try:
            os.kill(pid, 15)
        except OSError:
            pass
    deadline = time.time() + timeout
    while time.time() < deadline and root_masters(rootfs):
        time.sleep(0.3)
    kill_in_root(rootfs)


def down_rootfs(state: PoolState) -> None:
    """Stop the daemons in the root, end what is left there, undo every mount."""
    stop_root(state.rootfs)
    for target in reversed(state.mounts):
        if is_mounted(target):
            run(["umount", "-l", target], check=False)
