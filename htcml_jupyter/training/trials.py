"""Trials of a sweep: their status, their row in the trials table, and their ranking."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..engine.state import ItemState
from ..engine.usage import JobUsage

Mode = Literal["min", "max"]


class TrialStatus(str, enum.Enum):
    """Where a trial stands: an item state, or stopped on purpose by the early-abort
    policy."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    HELD = "held"
    REMOVED = "removed"
    ABORTED = "aborted early"

    @classmethod
    def of(cls, state: ItemState, aborted: bool) -> TrialStatus:
        """The trial status of an item in ``state`` (``aborted``: stopped on purpose)."""
        if state is ItemState.REMOVED and aborted:
            return cls.ABORTED
        return cls(state.value)


@dataclass(frozen=True)
class TrialRow:
    """One trial in a sweep's table."""

    trial: int
    params: dict[str, Any]
    status: TrialStatus
    metrics: dict[str, float]
    steps: int
    seconds: float | None
    host: str | None
    evictions: int
    resumed_from: Any
    reason: str | None
    #: What the trial's job used (figures so far while it runs; None before it ran).
    usage: JobUsage | None = None

    def flat(self) -> dict[str, Any]:
        """The row as one flat dict: trial, parameters, metrics, status, and the usage
        columns of :data:`USAGE_COLUMNS`."""
        u = self.usage
        return {"trial": self.trial, **self.params, **self.metrics, "status": self.status.value,
                "steps": self.steps, "seconds": self.seconds, "host": self.host,
                "evictions": self.evictions, "resumed_from": self.resumed_from,
                "reason": self.reason,
                **{c: getattr(u, c) if u is not None else None for c in USAGE_COLUMNS}}


#: What a trial's job used, as columns of the trials table (see
#: :class:`~htcml_jupyter.engine.usage.JobUsage`).
USAGE_COLUMNS = ("wall_seconds", "cpu_seconds", "memory_mb", "memory_requested_mb",
                 "disk_mb", "disk_requested_mb", "gpus_allocated", "gpus_used", "core_hours",
                 "gpu_hours")


def rank_trials(rows: Sequence[TrialRow], metric: str, mode: Mode, *,
                include_running: bool = False) -> list[TrialRow]:
    """The trials that have ``metric``, best first (finished ones, plus running ones with
    ``include_running``)."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    wanted = ({TrialStatus.DONE, TrialStatus.RUNNING} if include_running
              else {TrialStatus.DONE})
    candidates = [r for r in rows if r.status in wanted and metric in r.metrics]
    return sorted(candidates, key=lambda r: r.metrics[metric], reverse=mode == "max")
