"""Environment delivery: how a job gets a Python interpreter and the notebook's packages.

``environment=`` on a map chooses: ``"shared"`` (the notebook's own interpreter by its
path, for pools that share a filesystem), ``"pack"`` (the notebook's environment packed
into an archive sent with each job), the path or URL of an archive made once with
``htcml env pack``, or ``"auto"`` (``shared`` when the execute machines share the submit
side's filesystem domain, otherwise ``pack``).  ``container_image=`` runs the image's
``python3`` instead.

The choice is made once per map, at its first submission, and recorded in the map's
``map.json`` under ``"environment"``; later submissions (retries) reuse it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends.submit_description import JobLaunch
from ..engine.errors import PoolUnavailable
from .choice import KINDS, Decision, auto_decision, decide, is_url, pool_domains
from .launch import archive_name, bootstrap_script, cloudpickle_folder, launch_for
from .layout import EnvSource
from .packing import (
    PackedEnvironment,
    PackProgress,
    default_cache_dir,
    export_archive,
    pack_environment,
)

if TYPE_CHECKING:
    from ..backends.condor import CondorBackend
    from ..engine.options import SubmitOptions
    from ..engine.store import MapStore

__all__ = ["KINDS", "Decision", "EnvSource", "PackProgress", "PackedEnvironment",
           "archive_name", "auto_decision", "bootstrap_script", "cloudpickle_folder",
           "decide", "default_cache_dir", "export_archive", "job_launch", "launch_for",
           "pack_environment", "pool_domains", "size_text"]


def size_text(n: float) -> str:
    """``n`` bytes in words: ``"465 MB"``."""
    for unit in ("bytes", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _say(text: str) -> None:
    """One line about the map's environment: a note (logged at INFO on the
    ``htcml_jupyter.environment`` logger, kept in the map's ``logs/notes.log``, shown by
    its panel), never on stderr."""
    from ..engine.notes import note

    note(text, logger="htcml_jupyter.environment")


def _pack_for(store: MapStore) -> tuple[PackedEnvironment, str]:
    """Pack (or reuse) the running environment; link the archive into the map's folder
    when possible, so the map keeps it and the jobs' file transfer reads it there."""
    shown = [-1]

    def progress(p: PackProgress) -> None:  # a line at every tenth, on stderr
        tenth = int(10 * p.bytes_done / max(p.bytes_total, 1))
        if tenth > shown[0]:
            shown[0] = tenth
            _say(f"environment: packing {p.files_done}/{p.files_total} files, "
                 f"{size_text(p.bytes_done)} of {size_text(p.bytes_total)}")

    packed = pack_environment(progress=progress)
    if packed.cached:
        _say(f"environment: reusing {packed.path} ({size_text(packed.size)}, "
             f"{packed.files} files, packed earlier in {packed.pack_seconds:.1f} s)")
    else:
        _say(f"environment: packed Python {packed.python} and its packages into "
             f"{packed.path} ({size_text(packed.size)}, {packed.files} files) in "
             f"{packed.seconds:.1f} s")
    linked = store.path / packed.path.name
    try:
        if not linked.exists():
            os.link(packed.path, linked)
        return packed, str(linked)
    except OSError:
        return packed, str(packed.path)


def _domains(backend: CondorBackend) -> tuple[str | None, list[str]]:
    try:
        return pool_domains(backend.config)
    except Exception as exc:
        backend.check_reachable()  # a pool that is down says so in the usual words
        raise PoolUnavailable(f"cannot ask the collector of {backend.description} which "
                              f"filesystem domains its machines have: {exc}") from exc


def _record(decision: Decision, store: MapStore) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": decision.kind, "reason": decision.reason,
                              "archive": decision.archive, "size": None,
                              "pack_seconds": None, "cached": None}
    if decision.kind == "pack":
        packed, sent = _pack_for(store)
        record.update(archive=sent, size=packed.size, digest=packed.digest,
                      pack_seconds=round(packed.pack_seconds, 2), cached=packed.cached,
                      python=packed.python)
    elif decision.archive and not is_url(decision.archive):
        record["size"] = Path(decision.archive).stat().st_size
    return record


def job_launch(store: MapStore, options: SubmitOptions, backend: CondorBackend) -> JobLaunch:
    """How the jobs of ``store``'s map start their runner on ``backend``'s pool.

    At the map's first submission the environment is chosen (see :func:`decide`),
    packed when it is ``"pack"``, announced in one line on stderr and recorded in the map's
    metadata; later submissions reuse the record.

    Parameters
    ----------
    store
        The map's folder.
    options
        The map's submit options (``environment``, ``python``, ``container_image``).
    backend
        The pool the jobs go to; asked for filesystem domains for ``"auto"``.

    Returns
    -------
    JobLaunch
        What the submit description runs.
    """
    meta = store.read_meta()
    record = meta.get("environment")
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        decision = decide(options, lambda: _domains(backend))
        _say(f"environment: {decision.kind} ({decision.reason})")
        record = _record(decision, store)
    elif record["kind"] == "pack" and not os.path.exists(str(record.get("archive"))):
        _say(f"environment: the map's archive {record.get('archive')} is gone; packing again")
        record = _record(Decision("pack", str(record.get("reason", ""))), store)
    else:
        return launch_for(record["kind"], options, record.get("archive"))
    meta = store.read_meta()
    meta["environment"] = record
    store.write_meta(meta)
    return launch_for(record["kind"], options, record.get("archive"))
