"""Job and item states, and the one transition table that moves jobs between them.

Every backend turns what it observes (HTCondor's job event log, the local executor's
event file) into :class:`TaskEvent` values; :class:`TaskTable` applies them through
:data:`TRANSITIONS`.  A *task* is one job: a chunk of one or more items.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class ItemState(str, enum.Enum):
    """Where an item of a map stands."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    HELD = "held"
    REMOVED = "removed"

    @property
    def settled(self) -> bool:
        """True when the item needs no more waiting (done, failed, held or removed)."""
        return self in (ItemState.DONE, ItemState.FAILED, ItemState.HELD, ItemState.REMOVED)


class TaskPhase(str, enum.Enum):
    """Where a job stands; FINISHED becomes DONE or FAILED per item from its outcome."""

    IDLE = "idle"
    RUNNING = "running"
    HELD = "held"
    FINISHED = "finished"
    REMOVED = "removed"


class EventKind(str, enum.Enum):
    """The job events that change a job's phase."""

    SUBMITTED = "submitted"
    STARTED = "started"
    EVICTED = "evicted"          # vacated, preempted, requeued: it will run again
    HELD = "held"
    RELEASED = "released"
    FINISHED = "finished"        # the job exited (detail: exit_code)
    REMOVED = "removed"
    VANISHED = "vanished"        # not in the queue and no terminal event: removed, until
                                 # a later event in the log says otherwise
    REPORTED = "reported"        # live reports from the running function: no phase change


#: The transition table: the phase a job is in after each kind of event.
TRANSITIONS: dict[EventKind, TaskPhase] = {
    EventKind.SUBMITTED: TaskPhase.IDLE,
    EventKind.STARTED: TaskPhase.RUNNING,
    EventKind.EVICTED: TaskPhase.IDLE,
    EventKind.HELD: TaskPhase.HELD,
    EventKind.RELEASED: TaskPhase.IDLE,
    EventKind.FINISHED: TaskPhase.FINISHED,
    EventKind.REMOVED: TaskPhase.REMOVED,
    EventKind.VANISHED: TaskPhase.REMOVED,
}

_FINAL = (TaskPhase.FINISHED, TaskPhase.REMOVED)


@dataclass(frozen=True)
class TaskEvent:
    """One observed event of one job."""

    task: int
    kind: EventKind
    time: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskStatus:
    """What is known of one job."""

    task: int
    items: Sequence[int]
    phase: TaskPhase = TaskPhase.IDLE
    job_id: str | None = None
    host: str | None = None
    hold_reason: str | None = None
    hold_code: int | None = None
    exit_code: int | None = None
    starts: int = 0
    evictions: int = 0
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None
    removed_reason: str | None = None
    last_event: EventKind | None = None
    #: Marked removed only because the queue no longer showed it (no terminal event);
    #: any later event of the job undoes that.
    vanished: bool = False
    #: The last eviction took the job off a machine (it was running), so it counts.
    evicted_running: bool = False

    def apply(self, event: TaskEvent) -> bool:
        """Move through the transition table; return True when something changed."""
        if event.kind not in TRANSITIONS:
            return False  # a report: no phase change
        if self.phase in _FINAL and not self.vanished:
            return False  # a job that left the queue stays where it ended
        if self.vanished:
            if event.kind is EventKind.VANISHED:
                return False
            self.vanished = False  # the log knew more than the queue did
            self.removed_reason = None
            self.finished = None
        new = TRANSITIONS[event.kind]
        d = event.detail
        self.job_id = d.get("job_id", self.job_id)
        if event.kind is EventKind.SUBMITTED:
            self.submitted = event.time
        elif event.kind is EventKind.STARTED:
            self.starts += 1
            self.started = event.time
            self.host = d.get("host", self.host)
        elif event.kind is EventKind.EVICTED:
            # HTCondor logs an eviction whenever a shadow ends before the job: one that
            # failed before the job started (input transfer, then a hold) is none
            self.evicted_running = self.phase is TaskPhase.RUNNING
            if self.evicted_running:
                self.evictions += 1
        elif event.kind is EventKind.HELD:
            self.hold_reason = d.get("reason", "held")
            self.hold_code = d.get("code")
        elif event.kind is EventKind.RELEASED:
            self.hold_reason = self.hold_code = None
        elif event.kind is EventKind.FINISHED:
            self.exit_code = d.get("exit_code")
            self.finished = event.time
        elif event.kind is EventKind.VANISHED:
            self.vanished = True
            self.removed_reason = d.get("reason", "the job left the queue")
            self.finished = event.time
        elif event.kind is EventKind.REMOVED:
            self.removed_reason = d.get("reason", "removed")
            self.finished = event.time
            if self.last_event is EventKind.EVICTED and self.evicted_running:
                self.evictions -= 1  # a running job that is removed is evicted first
        changed = new is not self.phase or event.kind in (EventKind.STARTED, EventKind.EVICTED)
        self.phase = new
        self.last_event = event.kind
        return changed


class ItemTasks(Mapping[int, int]):
    """Which job holds each item now: ``{item: task}`` in space proportional to jobs.

    A map's first jobs hold runs of items (one ``range`` each): an item is found by
    bisecting their starts.  Items that a retry moved to a new job are kept one by one.
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._runs: list[tuple[range, int]] = []
        self._moved: dict[int, int] = {}
        self._count = 0

    def assign(self, task: int, items: Sequence[int]) -> None:
        """``task`` holds ``items`` from now on."""
        if (isinstance(items, range) and items.step == 1 and len(items)
                and (not self._runs or items.start >= self._runs[-1][0].stop)
                and not self._moved):
            self._starts.append(items.start)
            self._runs.append((items, task))
            self._count += len(items)
            return
        for item in items:
            if item not in self:
                self._count += 1
            self._moved[item] = task

    def __getitem__(self, item: int) -> int:
        task = self._moved.get(item)
        if task is not None:
            return task
        at = bisect_right(self._starts, item) - 1
        if at >= 0 and item in self._runs[at][0]:
            return self._runs[at][1]
        raise KeyError(item)

    def __contains__(self, item: object) -> bool:
        try:
            self[item]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True

    def __iter__(self) -> Iterator[int]:
        seen = set(self._moved)
        for run, _ in self._runs:
            yield from (i for i in run if i not in seen)
        yield from self._moved

    def __len__(self) -> int:
        return self._count

    def moved_from(self, task: int, items: Sequence[int]) -> int:
        """How many of ``task``'s ``items`` a later job holds now."""
        if not self._moved:
            return 0
        return sum(1 for i in items if i in self._moved and self._moved[i] != task)

    def current(self, task: int, items: Sequence[int]) -> Iterator[int]:
        """The ``items`` of ``task`` that it still holds (not moved to a later job)."""
        if not self._moved:
            return iter(items)
        return (i for i in items if self._moved.get(i, task) == task)


class TaskTable:
    """Every job of a map, and which job holds each item now (the latest attempt)."""

    def __init__(self) -> None:
        self.tasks: dict[int, TaskStatus] = {}
        self.item_task = ItemTasks()

    def add_task(self, task: int, items: Sequence[int]) -> None:
        self.tasks[task] = TaskStatus(task, items)
        self.item_task.assign(task, items)

    def apply(self, event: TaskEvent) -> bool:
        status = self.tasks.get(event.task)
        if status is None or event.kind is EventKind.REPORTED:
            return False
        return status.apply(event)

    def next_task_id(self) -> int:
        return max(self.tasks, default=-1) + 1

    def copy(self) -> TaskTable:
        """A snapshot: the jobs' states copied, the item index shared (read-only use)."""
        table = TaskTable()
        table.tasks = {t: TaskStatus(**vars(s)) for t, s in self.tasks.items()}
        table.item_task = self.item_task
        return table
