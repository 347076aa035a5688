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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.costs import ROUTE_COMMON, ROUTE_TRANSFER, ROUTE_URL, warn_if_costly
from ..engine.errors import HTCMLError
from .choice import KINDS, Decision, PoolFacts, auto_decision, decide, is_url
from .launch import (
    JobLaunch,
    archive_name,
    bootstrap_script,
    cloudpickle_folder,
    default_launch,
    launch_for,
    supports_common_files,
)
from .layout import EnvSource
from .lean import normalize
from .needs import names_in_files, needed_distributions
from .packing import (
    PackedEnvironment,
    PackProgress,
    default_cache_dir,
    export_archive,
    pack_environment,
    read_sidecar,
)

if TYPE_CHECKING:
    from ..engine.options import SubmitOptions
    from ..engine.store import MapStore

__all__ = ["KINDS", "Decision", "EnvSource", "PackProgress", "PackedEnvironment", "PoolFacts",
           "archive_name", "auto_decision", "bootstrap_script", "cloudpickle_folder",
           "decide", "default_cache_dir", "export_archive", "job_launch", "launch_for",
           "pack_environment", "size_text"]


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


def _pack_for(store: MapStore, source: EnvSource) -> tuple[PackedEnvironment, str]:
    """Pack (or reuse) the running environment; link the archive into the map's folder
    when possible, so the map keeps it and the jobs' file transfer reads it there."""
    shown = [-1]

    def progress(p: PackProgress) -> None:  # a line at every tenth, on stderr
        tenth = int(10 * p.bytes_done / max(p.bytes_total, 1))
        if tenth > shown[0]:
            shown[0] = tenth
            _say(f"environment: packing {p.files_done}/{p.files_total} files, "
                 f"{size_text(p.bytes_done)} of {size_text(p.bytes_total)}")

    packed = pack_environment(source, progress=progress)
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


def _lean_source(store: MapStore, options: SubmitOptions) -> EnvSource:
    """The running environment, cut to what the map's function needs (see
    :mod:`.needs`: the names in its pickles, read with pickletools -- nothing is
    unpickled -- what importing them loads, and their requirements), plus the map's own
    ``pack_include`` and less its ``pack_exclude``."""
    source = EnvSource.current()
    pickles = [store.function_file, *sorted(store.path.glob("inputs/task-*.pkl"))[:3]]
    needs = needed_distributions(names_in_files(pickles), source.site_dirs,
                                 include=[n for n in options.pack_include if "/" not in n])
    needs -= {normalize(n) for n in options.pack_exclude}
    return source.with_choice(include=tuple(options.pack_include),
                              exclude=tuple(options.pack_exclude), needs=tuple(needs))


def _disk_kb(record: dict[str, Any]) -> int | None:
    """Scratch disk a job needs for the archive and its unpacked tree, in KiB."""
    size, unpacked = record.get("size"), record.get("unpacked_bytes")
    if not isinstance(size, int) or not isinstance(unpacked, int):
        return None
    return (size + unpacked) // 1024 + 1


def _record(decision: Decision, store: MapStore, options: SubmitOptions,
            common: bool) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": decision.kind, "reason": decision.reason,
                              "archive": decision.archive, "size": None,
                              "pack_seconds": None, "cached": None}
    if decision.kind == "shared":
        record["interpreter"] = default_launch(options).executable
    if decision.kind == "pack":
        packed, sent = _pack_for(store, _lean_source(store, options))
        meta = read_sidecar(packed.path) or {}
        record.update(archive=sent, size=packed.size, digest=packed.digest,
                      sha256=packed.sha256, pack_seconds=round(packed.pack_seconds, 2),
                      cached=packed.cached, python=packed.python, files=packed.files,
                      unpacked_bytes=meta.get("unpacked_bytes"),
                      left_out=meta.get("left_out"))
    elif decision.archive and not is_url(decision.archive):
        record["size"] = Path(decision.archive).stat().st_size
        meta = read_sidecar(Path(decision.archive)) or {}
        record.update(files=meta.get("files"), unpacked_bytes=meta.get("unpacked_bytes"))
    if decision.kind in ("pack", "archive"):
        record["route"] = (ROUTE_URL if is_url(str(record["archive"]))
                           else ROUTE_COMMON if common else ROUTE_TRANSFER)
    return record


def _common_files(pool: PoolFacts) -> bool:
    """Whether the pool's schedd sends common input files once per execute point."""
    try:
        return supports_common_files(pool.schedd_version())
    except Exception:
        return False


def _still_there(record: dict[str, Any]) -> dict[str, Any]:
    """The map's recorded environment, when its interpreter and archive still exist
    here; a clear error when not (never a new pack of whichever process retries)."""
    for key, what in (("interpreter", "interpreter"), ("archive", "packed environment")):
        path = record.get(key)
        if (key != "archive" or record.get("kind") in ("pack", "archive")) and \
                isinstance(path, str) and not is_url(path) and os.path.isabs(path) and \
                not os.path.exists(path):
            raise HTCMLError(
                f"the map's {what} {path} is gone, so its jobs cannot run again as they "
                f"were made; a retry never swaps in another environment.  Restore it, or "
                f"map the function again (htc.map) to make a new map")
    return record


def _launch(record: dict[str, Any], options: SubmitOptions) -> JobLaunch:
    launch = launch_for(record["kind"], options, record.get("archive"),
                        common_files=record.get("route") == ROUTE_COMMON)
    # The interpreter recorded at the first submission, not this process's own: a retry
    # from the sidebar's server runs the map's environment (and the cloudpickle in the
    # jobside.pyz the map's folder keeps).
    if record["kind"] == "shared" and record.get("interpreter"):
        launch = replace(launch, executable=str(record["interpreter"]))
    disk = _disk_kb(record)
    return replace(launch, disk_kb=disk) if disk else launch


def job_launch(store: MapStore, options: SubmitOptions, backend: PoolFacts) -> JobLaunch:
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
        The pool the jobs go to (its backend); asked for filesystem domains for
        ``"auto"`` and for its schedd's version for a packed environment.

    Returns
    -------
    JobLaunch
        What the submit description runs.
    """
    record = store.read_record().environment
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        decision = decide(options, backend.filesystem_domains)
        _say(f"environment: {decision.kind} ({decision.reason})")
        common = decision.kind in ("pack", "archive") and _common_files(backend)
        record = _record(decision, store, options, common)
    else:  # a later submission (a retry, from any process) runs what the map recorded
        return _launch(_still_there(record), options)
    store.write_record(store.read_record().replace(environment=record))
    jobs = sum(1 for _ in store.tasks())
    warn_if_costly(record, jobs)
    return _launch(record, options)
