"""Run ``htcondor2`` calls under one pool's client configuration.

The bindings read a single configuration per process (``CONDOR_CONFIG`` at the time of
``reload_config()``).  Each :class:`~.condor.CondorBackend` names its own configuration
file, and every binding call it makes runs inside :func:`pool_config`, which loads that
file under a process-wide lock and puts ``CONDOR_CONFIG`` back as it was.  So two maps on
two pools in one process each reach their own pool, and choosing a pool for one map
never changes where the next map goes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

#: What the bindings say when a daemon restarted since this process last talked to it
#: (a cached security session it rejects, an address that moved, a connection it
#: dropped): the same call made again, with a new connection, succeeds.
RESTARTED_DAEMON = ("SECMAN:2004", "rejected our session", "Failed communication with",
                    "Unable to locate local daemon")

_lock = threading.RLock()
_UNSET = object()
_loaded: object = _UNSET


def _key(config: str | None) -> object:
    # None: whatever the process environment names (or the system configuration)
    return ("env", os.environ.get("CONDOR_CONFIG")) if config is None else config


@contextmanager
def pool_config(config: str | None) -> Iterator[Any]:
    """Hold the bindings on ``config`` (a client configuration file; ``None`` for the
    process's own) for the duration of the block; yields the ``htcondor2`` module.

    Blocks of other threads wait, so keep the work inside short (one query, one act).
    """
    global _loaded
    import htcondor2

    with _lock:
        key = _key(config)
        if key != _loaded:
            saved = os.environ.get("CONDOR_CONFIG")
            try:
                if config is not None:
                    os.environ["CONDOR_CONFIG"] = config
                htcondor2.reload_config()
            finally:
                if saved is None:
                    os.environ.pop("CONDOR_CONFIG", None)
                else:
                    os.environ["CONDOR_CONFIG"] = saved
            _loaded = key
        yield htcondor2


@contextmanager
def bindings_held() -> Iterator[Any]:
    """Hold the bindings without choosing a pool: for work that reads no configuration
    (a job event log) but must not run while another thread reloads it; yields the
    ``htcondor2`` module."""
    import htcondor2

    with _lock:
        yield htcondor2


def _quoted(value: str) -> str:
    if any(c in value for c in "\n\r\0"):
        raise ValueError(f"{value!r} holds a line break or NUL, which no submit command "
                         f"can carry")
    value = value.replace('"', '""')
    if any(c in value for c in " \t'"):
        return "'" + value.replace("'", "''") + "'"
    return value


def condor_arguments(args: list[str]) -> str:
    """``args`` as a submit description's ``arguments`` value, in HTCondor's new syntax
    (double-quoted; an argument with spaces or quotes single-quoted, quotes doubled)."""
    return '"' + " ".join(_quoted(a) for a in args) + '"'


def condor_environment(values: dict[str, str]) -> str:
    """``values`` as a submit description's ``environment`` value, in HTCondor's new
    syntax: a value with spaces or quotes is single-quoted, quotes doubled."""
    for name in values:
        if not name or any(c in name for c in " \t=\"'\n\r\0"):
            raise ValueError(f"{name!r} is not an environment variable name")
    return '"' + " ".join(f"{k}={_quoted(v)}" for k, v in values.items()) + '"'


def daemon_restarted(exc: BaseException) -> bool:
    """Whether a binding error is one that a daemon restart leaves behind once."""
    return any(text in str(exc) for text in RESTARTED_DAEMON)


def call_with_pool(config: str | None, call: Callable[[Any], T]) -> T:
    """``call(htcondor2)`` under ``config``; made once more, after a short pause, when it
    fails the way a restarted daemon makes the first call fail."""
    for attempt in (1, 2):
        with pool_config(config) as htcondor2:
            try:
                return call(htcondor2)
            except Exception as exc:
                if attempt == 2 or not daemon_restarted(exc):
                    raise
        time.sleep(0.5)
    raise AssertionError("unreachable")  # pragma: no cover
