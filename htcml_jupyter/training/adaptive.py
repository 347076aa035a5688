"""Adaptive sweeps: an Optuna study decides each trial from the finished ones.

``htc.sweep(train, space={...}, n_trials=60, sampler="tpe", pruner="hyperband",
metric="val_loss", max_concurrent=8)`` asks the study for at most ``max_concurrent``
trials at a time; each is one more job of the sweep's one map (:meth:`Map.extend`).
Reports of ``metric`` become ``trial.report(value, step)``; a trial the pruner stops
is aborted like any early-stopped trial and told as pruned; a finished trial is told
with its value.  The study lives in the map folder (:data:`STUDY_FILE`, Optuna's
journal file: ``optuna-dashboard <map folder>/study.log`` opens it), and the ask/tell
loop (:meth:`AdaptiveSweep.watch_step`) runs in the sweep's pool-side watcher job, or
in this process when there is none.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cloudpickle

from ..backends.protocol import Backend
from ..engine import folder_files
from ..engine.creation import create_map
from ..engine.grid import unpack
from ..engine.payload import PickleError
from ..engine.state import ItemState
from ..engine.store import MapStore, new_map_name
from ..workflows.watcher_job import WATCHER_SILENT_AFTER, submit_watcher, watcher_record
from .study import (
    distributions,
    journal_storage,
    make_pruner,
    make_sampler,
    optuna_module,
    quiet_optuna,
)
from .sweeps import Sweep
from .trials import Mode

if TYPE_CHECKING:
    import optuna

#: The study's journal in the map folder.
STUDY_FILE = "study.log"
#: The study's sampler and pruner, cloudpickled (root's own: only unpickled when so).
OPTUNA_FILE = "optuna.pkl"
#: One line per asked trial: ``{"item", "trial", "params", "time"}`` (when it was queued).
TRIALS_FILE = "trials.jsonl"
#: Seconds between two steps of the ask/tell loop.
ADAPTIVE_INTERVAL = 0.2

class AdaptiveSweep(Sweep):
    """A sweep whose trials an Optuna study asks for while earlier ones finish.

    Everything a :class:`Sweep` does works; :attr:`study` is the ``optuna.Study``,
    :meth:`plot_history` and :meth:`plot_importances` draw Optuna's plots, and
    :meth:`wait` returns once all ``n_trials`` were asked and told.
    """

    watch_interval = ADAPTIVE_INTERVAL

    def __init__(self, store: MapStore, backend: Backend, watch: bool = True):
        self.trial_of: dict[int, int] = {}
        self._trials_lock = threading.RLock()  # trial_of and params
        self._trials_seen = 0
        self._tasks_size = self._trials_size = -1
        self._study: Any = None
        self._search: Any = None
        self._space: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        super().__init__(store, backend, watch=False)
        info = self.record.adaptive or {}
        self.n_trials = int(info["n_trials"])
        self.max_concurrent = int(info["max_concurrent"])
        self.params = []
        self.follow_new_items()
        if watch:
            self.watch()

    # ---------------------------------------------------------------- following
    def follow_new_items(self) -> None:
        """Follow the trials the loop (here or in the watcher job) has added."""
        size, trials_size = _size(self.store, "tasks.jsonl"), _size(self.store, TRIALS_FILE)
        if size != self._tasks_size:
            super().follow_new_items()
            self._tasks_size = size
        if trials_size == self._trials_size:
            return
        rows = _read_rows(self.store, TRIALS_FILE)
        with self._trials_lock:
            self._trials_size = trials_size
            for row in rows[self._trials_seen:]:
                item = int(row["item"])
                self.trial_of[item] = int(row["trial"])
                self.params.extend({} for _ in range(item + 1 - len(self.params)))
                self.params[item] = dict(row["params"])
            self._trials_seen = len(rows)

    def refresh(self) -> bool:
        self.follow_new_items()
        return super().refresh()

    def _record_trials(self, numbers: list[int], params: list[dict[str, Any]]
                       ) -> Callable[[list[int]], None]:
        def record(items: list[int]) -> None:
            folder_files.append(self.store.path, TRIALS_FILE, "".join(
                json.dumps({"item": i, "trial": n, "params": p, "time": time.time()}) + "\n"
                for i, n, p in zip(items, numbers, params, strict=True)).encode())
        return record

    # ---------------------------------------------------------------- study
    @property
    def study(self) -> optuna.Study:
        """The sweep's ``optuna.Study``, read from its journal in the map folder."""
        if self._study is None:
            optuna = optuna_module()
            with quiet_optuna():
                self._study = optuna.load_study(
                    study_name=self.name, storage=journal_storage(self.store.path / STUDY_FILE),
                    sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner())
        return self._study

    def _search_study(self) -> Any:
        """The study with the sweep's own sampler and pruner (the loop's).

        The sampler was saved as it stood after the first trials were asked, so the
        loop that goes on from there draws what the creating process would have drawn
        (a seeded sweep is repeatable).  A loop that takes over later (another watcher,
        or the kernel after the watcher went silent) reseeds it: the saved state would
        draw the same points again."""
        if self._search is None:
            optuna = optuna_module()
            sampler, pruner, space = cloudpickle.loads(self.store.read_own(OPTUNA_FILE))
            self._space = distributions(space)
            with quiet_optuna():
                self._search = optuna.load_study(
                    study_name=self.name, storage=journal_storage(self.store.path / STUDY_FILE),
                    sampler=sampler, pruner=pruner)
                first = int((self.record.adaptive or {}).get("first", 0))
                if len(self._search.get_trials(deepcopy=False)) > first:
                    sampler.reseed_rng()
        return self._search

    def plot_history(self) -> Any:
        """Optuna's optimization history plot (plotly) of the study."""
        return optuna_module().visualization.plot_optimization_history(self.study)

    def plot_importances(self) -> Any:
        """Optuna's hyperparameter importance plot (plotly) of the study."""
        return optuna_module().visualization.plot_param_importances(self.study)

    # ---------------------------------------------------------------- the loop
    def _value(self, item: int, history: list[dict[str, Any]]) -> float | None:
        result = self._cached_result(item)
        value: Any = None
        if isinstance(result, Mapping) and self.metric is not None:
            value = result.get(self.metric)
        elif isinstance(result, (int, float)) and not isinstance(result, bool):
            value = result
        if value is None and self.metric is not None:
            values = [r[self.metric] for r in history if self.metric in r]
            value = values[-1] if values else None
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None

    def _intermediate(self, history: list[dict[str, Any]]) -> list[tuple[int, float]]:
        if self.metric is None:
            return []
        out = []
        for k, row in enumerate(history):
            if self.metric in row:
                step = row.get("step")
                out.append((int(step) if step is not None else k, float(row[self.metric])))
        return out

    def watch_step(self) -> list[int]:
        """One round of the ask/tell loop: report new values, prune, tell settled trials,
        ask for new ones up to ``max_concurrent``; returns the trials pruned."""
        if self._hand_to_pool():
            return []
        optuna = optuna_module()
        TrialState = optuna.trial.TrialState
        study = self._search_study()
        with quiet_optuna():
            states = self.item_states()
            reports = self.all_reports()
            aborted = self.aborted
            trials = {t.number: t for t in study.get_trials(deepcopy=False)}
            pruned: list[int] = []
            with self._trials_lock:
                trial_of = dict(self.trial_of)
            for item, number in trial_of.items():
                frozen = trials.get(number)
                if frozen is None or frozen.state is not TrialState.RUNNING:
                    continue
                state = states[item]
                history = reports.get(item, [])
                new = [(step, v) for step, v in self._intermediate(history)
                       if step not in frozen.intermediate_values]
                trial = optuna.trial.Trial(study, frozen._trial_id) if new else None
                for step, v in dict(new).items():
                    trial.report(v, step)  # type: ignore[union-attr]
                if state is ItemState.RUNNING and item not in aborted:
                    if trial is not None and trial.should_prune():
                        reason = (f"pruned by {type(study.pruner).__name__} at step "
                                  f"{new[-1][0]}")
                        if self.abort([item], f"aborted early: {reason}"):
                            pruned.append(item)
                            study.tell(number, state=TrialState.PRUNED,
                                       skip_if_finished=True)
                    continue
                if not state.settled:
                    continue
                value = self._value(item, history) if state is ItemState.DONE else None
                if value is not None:
                    study.tell(number, value, skip_if_finished=True)
                elif item in aborted and (new or frozen.intermediate_values):
                    study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
                else:
                    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            self._ask(study, trial_of)
        return pruned

    def _hand_to_pool(self) -> bool:
        """Root never writes a study that the pool's job user owns (a link put in its
        place could lead anywhere): where root submits for that user, a silent watcher
        is replaced by a new watcher job, which runs the loop as that user.  True when
        the loop was handed over."""
        if os.geteuid() != 0:
            return False
        owner = (self.store.path / STUDY_FILE).lstat().st_uid
        if owner == 0:
            return False
        if not self.backend.can_run_watcher:
            raise folder_files.UnsafeEntry(
                f"{self.store.path / STUDY_FILE} belongs to uid {owner}: run the search as "
                f"that user, not as root")
        submitted = watcher_record(self.store).get("submitted")
        if self.finished or time.time() - float(submitted or 0) < WATCHER_SILENT_AFTER:
            return True  # nothing left to do, or one was queued a moment ago
        submit_watcher(self.store, self.backend)
        return True

    def _ask(self, study: Any, trial_of: dict[int, int]) -> None:
        TrialState = optuna_module().trial.TrialState
        space, fixed = self._space
        all_trials = study.get_trials(deepcopy=False)
        running = [t for t in all_trials if t.state is TrialState.RUNNING]
        known = set(trial_of.values())
        # asked but never queued (the loop stopped between ask and queue): queue them now
        numbers = [t.number for t in running if t.number not in known]
        params = [{**fixed, **t.params} for t in running if t.number not in known]
        free = self.max_concurrent - len(running)
        for _ in range(min(free, self.n_trials - len(all_trials))):
            trial = study.ask(space)
            numbers.append(trial.number)
            params.append({**fixed, **trial.params})
        if numbers:
            self.extend(params, on_written=self._record_trials(numbers, params))

    @property
    def planned_items(self) -> int:
        """How many trials the sweep will have once all are asked (its panel counts
        those not asked yet as waiting)."""
        return max(self.n_trials, self.n_items)

    @property
    def finished(self) -> bool:
        """Every trial asked, settled and told."""
        if self.n_items < self.n_trials or not self.done:
            return False
        state = optuna_module().trial.TrialState.RUNNING
        return not self.study.get_trials(deepcopy=False, states=(state,))

    def wait(self, timeout: float | None = None, poll: float = 0.2,
             progress: Callable[[dict[str, int]], None] | None = None) -> bool:
        """Block until all ``n_trials`` were asked, have settled and were told (True),
        or ``timeout`` seconds ran out (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            super().wait(timeout=left, poll=poll, progress=progress)
            if self.finished:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll)


def _size(store: MapStore, rel: str) -> int:
    try:
        return (store.path / rel).stat().st_size
    except FileNotFoundError:
        return 0


def _read_rows(store: MapStore, rel: str) -> list[dict[str, Any]]:
    try:
        text = folder_files.read_bytes(store.path, rel, limit=None).decode()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a line still being written: the rest comes at the next look
    return rows


def create_adaptive_sweep(function: Callable[..., Any], *, space: Mapping[str, Any] | None,
                          n_trials: int | None, grid: Any = None, early_stop: Any = None,
                          repeat: int = 1, sampler: Any, pruner: Any,
                          max_concurrent: int | None, seed: int, metric: str | None,
                          mode: Mode, kwargs: dict[str, Any] | None, backend: Backend,
                          root: Path, name: str | None, options: dict[str, Any],
                          watcher: Literal["pool", "kernel"] = "pool") -> AdaptiveSweep:
    """Create the study, ask for the first trials, queue them as the sweep's map and
    start the ask/tell loop (in the watcher job on a pool); returns the sweep."""
    optuna = optuna_module()
    if grid is not None or early_stop is not None or repeat != 1:
        raise ValueError("an adaptive sweep (sampler=) takes space= and n_trials=; stop "
                         "trials early with pruner= (not early_stop=), without grid= or "
                         "repeat=")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    if watcher not in ("pool", "kernel"):
        raise ValueError(f"watcher must be 'pool' or 'kernel', not {watcher!r}")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"an adaptive sweep needs n_trials= (a whole number >= 1), not "
                         f"{n_trials!r}")
    if max_concurrent is None:
        max_concurrent = max(1, min(n_trials, backend.capacity(_options(options))))
    if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) \
            or max_concurrent < 1:
        raise ValueError(f"max_concurrent must be a whole number >= 1, not {max_concurrent!r}")
    if not isinstance(space, Mapping) or not space:
        raise ValueError("an adaptive sweep needs space= (a dict of distributions)")
    space_d, fixed = distributions(space)
    sampler_obj, pruner_obj = make_sampler(sampler, seed), make_pruner(pruner)
    if metric is None and not isinstance(pruner_obj, optuna.pruners.NopPruner):
        raise ValueError("a pruner needs metric= (the name the trials report with "
                         "htc.report(step=..., <metric>=...))")
    try:  # before anything is queued (saved again once the first trials are asked)
        cloudpickle.dumps((sampler_obj, pruner_obj, dict(space)))
    except Exception as exc:
        raise PickleError(f"the sampler or pruner cannot be pickled ({type(exc).__name__}: "
                          f"{exc}); nothing was submitted") from exc
    fn_name = getattr(function, "__name__", "sweep")
    name = name or new_map_name(fn_name)
    first = min(max_concurrent, n_trials)
    with tempfile.TemporaryDirectory() as tmp, quiet_optuna():
        journal = Path(tmp) / STUDY_FILE
        study = optuna.create_study(
            storage=journal_storage(journal), study_name=name, sampler=sampler_obj,
            pruner=pruner_obj, direction="minimize" if mode == "min" else "maximize")
        asked = [study.ask(space_d) for _ in range(first)]
        params = [{**fixed, **t.params} for t in asked]
        meta: dict[str, Any] = {"params": [], "metric": metric, "mode": mode, "function": fn_name,
                "adaptive": {"n_trials": n_trials, "max_concurrent": max_concurrent,
                             "sampler": type(sampler_obj).__name__,
                             "pruner": type(pruner_obj).__name__, "seed": seed,
                             "first": first}}
        m = create_map(unpack(function), params, kwargs=kwargs, backend=backend, root=root,
                       name=name, chunksize=1, options=options,
                       extra_meta={"kind": "sweep", "sweep": meta})
        del study
        shutil.move(str(journal), str(m.store.path / STUDY_FILE))
    m.store.write_file(OPTUNA_FILE, cloudpickle.dumps((sampler_obj, pruner_obj, dict(space))))
    folder_files.append(m.store.path, TRIALS_FILE, "".join(
        json.dumps({"item": i, "trial": t.number, "params": p, "time": time.time()}) + "\n"
        for i, (t, p) in enumerate(zip(asked, params, strict=True))).encode())
    if backend.can_run_watcher and watcher == "pool":
        submit_watcher(m.store, backend)  # the search goes on after this process ends
    m.close()
    return AdaptiveSweep(m.store, backend)


def _options(options: dict[str, Any]) -> Any:
    from ..engine.options import SubmitOptions

    return SubmitOptions.from_kwargs(options)


def open_sweep(store: MapStore, backend: Backend, watch: bool = True) -> Sweep:
    """The sweep in ``store``: an :class:`AdaptiveSweep` when it was made with a sampler."""
    if store.read_record().adaptive is not None:
        return AdaptiveSweep(store, backend, watch=watch)
    return Sweep(store, backend, watch=watch)
