"""The local-universe job that watches a sweep on the submit host.

A sweep with an early-abort policy on an HTCondor pool gets one such job next to its
trials.  It runs ``python -m htcml_jupyter.workflows.watch <map folder>`` with this
process's interpreter (on a real pool the notebook runs on the access point, which is
the submit host), as the same user, in the schedd's own configuration.  Its record
(:data:`WATCHER_FILE`) in the map folder tells the
kernel's watcher to stand aside while it runs.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends.protocol import WatcherJob
from ..engine import folder_files
from ..engine.store import MapStore
from ..engine.submission import submits_for_job_user

if TYPE_CHECKING:
    from ..backends.protocol import Backend

#: The watcher's record in the map folder: ``state`` (submitted, watching, finished,
#: failed), ``job``, ``submitted``, ``heartbeat``, ``aborted``, ``errors``, ``error``.
WATCHER_FILE = "watcher.json"
#: Seconds a watcher may stay silent (or take to start) before the kernel's watcher
#: applies the policy again in its place.
WATCHER_SILENT_AFTER = 20.0


def watcher_record(store: MapStore) -> dict[str, Any]:
    """The watcher's record of the sweep in ``store`` (empty when it has none, or when
    it is not a regular file of the folder)."""
    try:
        record = json.loads(folder_files.read_bytes(store.path, WATCHER_FILE, limit=1 << 20))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def pool_watcher_active(store: MapStore, now: float | None = None) -> bool:
    """Whether the watcher job applies the sweep's policy now, so the kernel must not:
    it is starting, or watching and heard from within :data:`WATCHER_SILENT_AFTER`."""
    record = watcher_record(store)
    since = record.get("heartbeat" if record.get("state") == "watching" else "submitted")
    if record.get("state") not in ("submitted", "watching") or since is None:
        return False
    return (time.time() if now is None else now) - float(since) < WATCHER_SILENT_AFTER


def write_record(store: MapStore, record: dict[str, Any]) -> None:
    """Replace the watcher's record in the map folder atomically (a link in its place is
    replaced, never followed)."""
    store.write_file(WATCHER_FILE, json.dumps(record).encode())


def isolated_python_flags(parent: str, version: tuple[int, int] | None = None) -> list[str]:
    """What goes before a module name to run it from the package in ``parent`` without
    the working folder on ``sys.path``: ``-P -m`` (Python 3.11+, ``PYTHONPATH`` names
    ``parent``), or before 3.11 ``-I`` and a small ``-c`` that puts ``parent`` first
    (``-I`` also ignores ``PYTHONPATH``)."""
    if (version or sys.version_info[:2]) >= (3, 11):
        return ["-P", "-m"]
    code = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
            "runpy.run_module(sys.argv[1], run_name='__main__', alter_sys=True)")
    return ["-I", "-c", code, parent]


def package_parent() -> str:
    """The folder that holds this package, so the watcher imports this very code."""
    return str(Path(__file__).resolve().parent.parent.parent)


def watcher_job(*, python: str | None = None,
                token_directory: str | None = None) -> WatcherJob:
    """What the watcher of a sweep runs: ``python -m htcml_jupyter.workflows.watch .``
    in the sweep's folder, with this very package (``PYTHONPATH``), and
    ``token_directory`` (when given) for its IDTOKENS.  The backend writes it as a job
    (a local-universe job on an HTCondor pool)."""
    environment = {"PYTHONPATH": package_parent(), "PYTHONUNBUFFERED": "1",
                   "PYTHONDONTWRITEBYTECODE": "1"}
    if token_directory is not None:
        environment["_CONDOR_SEC_TOKEN_DIRECTORY"] = token_directory
    # it runs in the map folder, which the job user can write: with -P (-I before
    # Python 3.11) nothing planted there can shadow the standard library
    return WatcherJob(python or sys.executable,
                      (*isolated_python_flags(package_parent()),
                       "htcml_jupyter.workflows.watch", "."), environment)


def hand_over_tokens(store: MapStore, source: str | None) -> str | None:
    """When root submits as the pool's job user (with that user's IDTOKENS, as on the
    project's own pool), the watcher runs as that user and needs the same tokens: copy
    those of ``source`` (the folder this process's configuration names) into
    ``<map folder>/tokens.d`` (mode 0700, given to the job user with the folder), where
    only that user and root can read them.  Returns the folder, or None when there is
    no ``source``."""
    if source is None or not Path(source).is_dir():
        return None
    folder_files.make_folder(store.path, "tokens.d")  # 0700; a link there is refused
    for token in Path(source).iterdir():
        if token.is_file() and not token.name.startswith("."):
            # 0600 from the first byte, renamed into place (a planted link is replaced)
            store.write_file(f"tokens.d/{token.name}", token.read_bytes(), mode=0o600)
    return str(store.path / "tokens.d")


def submit_watcher(store: MapStore, backend: Backend) -> str | None:
    """Queue the watcher of ``store``'s sweep on ``backend`` (one where
    ``backend.can_run_watcher``) and record its job id; returns it, or None (with a
    warning) when the pool refused it, in which case the kernel's watcher alone applies
    the policy."""
    uid = submits_for_job_user(backend)
    write_record(store, {"state": "submitted", "submitted": time.time(), "job": None})
    tokens = hand_over_tokens(store, backend.token_directory()) if uid is not None else None
    job = watcher_job(token_directory=tokens)
    if uid is not None:
        store.chown(uid)  # the watcher runs as the pool's job user and writes here
    try:
        cluster = backend.submit_watcher(store, job)
    except Exception as exc:
        write_record(store, {"state": "failed", "submitted": time.time(), "job": None,
                             "error": f"submitting the watcher failed: {exc}"})
        warnings.warn(f"the sweep's pool-side watcher could not be submitted ({exc}); "
                      f"its policy is applied from this process only", stacklevel=4)
        return None
    job_id = f"{cluster}.0"
    if watcher_record(store).get("state") == "submitted":  # unless it already reported
        write_record(store, {"state": "submitted", "submitted": time.time(), "job": job_id})
    return job_id
