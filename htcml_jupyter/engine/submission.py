"""Queueing items as jobs: the one path by which a new map and a retry submit."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..jobside.runner import read_header
from .chunking import chunks
from .options import SubmitOptions
from .payload import dump_items
from .store import MapStore

if TYPE_CHECKING:
    from ..backends.protocol import Backend

Tasks = list[tuple[int, list[int]]]


def write_tasks(store: MapStore, arguments: Mapping[int, Any], items: list[int], size: int,
                first_task: int) -> Tasks:
    """Pack ``items`` into jobs of ``size`` items numbered from ``first_task``, write each
    job's input file and record the jobs in the map's folder; returns ``[(task, items)]``."""
    tasks = [(first_task + offset, chunk) for offset, chunk in enumerate(chunks(items, size))]
    store.make_seed_files()
    for task, chunk in tasks:
        dump_items([(i, arguments[i]) for i in chunk], store.input_file(task))
    store.add_tasks(tasks)
    return tasks


def submit_tasks(store: MapStore, backend: Backend, tasks: Tasks, options: SubmitOptions,
                 batch_name: str) -> int:
    """Queue the written jobs on ``backend``; returns the submission's cluster id."""
    uid = backend.job_uid
    if uid is not None and os.geteuid() == 0 and uid != 0:  # root, as the pool's job user
        store.chown(uid)
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
        with store.input_file(task).open("rb") as f:
            read_header(f)
            for index, argument in pickle.loads(f.read()):
                if index in wanted:
                    found[index] = argument
    return found
