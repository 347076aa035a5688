"""The project's own HTCondor pools, for development, tests and demos.

``htcml pool up`` starts a real HTCondor pool on this machine and records how a
client reaches it (a client configuration file plus a token); ``htcml pool down``
stops it and undoes every mount.

Two ways to get the daemons for the (shared) pool:

* **native** -- ``condor_master`` is on ``PATH`` (Debian 13, Ubuntu 24.04, Binder):
  a personal pool run by the current, ordinary user under the state folder.
* **rootfs** -- as root on a machine without HTCondor packages (Debian 12): a
  Debian 13 root made with ``debootstrap`` holding ``minicondor``, started with
  ``chroot``.  Jobs run as an ordinary user (``htcml``), and the host folders a job
  needs (the interpreter, the map folders, ``/tmp``) are bind-mounted at the same
  paths, as a pool with a shared filesystem would have them.

``htcml pool up --isolated`` (``up(isolated=True)``, root only) starts a second,
independent pool whose execute nodes share nothing with the notebook, as on CHTC or
the OSPool: see :mod:`.isolated`.  Every function here takes ``isolated=`` to choose
between the two; ``running_state(isolated=True).client_config`` is the isolated
pool's client configuration.

All pools get several slots, fast negotiation and two simulated GPUs.

Neither starts on a machine that already belongs to another HTCondor pool (an access
point): :func:`up` raises :class:`ForeignPoolError` instead (see :mod:`.guard`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .common import (
    POOL_UID,
    POOL_USER,
    PoolError,
    PoolState,
    chroot_env,
    default_state_dir,
    is_mounted,
    isolated_state_dir,
)
from .guard import ForeignPool, find_foreign_pool, project_addresses

__all__ = ["POOL_UID", "POOL_USER", "ForeignPoolError", "PoolError", "PoolState",
           "chroot_env", "default_state_dir", "down", "isolated_state_dir", "running_state",
           "up"]


class ForeignPoolError(PoolError):
    """This machine already belongs to an HTCondor pool the project did not start."""

    def __init__(self, found: ForeignPool) -> None:
        super().__init__(found.message())
        self.found = found


def refuse_on_foreign_pool() -> None:
    """Raise :class:`ForeignPoolError` when this machine belongs to another pool."""
    own = project_addresses([default_state_dir(), isolated_state_dir()])
    found = find_foreign_pool(own=own)
    if found is not None:
        raise ForeignPoolError(found)


def up(state_dir: Path | None = None, *, num_cpus: int = 8, isolated: bool = False,
       exec_nodes: int | None = None) -> PoolState:
    """Start the project's pool (or find it running) and record how to reach it.

    Parameters
    ----------
    state_dir
        The pool's state folder (default :func:`default_state_dir`, or
        :func:`isolated_state_dir` with ``isolated=True``).
    num_cpus
        CPUs each execute node offers.
    isolated
        Start the isolated pool (execute nodes that share nothing) instead.
    exec_nodes
        Execute nodes of the isolated pool (ignored otherwise); None keeps as many as
        are running, at least one.

    Returns
    -------
    PoolState
        How to reach the pool (``client_config``) and what to undo.

    Raises
    ------
    ForeignPoolError
        This machine already belongs to an HTCondor pool (an access point); nothing was
        started.
    """
    refuse_on_foreign_pool()
    if isolated:
        from .isolated import up_isolated

        return up_isolated(state_dir, num_cpus=num_cpus, exec_nodes=exec_nodes)
    state_dir = state_dir or default_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    sbin_path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    if shutil.which("condor_master", path=sbin_path) and os.geteuid() != 0:
        from .native import up_native

        state = up_native(state_dir, num_cpus)
    else:
        from .rootfs import up_rootfs

        state = up_rootfs(state_dir, num_cpus)
    state.save()
    return state


def down(state_dir: Path | None = None, *, isolated: bool = False) -> bool:
    """Stop the project's pool and undo its mounts.

    Parameters
    ----------
    state_dir
        The pool's state folder (default: that of the pool ``isolated`` names).
    isolated
        Stop the isolated pool instead of the shared one.

    Returns
    -------
    bool
        False when it was not up.
    """
    if isolated:
        from .isolated import down_isolated

        return down_isolated(state_dir)
    state_dir = state_dir or default_state_dir()
    state = PoolState.load(state_dir)
    if state is None:
        return False
    if state.mode == "rootfs":
        from .rootfs import down_rootfs

        down_rootfs(state)
    else:
        from .native import down_native

        down_native(state)
    (state_dir / "state.json").unlink(missing_ok=True)
    return True


def running_state(state_dir: Path | None = None, *,
                  isolated: bool = False) -> PoolState | None:
    """The recorded state when the project's pool was started and not stopped.

    Parameters
    ----------
    state_dir
        The pool's state folder (default: that of the pool ``isolated`` names).
    isolated
        Ask about the isolated pool instead of the shared one.

    Returns
    -------
    PoolState or None
        None when the pool is not up.
    """
    if isolated:
        from .isolated import isolated_running

        return isolated_running(state_dir)
    state = PoolState.load(state_dir)
    if state is None or state.mode == "isolated" or not Path(state.client_config).exists():
        return None
    if state.mode == "rootfs" and not is_mounted(os.path.join(state.rootfs, "proc")):
        return None
    return state
