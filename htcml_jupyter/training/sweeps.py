"""Hyperparameter sweeps: many trainings as one map, with live metrics and early abort.

``htc.sweep(train, grid={...})`` runs ``train(**params)`` once per point of the grid
(or per random sample of a ``space``), each trial its own job in one cluster.  The
function reports metrics while it runs (``htc.report(step=..., loss=...)``); an early-
abort policy watches them from the notebook and stops trials that will not win; the
results come back as a table.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cloudpickle

from ..backends.protocol import Backend
from ..engine.creation import create_map
from ..engine.grid import grid_points, unpack
from ..engine.mapping import Map
from ..engine.monitor import MONITOR, Watch
from ..engine.payload import PickleError
from ..engine.state import ItemState
from ..engine.store import MapStore
from ..workflows.watcher_job import pool_watcher_active, submit_watcher
from .policies import Policy
from .trials import Mode, TrialRow, TrialStatus, rank_trials

#: Seconds between two looks of a sweep's early-abort watcher at the reports.
WATCH_INTERVAL = 1.0
#: The sweep's early-abort policy, cloudpickled, in its folder.
POLICY_FILE = "policy.pkl"


# --------------------------------------------------------------------------- spaces


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from ``[low, high]``."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class LogUniform:
    """A float whose logarithm is uniform: for learning rates, weight decays."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))


@dataclass(frozen=True)
class IntUniform:
    """A whole number from ``low`` to ``high``, both included."""

    low: int
    high: int

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)


@dataclass(frozen=True)
class Choice:
    """One of ``options``, each as likely."""

    options: tuple[Any, ...]

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.options)


def uniform(low: float, high: float) -> Uniform:
    return Uniform(low, high)


def loguniform(low: float, high: float) -> LogUniform:
    if low <= 0 or high <= 0:
        raise ValueError("loguniform needs positive bounds")
    return LogUniform(low, high)


def randint(low: int, high: int) -> IntUniform:
    return IntUniform(low, high)


def choice(options: Sequence[Any]) -> Choice:
    if not options:
        raise ValueError("choice needs at least one option")
    return Choice(tuple(options))


def sample_space(space: Mapping[str, Any], n_trials: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n_trials`` random points of ``space`` (distributions, or constants), seeded."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError("space must be a non-empty dict of distributions, e.g. "
                         "{'lr': htc.loguniform(1e-4, 1e-1), 'depth': htc.choice([2, 4])}")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a whole number >= 1, not {n_trials!r}")
    rng = random.Random(seed)
    return [{k: (v.sample(rng) if hasattr(v, "sample") else v) for k, v in space.items()}
            for _ in range(n_trials)]


# --------------------------------------------------------------------------- rows


# --------------------------------------------------------------------------- sweep


class Sweep(Map):
    """A map whose items are trials: parameters in, metrics and results out.

    Everything a :class:`Map` does works (``wait``, ``results``, ``cancel``, ``retry``,
    ``panel``); a sweep adds :attr:`params`, :meth:`table`, :meth:`best`, and an
    early-abort watcher that applies its policy to the live reports.
    """

    def __init__(self, store: MapStore, backend: Backend, watch: bool = True):
        super().__init__(store, backend)
        part = self.record.sweep
        self.params: list[dict[str, Any]] = list(part.params) if part is not None else []
        self.metric: str | None = part.metric if part is not None else None
        self.mode: Mode = "max" if part is not None and part.mode == "max" else "min"
        self._policy: Policy | None = None
        self._policy_read = False
        self.watch_errors: list[str] = []
        self._results: dict[int, Any] = {}
        self._watcher: Watch | None = None
        self._watched = 0.0
        if watch and (store.path / POLICY_FILE).exists():
            self.watch()

    @property
    def policy(self) -> Policy | None:
        """The early-abort policy (unpickled from the sweep's folder on first use: only
        a process that applies it reads it, never one that only shows progress)."""
        if not self._policy_read:
            policy_file = self.store.path / POLICY_FILE
            if policy_file.exists():  # root's own file only (store.read_own)
                self._policy = cloudpickle.loads(self.store.read_own(POLICY_FILE))
            self._policy_read = True
        return self._policy

    @policy.setter
    def policy(self, policy: Policy | None) -> None:
        self._policy, self._policy_read = policy, True

    # ---------------------------------------------------------------- early abort
    def check_policy(self) -> list[int]:
        """Apply the early-abort policy once; returns the trials it stopped.  The policy
        is unpickled only when a running trial has reported (never for a settled sweep)."""
        histories = self.all_reports()
        states = self.item_states()
        aborted = self.aborted
        running = [trial for trial in histories
                   if states[trial] is ItemState.RUNNING and trial not in aborted]
        policy = self.policy if running else None
        if policy is None:
            return []
        stopped = []
        for trial in running:
            reason = policy(trial, histories[trial], histories)
            if reason:
                stopped += self.abort([trial], f"aborted early: {reason}")
        return stopped

    #: Seconds between two steps of the watcher (an adaptive sweep's are shorter).
    watch_interval = WATCH_INTERVAL

    def watch_step(self) -> list[int]:
        """One look of the watcher: apply the policy; returns the trials it stopped."""
        return self.check_policy()

    @property
    def finished(self) -> bool:
        """True when no trial will run any more (every one settled; an adaptive sweep
        also has every trial asked and told)."""
        return self.done

    def _watch(self, changed: bool) -> bool:
        """One step of the watcher, after the monitor refreshed the sweep (at most every
        ``watch_interval`` seconds unless reports came); False once it is finished."""
        if not changed and time.monotonic() - self._watched < self.watch_interval:
            return True
        self._watched = time.monotonic()
        try:
            if not pool_watcher_active(self.store):  # never both: no double abort
                self.watch_step()
            return not self.finished
        except Exception as exc:  # the watcher must not die on a transient error
            self.watch_errors.append(f"{type(exc).__name__}: {exc}")
            return True

    def watch(self) -> None:
        """Start the background watcher that applies the policy (started by default);
        it runs on the process's one monitor thread (:mod:`htcml_jupyter.engine.monitor`)."""
        if self._watcher is not None and self._watcher.active:
            return
        self._watcher = MONITOR.watch(self, self._watch, self.watch_interval)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        super().close()

    # ---------------------------------------------------------------- results
    def status_of(self, trial: int) -> TrialStatus:
        """Where one trial stands."""
        return TrialStatus.of(self.item_states()[trial], trial in self.aborted)

    def metric_names(self) -> list[str]:
        """Every metric name the trials have reported so far, sorted."""
        return sorted({k for h in self.all_reports().values() for r in h for k in r
                       if k not in ("step", "time")})

    def rows(self, with_results: bool = True) -> list[TrialRow]:
        """One row per trial: parameters, last metrics, status, time, host, restarts.

        With ``with_results`` the numbers a finished trial returned (a number, or a dict's
        numeric entries) join its metrics; the live panel leaves them out."""
        states = self.item_states()
        reports = self.all_reports()
        aborted = self.aborted
        checkpoints = self.checkpoints()
        tasks = {t.task: t for t in self.tasks()}
        used = {job.task: job for job in self.usage(live=False).jobs}
        task_of = self.parts.table.item_tasks()
        results: dict[int, Any] = {}
        for i, s in enumerate(states):
            if s is ItemState.DONE and with_results:
                results[i] = self._cached_result(i)
        rows = []
        for i, params in enumerate(self.params):
            history = reports.get(i, [])
            metrics: dict[str, float] = {}
            for row in history:
                metrics.update({k: v for k, v in row.items() if k not in ("step", "time")})
            result = results.get(i)
            if isinstance(result, Mapping):
                metrics.update({k: float(v) for k, v in result.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
            elif isinstance(result, (int, float)) and not isinstance(result, bool):
                metrics["result"] = float(result)
            task = tasks[task_of[i]]
            seconds = (task.finished - task.started
                       if task.finished and task.started else None)
            status = TrialStatus.of(states[i], i in aborted)
            ck = checkpoints.get(i, {})
            steps = [r["step"] for r in history if r.get("step") is not None]
            rows.append(TrialRow(
                i, dict(params), status, metrics, (max(steps) + 1) if steps else 0, seconds,
                task.host, task.evictions, (ck.get("resumed") or [None])[-1],
                aborted.get(i), used.get(task.task)))
        return rows

    def _cached_result(self, trial: int) -> Any:
        if trial not in self._results:
            try:
                self._results[trial] = self.result(trial)
            except Exception:
                self._results[trial] = None
        return self._results[trial]

    def panel(self) -> Any:
        """Show the live sweep panel: trials table and metric curves; returns it."""
        from ..views.sweep_panel import SweepPanel

        return SweepPanel(self).show()

    def table(self) -> Any:
        """The trials as a table: a pandas DataFrame when pandas is installed, else a
        list of dicts (one per trial)."""
        flat = [r.flat() for r in self.rows()]
        try:
            import pandas as pd
        except ImportError:
            return flat
        return pd.DataFrame(flat).set_index("trial")

    def best(self, metric: str | None = None, mode: Mode | None = None, *,
             include_running: bool = False) -> TrialRow:
        """The trial with the best value of ``metric`` (the sweep's by default): among
        finished trials, or also running ones (best so far) with ``include_running``."""
        metric = metric or self.metric
        if metric is None:
            raise ValueError("name the metric: best('val_loss') (or pass metric= to sweep)")
        rows = self.rows()
        ranked = rank_trials(rows, metric, mode or self.mode, include_running=include_running)
        if not ranked:
            known = sorted({k for r in rows for k in r.metrics})
            raise ValueError(f"no {'' if include_running else 'finished '}trial has "
                             f"{metric!r} (metrics seen: {', '.join(known) or 'none'})")
        return ranked[0]


def create_sweep(function: Callable[..., Any], *, grid: Mapping[str, Sequence[Any]] | None,
                 space: Mapping[str, Any] | None, n_trials: int | None, repeat: int,
                 seed: int, metric: str | None, mode: Mode, early_stop: Policy | None,
                 kwargs: dict[str, Any] | None, backend: Backend, root: Path,
                 name: str | None, options: dict[str, Any],
                 watcher: Literal["pool", "kernel"] = "pool") -> Sweep:
    """Build the trials, submit them as one map, and return the :class:`Sweep`.

    With a policy on an HTCondor pool and ``watcher="pool"``, a local-universe job on
    the submit host applies it too (:mod:`htcml_jupyter.workflows.watch`), so trials
    are still stopped after this process ends; ``"kernel"`` keeps the watcher here only.
    """
    if watcher not in ("pool", "kernel"):
        raise ValueError(f"watcher must be 'pool' or 'kernel', not {watcher!r}")
    if (grid is None) == (space is None):
        raise ValueError("give exactly one of grid= (a dict of lists) or space= (a dict of "
                         "distributions, with n_trials=)")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    if early_stop is not None and not callable(early_stop):
        raise TypeError("early_stop must be a policy (e.g. htc.MedianStopping('loss')) or "
                        "a function (trial, history, histories) -> reason or None")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a whole number >= 1, not {repeat!r}")
    if space is not None:
        points = sample_space(space, n_trials if n_trials is not None else 10, seed)
    elif n_trials is not None:
        raise ValueError("n_trials= goes with space=, not with grid=")
    else:
        points = grid_points(grid or {})
    params = []
    for point in points:
        for k in range(repeat):
            trial = dict(point)
            if repeat > 1:
                trial.setdefault("seed", seed + k)
            params.append(trial)
    policy_bytes = None
    if early_stop is not None:
        try:  # before anything is queued: a policy that cannot travel stops the sweep here
            policy_bytes = cloudpickle.dumps(early_stop)
        except Exception as exc:
            raise PickleError(f"the early_stop policy cannot be pickled "
                              f"({type(exc).__name__}: {exc}); nothing was submitted. Use "
                              f"a policy or a module-level function without open files, "
                              f"locks or connections") from exc
    fn_name = getattr(function, "__name__", "sweep")
    wrapped = unpack(function)
    m = create_map(wrapped, params, kwargs=kwargs, backend=backend, root=root, name=name,
                   chunksize=1, options=options,
                   extra_meta={"kind": "sweep",
                               "sweep": {"params": params, "metric": metric, "mode": mode,
                                         "function": fn_name}})
    if policy_bytes is not None:
        m.store.write_file(POLICY_FILE, policy_bytes)  # no link in the folder followed
        if backend.can_run_watcher and watcher == "pool":
            submit_watcher(m.store, backend)  # the policy outlives this process
    m.close()
    return Sweep(m.store, backend)
