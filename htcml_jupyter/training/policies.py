"""Early-abort policies for sweeps: decide from live reports which trials to stop.

A policy is any callable ``policy(trial, history, histories) -> str | None``: ``history``
is the trial's reports so far (dicts with ``step`` and the metrics), ``histories`` the
reports of every trial; it returns a reason to stop the trial, or None to let it run.
A stopped trial's job is removed (its slot goes to a waiting trial) and the trial is
recorded as *aborted early* with its last metrics.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["min", "max"]
History = list[dict[str, Any]]
Policy = Callable[[int, History, dict[int, History]], "str | None"]


def _value_at(history: History, metric: str, step: int) -> float | None:
    """The metric's last value reported at or before ``step``."""
    found = None
    for row in history:
        s = row.get("step")
        if s is not None and s <= step and metric in row:
            found = float(row[metric])
    return found


def _last_step(history: History, metric: str) -> int | None:
    steps = [r["step"] for r in history if r.get("step") is not None and metric in r]
    return max(steps) if steps else None


def _reached(history: History, metric: str, step: int) -> bool:
    last = _last_step(history, metric)
    return last is not None and last >= step


def _worse(a: float, b: float, mode: Mode) -> bool:
    return a > b if mode == "min" else a < b


@dataclass(frozen=True)
class Threshold:
    """Stop a trial whose ``metric`` at ``step`` is worse than ``value``."""

    metric: str
    step: int
    value: float
    mode: Mode = "min"

    def __call__(self, trial: int, history: History, histories: dict[int, History]
                 ) -> str | None:
        last = _last_step(history, self.metric)
        if last is None or last < self.step:
            return None
        v = _value_at(history, self.metric, self.step)
        if v is not None and _worse(v, self.value, self.mode):
            return f"{self.metric}={v:.4g} at step {self.step} is worse than {self.value:.4g}"
        return None


@dataclass(frozen=True)
class MedianStopping:
    """The median stopping rule: stop a trial whose best ``metric`` so far is worse than
    the median of the other trials' values at the same step.

    Judged from ``grace_steps`` on, once at least ``min_trials`` other trials reached
    that step.
    """

    metric: str
    mode: Mode = "min"
    grace_steps: int = 1
    min_trials: int = 3

    def __call__(self, trial: int, history: History, histories: dict[int, History]
                 ) -> str | None:
        last = _last_step(history, self.metric)
        if last is None or last < self.grace_steps:
            return None
        # Judge at the latest step that enough other trials reached (a trial that runs
        # ahead of the others is compared where they are).
        for step in range(last, self.grace_steps - 1, -1):
            others = [v for other, rows in histories.items()
                      if other != trial and _reached(rows, self.metric, step)
                      and (v := _value_at(rows, self.metric, step)) is not None]
            if len(others) < self.min_trials:
                continue
            values = [float(r[self.metric]) for r in history if self.metric in r
                      and r.get("step") is not None and r["step"] <= step]
            best = min(values) if self.mode == "min" else max(values)
            median = statistics.median(others)
            if _worse(best, median, self.mode):
                return (f"best {self.metric}={best:.4g} by step {step} is worse than the "
                        f"median {median:.4g} of {len(others)} other trials")
            return None
        return None


@dataclass(frozen=True)
class SuccessiveHalving:
    """Successive halving: at each rung step, only the best ``1/eta`` of the trials that
    reached that rung go on.

    ``rungs`` are the steps at which trials are compared (e.g. ``(1, 3, 9)``).  A trial
    is judged at a rung once at least ``eta`` trials reported there.
    """

    metric: str
    rungs: tuple[int, ...] = (1, 3, 9)
    eta: int = 3
    mode: Mode = "min"

    def __call__(self, trial: int, history: History, histories: dict[int, History]
                 ) -> str | None:
        last = _last_step(history, self.metric)
        if last is None:
            return None
        for rung in self.rungs:
            if last < rung:
                break
            mine = _value_at(history, self.metric, rung)
            if mine is None:
                continue
            peers = [v for rows in histories.values()
                     if _reached(rows, self.metric, rung)
                     and (v := _value_at(rows, self.metric, rung)) is not None]
            if len(peers) < self.eta:
                continue
            keep = max(1, len(peers) // self.eta)
            ranked = sorted(peers, reverse=self.mode == "max")
            cutoff = ranked[keep - 1]
            if _worse(mine, cutoff, self.mode):
                return (f"{self.metric}={mine:.4g} at rung {rung} is outside the best {keep} "
                        f"of {len(peers)}")
        return None
