"""Which pool a map uses.

In order: an explicit ``pool=``/``backend=`` argument; the ``HTCML_POOL`` setting;
``CONDOR_CONFIG`` or a system HTCondor configuration (the local schedd); the
project's own pool when it is up; otherwise local subprocesses, with a notice
(``HTCML_LOCAL_FALLBACK=0`` turns the fallback into an error).

A pool is named by ``"local"``, ``"project"`` (the project's pool, see ``htcml pool
up``), ``"isolated"`` (the project's isolated pool, whose execute nodes share no files
with this machine, see ``htcml pool up --isolated``) or the path of an HTCondor client
configuration file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from .. import devpool
from ..engine.errors import PoolUnavailable
from .condor import CondorBackend
from .local import LocalBackend
from .protocol import Backend

SYSTEM_CONFIG = "/etc/condor/condor_config"
_HOW_TO = ("start the project's pool with `htcml pool up`, point CONDOR_CONFIG at your "
           "pool's configuration, or pass backend='local' to run in local processes")


class LocalFallbackNotice(UserWarning):
    """No HTCondor pool was found, so a map runs in local processes."""


def _notice(message: str) -> None:
    """Warn with :class:`LocalFallbackNotice` every time, not once per place: the
    warning goes through :func:`warnings.warn_explicit` without a registry (so it is not
    deduplicated) and the process's warning filters are left alone."""
    import sys

    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
            "htcml_jupyter"):
        frame = frame.f_back
    warnings.warn_explicit(message, LocalFallbackNotice, frame.f_code.co_filename,
                           frame.f_lineno, module=frame.f_globals.get("__name__"))

def project_backend() -> CondorBackend | None:
    """The project's pool when ``htcml pool up`` started it, else None."""
    state = devpool.running_state()
    if state is None:
        return None
    return CondorBackend(state.client_config, description="the project's pool",
                         job_uid=state.job_uid if state.mode == "rootfs" else None,
                         shared_paths=state.shared_paths)


def isolated_backend() -> CondorBackend | None:
    """The project's isolated pool when ``htcml pool up --isolated`` started it, else None.

    Returns
    -------
    CondorBackend or None
        A backend for its client configuration; map folders must lie under a folder
        its submit side sees (``/tmp``, ``/home``, ``$HTCML_HOME``).
    """
    state = devpool.running_state(isolated=True)
    if state is None:
        return None
    return CondorBackend(state.client_config, description="the project's isolated pool",
                         job_uid=state.job_uid if os.geteuid() == 0 else None,
                         shared_paths=state.shared_paths)


def _named(pool: str) -> Backend:
    if pool == "local":
        return LocalBackend()
    if pool == "project":
        backend = project_backend()
        if backend is None:
            raise PoolUnavailable("the project's pool is not up: start it with `htcml pool up`")
        return backend
    if pool == "isolated":
        backend = isolated_backend()
        if backend is None:
            raise PoolUnavailable("the project's isolated pool is not up: start it with "
                                  "`htcml pool up --isolated`")
        return backend
    path = Path(pool).expanduser()
    if not path.is_file():
        raise PoolUnavailable(f"pool {pool!r} is neither 'local', 'project', 'isolated' nor "
                              f"an HTCondor configuration file; {_HOW_TO}")
    for own in (project_backend(), isolated_backend()):
        if own is not None and os.path.realpath(path) == os.path.realpath(str(own.config)):
            return own
    return CondorBackend(str(path))


def _fallback_allowed(fallback: bool | None) -> bool:
    if fallback is not None:
        return fallback
    return os.environ.get("HTCML_LOCAL_FALLBACK", "1").lower() not in ("0", "false", "no")


def resolve_backend(pool: str | None = None, backend: str | None = None,
                    fallback: bool | None = None) -> Backend:
    """Pick where a new map's jobs run (see the module's docstring for the order)."""
    if backend not in (None, "local", "condor"):
        raise ValueError(f"backend must be 'condor' or 'local', not {backend!r}")
    if backend == "local":
        return LocalBackend()
    chosen = pool or os.environ.get("HTCML_POOL")
    if chosen:
        found = _named(chosen)
        if backend == "condor" and found.kind != "condor":
            raise PoolUnavailable(f"backend='condor' but pool {chosen!r} is local")
        return found
    config = os.environ.get("CONDOR_CONFIG")
    if config and config != os.devnull:  # the bindings set /dev/null when none exists
        return _named(config)
    if Path(SYSTEM_CONFIG).is_file():
        return CondorBackend(None, description="the local HTCondor pool")
    project = project_backend()
    if project is not None:
        try:
            project.check_reachable()
            return project
        except PoolUnavailable:
            pass
    if backend == "condor" or not _fallback_allowed(fallback):
        raise PoolUnavailable(f"no HTCondor pool is reachable: {_HOW_TO}")
    _notice("no HTCondor pool found, so this map runs in local processes. To use a pool, "
            "start the project's pool with `htcml pool up` or point CONDOR_CONFIG at your "
            "pool's configuration (HTCML_LOCAL_FALLBACK=0 makes this an error).")
    return LocalBackend()


def backend_from_meta(pool: dict[str, Any]) -> Backend:
    """Rebuild the backend a map was submitted to, from its ``map.json``."""
    if pool.get("backend") == "local":
        return LocalBackend(pool.get("workers"))
    return CondorBackend(pool.get("config"), description=pool.get("description", ""),
                         job_uid=pool.get("job_uid"), shared_paths=pool.get("shared_paths"))
