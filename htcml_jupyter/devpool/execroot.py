"""An execute root of the isolated pool as HTCondor ships an execute point.

HTCondor gives every job its own ``/tmp`` and ``/var/tmp`` (``MOUNT_UNDER_SCRATCH``,
``/tmp,/var/tmp`` by default) and its own ``/dev/shm`` (``MOUNT_PRIVATE_DEV_SHM``): the
starter makes a mount namespace per job.  In a chroot whose ``/`` is not a mount point
it cannot (the job goes on hold with "Failed to execute", after "Failed to unshare the
mount namespace" in the StarterLog).  So the root is bind-mounted onto itself before
anything else, then ``/proc``, ``/dev`` and ``/sys`` and a tmpfs ``/dev/shm`` are
mounted inside it, and the pool keeps HTCondor's defaults.

Podman (Debian's) is the startd's docker runtime, installed once per root (a marker
file says it is there): ``runc`` with ``cgroupfs`` (``crun`` refuses this machine's
hybrid cgroups), no network namespace, events in a file, and a ``docker-root`` wrapper
that runs podman through ``sudo``, because HTCondor calls the docker command as the
``condor`` user and rootless podman cannot make its namespaces here.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from .common import PoolError, is_mounted, run, say
from .rootfs import bind

#: Debian packages that make podman HTCondor's docker runtime (``--init`` needs catatonit).
PODMAN_PACKAGES = ("podman", "runc", "podman-docker", "catatonit", "sudo")
#: The docker command the startd runs (the ``DOCKER`` setting).
DOCKER_WRAPPER = "/usr/local/bin/docker-root"
#: The tmpfs mounted as each execute root's ``/dev/shm``.
SHM_SOURCE = "htcml-shm"
_PODMAN_READY = ".htcml-podman-ready-2"  # a new name when what is installed changes
CONTAINERS_CONF = """\
# Written by htcml_jupyter: podman as HTCondor's docker runtime in this execute root.
[containers]
netns = "none"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
_WRAPPER = """\
#!/bin/sh
# Written by htcml_jupyter: HTCondor runs its docker command as the condor user; podman
# runs containers as root here (rootless podman cannot make its namespaces).  Podman's
# cgroups-v1 notice would otherwise come with the output HTCondor reads.
PODMAN_IGNORE_CGROUPSV1_WARNING=1
export PODMAN_IGNORE_CGROUPSV1_WARNING
exec sudo -n /usr/bin/podman "$@"
"""
_SUDOERS = """\
Defaults!/usr/bin/podman env_keep += "PODMAN_IGNORE_CGROUPSV1_WARNING"
condor ALL=(root) NOPASSWD: /usr/bin/podman
"""


def mounts_under(root: str) -> list[str]:
    """The mount points at ``root`` and below it, in the order they were made.

    Parameters
    ----------
    root
        A folder of this machine.

    Returns
    -------
    list of str
        One entry per mount (a folder mounted twice appears twice).
    """
    target = os.path.realpath(root)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == target or point.startswith(target + "/"):
                found.append(point)
    return found


def unmount_root(root: str) -> None:
    """Undo every mount at and below ``root``: the deepest first, the root's bind onto
    itself last (unmounting it first would hide what is mounted inside it).

    Parameters
    ----------
    root
        An execute root of the isolated pool (its daemons already stopped).
    """
    for _ in range(5):  # a folder can hold stacked mounts; each pass removes the top ones
        points = mounts_under(root)
        if not points:
            return
        for point in sorted(set(points), key=lambda p: (p.count("/"), p), reverse=True):
            run(["umount", point], check=False)
    for point in sorted(set(mounts_under(root)), key=lambda p: p.count("/"), reverse=True):
        run(["umount", "-l", point], check=False)  # still busy: detach it now


def _shm_mounted(shm: Path) -> bool:
    target = os.path.realpath(shm)
    with open("/proc/self/mounts") as f:
        return any(line.split()[:2] == [SHM_SOURCE, target] for line in f)


def mount_execute_root(root: Path, mounts: list[str]) -> None:
    """Make ``root`` a mount point of its own, then mount ``/proc``, ``/dev``, ``/sys``
    and a private tmpfs ``/dev/shm`` inside it.

    A root that has mounts inside but is not a mount point itself (made by an earlier
    version of this package) cannot be fixed while its daemons run: :class:`PoolError`
    says to restart the pool.

    Parameters
    ----------
    root
        The execute root.
    mounts
        The mount points made so far; the root's come after them, itself first.
    """
    target = os.path.realpath(root)
    if not is_mounted(target):
        if mounts_under(target):
            raise PoolError(f"{root} has mounts inside it but is not a mount point itself, "
                            "so its jobs cannot get a private /tmp; restart the pool: "
                            "htcml pool down --isolated && htcml pool up --isolated")
        run(["mount", "--bind", target, target])
        run(["mount", "--make-private", target])
    mounts.append(target)
    proc_dir = root / "proc"
    if not is_mounted(str(proc_dir)):
        run(["mount", "-t", "proc", "proc", str(proc_dir)])
    mounts.append(str(proc_dir))
    bind("/dev", root, mounts, recursive=True)
    bind("/sys", root, mounts, recursive=True)
    shm = root / "dev/shm"
    if not _shm_mounted(shm):
        run(["mount", "-t", "tmpfs", "-o", "mode=1777", SHM_SOURCE, str(shm)])
    mounts.append(str(shm))


def podman_ready(root: Path) -> bool:
    """Whether :func:`ensure_podman` has finished in ``root``."""
    return (root / _PODMAN_READY).exists()


def ensure_podman(root: Path) -> float:
    """Install podman in ``root`` as HTCondor's docker runtime, once (a marker file).

    Parameters
    ----------
    root
        An execute root with ``/proc`` and ``/dev`` mounted.

    Returns
    -------
    float
        Seconds it took (0 when it was there already).
    """
    if podman_ready(root):
        return 0.0
    started = time.monotonic()
    say(f"installing podman in {root} as HTCondor's docker runtime (once; about 15 s)")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    run(["chroot", str(root), "apt-get", "update", "-qq"], env=env)
    run(["chroot", str(root), "apt-get", "install", "-y", "-qq", "--no-install-recommends",
         *PODMAN_PACKAGES], env=env)
    conf = root / "etc/containers"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "containers.conf").write_text(CONTAINERS_CONF)
    (conf / "nodocker").touch()  # quiets podman-docker's notice on every call
    wrapper = root / DOCKER_WRAPPER.lstrip("/")
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(_WRAPPER)
    wrapper.chmod(0o755)
    sudoers = root / "etc/sudoers.d/condor-podman"
    sudoers.write_text(_SUDOERS)
    sudoers.chmod(0o440)
    (root / _PODMAN_READY).write_text("ok\n")
    seconds = time.monotonic() - started
    say(f"podman installed in {root} in {seconds:.1f} s")
    return seconds


def docker_settings(root: Path) -> str:
    """The startd's settings for its docker runtime (empty without podman)."""
    if not podman_ready(root):
        return ""
    return f"DOCKER = {DOCKER_WRAPPER}\n"


def load_image(archive: Path, roots: list[str]) -> str:
    """Load an image archive (docker-archive or OCI archive) into podman's store in each
    execute root, as root.

    Parameters
    ----------
    archive
        The archive, e.g. from ``htcml env image``.
    roots
        Execute roots with podman (:func:`ensure_podman`).

    Returns
    -------
    str
        What the last ``podman load`` printed (the names it loaded).
    """
    if os.geteuid() != 0:
        raise PoolError("loading an image into the isolated pool's execute roots needs root")
    out = ""
    for root in roots:
        if not podman_ready(Path(root)):
            raise PoolError(f"{root} has no podman; start the pool again with "
                            "`htcml pool up --isolated`, which installs it")
        with open(archive, "rb") as f:
            proc = subprocess.run(["chroot", root, "podman", "load"], stdin=f,
                                  capture_output=True, text=True,
                                  env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if proc.returncode != 0:
            raise PoolError(f"podman load of {archive} in {root} failed:\n"
                            f"{proc.stderr[-2000:]}")
        out = proc.stdout
    return out


def has_image(root: str, reference: str) -> bool:
    """Whether podman in the execute root ``root`` holds the image ``reference``."""
    proc = subprocess.run(["chroot", root, "podman", "image", "exists", reference],
                          capture_output=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    return proc.returncode == 0


def ensure_image(archive: Path, reference: str, roots: list[str]) -> list[str]:
    """Load ``archive`` into the execute roots whose podman lacks ``reference``.

    Parameters
    ----------
    archive
        The image archive.
    reference
        The name it loads as, ``localhost/NAME:TAG``.
    roots
        Execute roots with podman.

    Returns
    -------
    list of str
        The roots it was loaded into now.
    """
    missing = [r for r in roots if not has_image(r, reference)]
    if missing:
        load_image(archive, missing)
    return missing


def prune_images(roots: list[str], repository: str, keep: str) -> list[str]:
    """Remove every tag of ``repository`` but ``keep`` from podman in each execute root.

    Parameters
    ----------
    roots
        Execute roots with podman.
    repository
        ``localhost/NAME``.
    keep
        The reference to keep, ``localhost/NAME:TAG``.

    Returns
    -------
    list of str
        The references removed (from any root).
    """
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    removed: set[str] = set()
    for root in roots:
        names = subprocess.run(["chroot", root, "podman", "images", "--format",
                                "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True,
                               env=env).stdout.split()
        stale = [n for n in names if n.startswith(repository + ":") and n != keep]
        if stale:
            subprocess.run(["chroot", root, "podman", "rmi", *stale], capture_output=True,
                           env=env)
            removed.update(stale)
    return sorted(removed)

