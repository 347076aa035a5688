"""Queueing items as jobs: the one path by which a new map and a retry submit."""

from __future__ import annotations

import fcntl
import io
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from typing import TYPE_CHECKING, Any

from ..jobside.runner import read_header
from .inputs import job_files
from .notes import recording_notes
from .options import SubmitOptions
from .payload import dump_items
from .store import MapStore

if TYPE_CHECKING:
    from ..backends.protocol import Backend

Tasks = list[tuple[int, Sequence[int]]]

#: The lock file in a map's folder held while its jobs are numbered, written and queued.
SUBMIT_LOCK = "submit.lock"


@contextmanager
def submission_lock(store: MapStore) -> Iterator[None]:
    """Hold the map's submission lock: one thread or process at a time numbers, writes
    and queues the map's jobs (two retries at once, from the sidebar and the notebook,
    give one set of new jobs).  An ``fcntl.flock`` on ``submit.lock`` in the map's
    folder, so it holds across processes and is freed when a process dies."""
    fd = os.open(store.path / SUBMIT_LOCK,
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the file frees the lock


def write_tasks(store: MapStore, arguments: Mapping[int, Any], items: list[int], size: int,
                first_task: int, shared_files: Sequence[str] = ()) -> Tasks:
    """Pack ``items`` into jobs of ``size`` items numbered from ``first_task``, write each
    job's input file and record the jobs in the map's folder; returns ``[(task, items)]``."""
    return write_task_stream(store, ((i, arguments[i]) for i in items), size, first_task,
                             shared_files)


def write_task_stream(store: MapStore, pairs: Iterator[tuple[int, Any]], size: int,
                      first_task: int, shared_files: Sequence[str] = (), *,
                      record: bool = True) -> Tasks:
    """Consume ``(index, argument)`` pairs ``size`` at a time, one job each: only one
    job's items are in memory at once.  Each job's ``File`` inputs (and the
    ``shared_files`` every job gets) are recorded for HTCondor to transfer.

    Every map folder gets its jobs' input files here: a map's, a retry's, a sweep's
    trials, a chain stage's.  ``record=False`` rewrites the input files of jobs already
    recorded (a later chain stage, whose inputs are the results of the stage before)."""
    store.make_seed_files()
    tasks: Tasks = []
    files: dict[int, list[str]] = {}
    task = first_task
    while True:
        chunk = list(islice(pairs, size))
        if not chunk:
            break
        sources = job_files(chunk, shared_files)
        dump_items(chunk, store.input_file(task))
        indexes = [i for i, _ in chunk]
        run = range(indexes[0], indexes[0] + len(indexes))
        tasks.append((task, run if indexes == list(run) else indexes))
        if sources or shared_files:
            files[task] = [*shared_files, *sources]
        task += 1
    if record:
        store.add_tasks(tasks, files)
    return tasks


def submits_for_job_user(backend: Backend) -> int | None:
    """The uid of the pool's job user when this process, as root, submits for that user
    (the project's pool run as root): the folders the jobs, the watcher or DAGMan write
    in must then be given to it.  None when the jobs run as this process's own user."""
    uid = backend.job_uid
    return uid if uid is not None and uid != 0 and os.geteuid() == 0 else None


def submit_tasks(store: MapStore, backend: Backend, tasks: Tasks, options: SubmitOptions,
                 batch_name: str) -> int:
    """Queue the written jobs on ``backend``; returns the submission's cluster id."""
    uid = submits_for_job_user(backend)
    if uid is not None:
        store.chown(uid)
    with recording_notes(store.path):  # the environment's notes go to this map
        return backend.submit(store, [t for t, _ in tasks], options, batch_name)


def read_arguments(store: MapStore, items: list[int]) -> dict[int, Any]:
    """The inputs of ``items``, read back from the input file of the first job that had
    each (for a retry)."""
    wanted = set(items)
    first_task: dict[int, int] = {}
    for task, task_items in store.tasks():
        for i in task_items:
            first_task.setdefault(i, task)
    found: dict[int, Any] = {}
    for task in sorted({first_task[i] for i in items}):
        with io.BytesIO(store.read_own(f"inputs/task-{task}.pkl")) as f:  # root's own
            read_header(f)
            for index, argument in pickle.loads(f.read()):
                if index in wanted:
                    found[index] = argument
    return found
