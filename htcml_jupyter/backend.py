"""What a map needs from where its jobs run: an HTCondor pool or local processes."""

from __future__ import annotations

import os
from typing import Any, Protocol

from .options import SubmitOptions
from .state import TaskEvent, TaskTable
from .store import MapStore


class EventReader(Protocol):
    def read(self) -> list[TaskEvent]: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """What a map needs from where its jobs run (an HTCondor pool or local processes)."""

    kind: str
    description: str

    def describe(self) -> dict[str, Any]: ...

    def capacity(self, options: SubmitOptions) -> int: ...

    def submit(self, store: MapStore, tasks: list[int], options: SubmitOptions,
               batch_name: str) -> int: ...

    def event_reader(self, store: MapStore) -> Any: ...

    def remove(self, store: MapStore, job_ids: list[str], clusters: set[int]) -> None: ...

    def release(self, store: MapStore, job_ids: list[str]) -> None: ...

    def vanished(self, reader: Any, table: TaskTable) -> list[TaskEvent]: ...


def give_to_job_user(store: MapStore, backend: Backend) -> None:
    """When we are root and the pool runs jobs as another user, give it the map's folder."""
    uid = backend.describe().get("job_uid")
    if uid is not None and os.geteuid() == 0 and uid != 0:
        store.chown(int(uid))
