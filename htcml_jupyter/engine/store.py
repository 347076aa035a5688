"""A map's folder on disk: everything needed to rebuild the map in another process.

Layout of ``<root>/<name>/`` (mode 0700)::

    map.json            the map's record (:class:`~.record.MapRecord`): schema, kind,
                        name, backend, options, item count, creation time
    function.pkl        the cloudpickled (function, kwargs), written once
    tasks.jsonl         one line per job ever created: {"task", "items"}, or
                        {"task", "first", "count"} for a run of items; "files": the
                        per-item files and URLs HTCondor transfers for that job
    submissions.jsonl   one line per submission: {"cluster", "tasks", "time"}
    inputs/task-N.pkl   the items of job N
    outputs/task-N.pkl  the outcome of job N (written by the runner, sent back)
    outputs/files/task-N/K/  the files the call starting at item K wrote (output_dir())
    logs/events.log     HTCondor's job event log for every cluster of the map
    logs/task-N.out|err the job's stdout and stderr
    logs/notes.log      notes for people: how the environment was chosen, packing
    jobside.pyz         the job side as one file: runner, chirp client, cloudpickle

Files are only ever added or appended to, so a crash at any point loses nothing
already written.  Every file is read and written through :mod:`.folder_files`, which
follows no link inside the folder: when root submits for the pool's job user, that user
owns the folder and may have put anything there.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..jobside.archive import ARCHIVE_NAME, archive_bytes
from ..jobside.wire import CHECKPOINT_DIR, OUTPUTS_DIR
from . import folder_files
from .errors import MapNotFound
from .record import MapRecord, RecordError

#: The files of a map folder that root keeps as its own when it gives the folder to the
#: pool's job user (relative paths, or their beginnings).
ROOTS_OWN = ("map.json", "function.pkl", "policy.pkl", "optuna.pkl", "inputs/",
             "jobside.pyz")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def new_map_name(function_name: str) -> str:
    """A readable, unique default name: the function's name plus a short random tag."""
    stem = re.sub(r"[^A-Za-z0-9_]", "", function_name).lstrip("_")[:40] or "map"
    return f"{stem}-{time.strftime('%m%d')}-{secrets.token_hex(3)}"


def check_map_name(name: str) -> str:
    """``name`` when it is a map name (the whole string: a trailing newline is not);
    raises ``ValueError`` saying what a name may hold otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"map name {name!r} must be 1-100 letters, digits, '_', '-' or '.', "
                         f"starting with a letter or digit")
    return name


def _append_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    folder_files.append(path.parent, path.name,
                        "".join(json.dumps(r) + "\n" for r in rows).encode())


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a record file, one a line; lines that are not (cut short by a
    crash, or written by someone else) are skipped."""
    try:
        text = folder_files.read_bytes(path.parent, path.name).decode(errors="replace")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row


@dataclass
class MapStore:
    """The folder of one map."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def create(cls, root: Path, name: str, meta: MapRecord | dict[str, Any],
               owner_uid: int | None = None) -> MapStore:
        """Make the folder of a new map ``name`` under ``root`` with its record ``meta``
        (a :class:`MapRecord`, or its JSON object: written in the current schema, the
        fields it leaves out with their defaults)."""
        check_map_name(name)
        root.mkdir(parents=True, exist_ok=True)
        path = root / name
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            raise ValueError(f"a map named {name!r} already exists in {root}; choose another "
                             f"name or attach to it with htcml_jupyter.attach({name!r})") from None
        for sub in ("inputs", "outputs", "logs"):
            (path / sub).mkdir(mode=0o700)
        store = cls(path)
        store.write_record(meta if isinstance(meta, MapRecord)
                           else MapRecord.from_json(meta, complete=True))
        if owner_uid is not None:
            store.chown(owner_uid, root)
        return store

    @classmethod
    def open(cls, root: Path, name: str) -> MapStore:
        """The folder of the existing map ``name`` under ``root``."""
        path = root / check_map_name(name)
        if not (path / "map.json").exists():
            raise MapNotFound(f"no map named {name!r} in {root} (htcml_jupyter.list_maps() "
                              f"lists the maps there)")
        return cls(path)

    def chown(self, uid: int, root: Path | None = None) -> None:
        """Give the folder to the user the pool's jobs run as (when we are root).

        Never follows a symbolic link: the job user can write into the folder, and a link
        planted there must not make root give away the file it points to.  The files
        root may load again (:data:`ROOTS_OWN`: its record, the function, the inputs a
        retry reads back, a sweep's policy) stay root's, readable by the job user: a file
        the job user put in their place is refused (:func:`folder_files.read_own`).
        """
        for sub in (root,) if root is not None else ():
            if sub is not None and sub.lstat().st_uid != uid:
                os.chown(sub, uid, -1, follow_symlinks=False)
        for dirpath, dirs, files in os.walk(self.path):  # does not descend into links
            os.chown(dirpath, uid, -1, follow_symlinks=False)
            for name in (*files, *(d for d in dirs if os.path.islink(os.path.join(dirpath, d)))):
                path = os.path.join(dirpath, name)
                if os.lstat(path).st_nlink > 1:
                    continue  # a hard link to a file outside (a cached environment pack)
                if os.path.relpath(path, self.path).startswith(ROOTS_OWN):
                    continue
                os.chown(path, uid, -1, follow_symlinks=False)

    # the record ------------------------------------------------------------
    def read_record(self) -> MapRecord:
        """The map's record, ``map.json``, of any schema this version reads;
        :class:`RecordError` (a ``ValueError``) says what is wrong when it cannot."""
        return MapRecord.from_json(self.read_meta())

    def write_record(self, record: MapRecord) -> None:
        """Replace ``map.json`` atomically with ``record``, in the current schema."""
        folder_files.write_atomic(self.path, "map.json",
                                  json.dumps(record.to_json(), indent=1, default=str).encode())

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace ``map.json`` atomically with the record's JSON object ``meta`` (checked
        and written in the current schema, as :meth:`write_record`; the fields it leaves
        out take their defaults)."""
        self.write_record(MapRecord.from_json(meta, complete=True))

    def read_meta(self) -> dict[str, Any]:
        """``map.json`` as raw JSON (what :meth:`read_record` reads); ``ValueError``
        when it is not a JSON object."""
        meta = json.loads(folder_files.read_bytes(self.path, "map.json"))
        if not isinstance(meta, dict):
            raise RecordError(f"{self.path / 'map.json'} holds a JSON "
                              f"{type(meta).__name__}, not the map's record")
        return meta

    def write_file(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        """Replace the file ``rel`` (e.g. ``"policy.pkl"``) of the folder atomically, with
        ``mode`` from its first byte; no link in the folder is followed."""
        folder_files.write_atomic(self.path, rel, data, mode, create=True)

    def read_own(self, rel: str) -> bytes:
        """The bytes of the file ``rel`` when this process's user wrote it: what may be
        unpickled here (a file the job user put in its place is an ``UnsafeEntry``)."""
        return folder_files.read_own(self.path, rel)

    def add_tasks(self, tasks: Sequence[tuple[int, Sequence[int]]],
                  files: dict[int, list[str]] | None = None) -> None:
        """Record new jobs: their items (a ``range`` is stored as its first item and
        count) and, per job, the files and URLs HTCondor transfers for its items."""
        rows = []
        for task, items in tasks:
            row: dict[str, Any] = (
                {"task": task, "first": items.start, "count": len(items)}
                if isinstance(items, range) and items.step == 1 else
                {"task": task, "items": list(items)})
            if files and files.get(task):
                row["files"] = files[task]
            rows.append(row)
        _append_lines(self.path / "tasks.jsonl", rows)

    def tasks(self) -> Iterator[tuple[int, Sequence[int]]]:
        """``(task, items)`` of every job ever created; a run of items is a ``range``."""
        for row in _read_lines(self.path / "tasks.jsonl"):
            if "first" in row:
                first = int(row["first"])
                yield int(row["task"]), range(first, first + int(row["count"]))
            else:
                yield int(row["task"]), [int(i) for i in row["items"]]

    def task_files(self) -> dict[int, list[str]]:
        """``{task: files and URLs}`` for the jobs whose items carry ``File`` inputs."""
        return {int(row["task"]): list(row["files"])
                for row in _read_lines(self.path / "tasks.jsonl") if row.get("files")}

    def add_submission(self, cluster: int, tasks: list[int], token: str | None = None) -> None:
        """Record that ``tasks`` were queued as cluster ``cluster`` (closing the pending
        note ``token``, if any)."""
        row: dict[str, Any] = {"cluster": cluster, "tasks": tasks, "time": time.time()}
        if token is not None:
            row["token"] = token
        _append_lines(self.path / "submissions.jsonl", [row])

    def submissions(self) -> list[dict[str, Any]]:
        """Confirmed submissions: ``{"cluster", "tasks", "time"}``, oldest first."""
        return [r for r in _read_lines(self.path / "submissions.jsonl") if "cluster" in r]

    def add_pending_submission(self, token: str, tasks: list[int]) -> None:
        """Note a submission about to be sent (its jobs carry ``token``), so that a process
        that dies before confirming it leaves enough behind to find its jobs."""
        _append_lines(self.path / "submissions.jsonl",
                      [{"pending": token, "tasks": tasks, "time": time.time(),
                        "pid": os.getpid(), "host": socket.gethostname()}])

    def pending_submissions(self, abandoned_only: bool = False) -> dict[str, list[int]]:
        """``{token: tasks}`` of submissions noted but never confirmed or resolved; with
        ``abandoned_only``, only those whose submitting process is gone (one still
        running on this machine may confirm its note any moment)."""
        pending: dict[str, list[int]] = {}
        for row in _read_lines(self.path / "submissions.jsonl"):
            if "pending" in row:
                if not (abandoned_only and _alive_here(row.get("pid"), row.get("host"))):
                    pending[str(row["pending"])] = [int(t) for t in row["tasks"]]
            elif row.get("token") in pending:
                pending.pop(str(row["token"]))
        return pending

    def resolve_pending(self, token: str, cluster: int | None) -> None:
        """Close a pending submission: its cluster was found, or (None) it never queued."""
        _append_lines(self.path / "submissions.jsonl", [{"token": token, "resolved": cluster,
                                                         "time": time.time()}])

    def add_unsubmitted(self, tasks: list[int], reason: str) -> None:
        """Record jobs that were written but never queued (their submission failed)."""
        _append_lines(self.path / "unsubmitted.jsonl",
                      [{"task": t, "reason": reason, "time": time.time()} for t in tasks])

    def unsubmitted(self) -> dict[int, str]:
        """``{task: why}`` for jobs whose submission failed."""
        return {int(r["task"]): str(r["reason"])
                for r in _read_lines(self.path / "unsubmitted.jsonl")}

    def add_abort(self, item: int, reason: str) -> None:
        _append_lines(self.path / "aborted.jsonl",
                      [{"item": item, "reason": reason, "time": time.time()}])

    def aborted(self) -> dict[int, str]:
        return {int(r["item"]): str(r["reason"])
                for r in _read_lines(self.path / "aborted.jsonl")}

    # files ---------------------------------------------------------------
    @property
    def job_side_archive(self) -> Path:
        """The job side as one file (:mod:`~htcml_jupyter.jobside.archive`) that every
        job receives and runs (:meth:`make_seed_files` writes it)."""
        return self.path / ARCHIVE_NAME

    def seed_files(self) -> list[Path]:
        """An empty outcome file, checkpoint folder and output-files folder that every
        job starts with, so that HTCondor always finds all three when it sends a job's
        files back on an eviction, even one before the job side started (HTCondor holds
        a job whose output files are missing; :meth:`make_seed_files` creates them)."""
        seed = self.path / "seed"
        return [seed / "outcome.pkl", seed / CHECKPOINT_DIR, seed / OUTPUTS_DIR]

    def make_seed_files(self) -> None:
        """Write the :attr:`job_side_archive` every job starts from, once: like
        ``function.pkl`` it stays what the map was made with (its cloudpickle unpickles
        the function), whichever process retries (older maps get it at their next
        retry); and the :meth:`seed_files`."""
        folder_files.make_folder(self.path, f"seed/{CHECKPOINT_DIR}")
        folder_files.make_folder(self.path, f"seed/{OUTPUTS_DIR}")
        folder_files.append(self.path, "seed/outcome.pkl", b"")
        try:
            folder_files.read_own(self.path, ARCHIVE_NAME)
            return
        except (OSError, ValueError):
            pass  # missing, or not this user's: written anew
        folder_files.write_atomic(self.path, ARCHIVE_NAME, archive_bytes())

    @property
    def function_file(self) -> Path:
        return self.path / "function.pkl"

    @property
    def event_log(self) -> Path:
        return self.path / "logs" / "events.log"

    def input_file(self, task: int) -> Path:
        """Job ``task``'s inputs; ``UnsafeEntry`` when ``inputs`` is not a real folder."""
        return folder_files.check_folder(self.path, "inputs") / f"task-{task}.pkl"

    def output_file(self, task: int) -> Path:
        return self.path / "outputs" / f"task-{task}.pkl"

    def files_folder(self, task: int) -> Path:
        """Where the output files of job ``task`` arrive (one folder per call)."""
        return self.path / "outputs" / "files" / f"task-{task}"

    def stdout_file(self, task: int) -> Path:
        return self.path / "logs" / f"task-{task}.out"

    def stderr_file(self, task: int) -> Path:
        return self.path / "logs" / f"task-{task}.err"


def _alive_here(pid: Any, host: Any) -> bool:
    """Whether process ``pid`` still runs on this machine (False for another machine's)."""
    if not isinstance(pid, int) or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_map_names(root: Path) -> list[str]:
    """Names of the maps under ``root``, oldest first: its folders that hold a
    ``map.json``, readable or not (a symbolic link is not a map of this root: it may
    lead anywhere)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        try:
            if not p.is_symlink() and p.is_dir() and os.path.lexists(p / "map.json"):
                found.append((p.lstat().st_mtime, p.name))
        except OSError:
            continue
    return [name for _, name in sorted(found)]
