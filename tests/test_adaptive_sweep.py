"""Adaptive sweeps on Optuna: a study asks for each trial, a pruner stops bad ones, and
the search goes on in the watcher job when the kernel dies (on the project's pool)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.engine.store import MapStore
from htcml_jupyter.training.adaptive import STUDY_FILE, TRIALS_FILE, AdaptiveSweep
from htcml_jupyter.training.study import distributions, make_pruner, make_sampler
from htcml_jupyter.views.progress import snapshot
from htcml_jupyter.workflows.watcher_job import watcher_record, write_record
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parent.parent
SPACE = {"x": htc.uniform(-5, 5), "y": htc.uniform(-5, 5)}
COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED


def bowl(x: float, y: float) -> dict[str, float]:
    """A known 2-D function: its minimum, 0, is at (1, -2)."""
    return {"loss": (x - 1) ** 2 + (y + 2) ** 2}


def steady(x: float, steps: int = 12, pause: float = 0.5) -> float:
    """Reports ``val_loss = x`` at every step: bad from the first report when x > 1."""
    import time

    import htcml_jupyter as htc

    for step in range(steps):
        htc.report(step=step, val_loss=x)
        time.sleep(pause)
    return x


def _history(pool: str, constraint: str, projection: list[str]) -> list[Any]:
    with pool_config(pool) as htcondor2:
        return list(htcondor2.Schedd().history(constraint, projection))


def _most_at_once(s: htc.Sweep) -> int:
    """The most trials whose jobs ran at the same time."""
    spans = [(t.started, t.finished) for t in s.tasks() if t.started and t.finished]
    return max(sum(1 for a, b in spans if a <= start < b) for start, _ in spans)


# ---------------------------------------------------------------- without a pool


def test_names_and_spaces_map_to_optuna() -> None:
    assert isinstance(make_sampler("tpe", 3), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("random", 3), optuna.samplers.RandomSampler)
    own = optuna.samplers.TPESampler(n_startup_trials=2)
    assert make_sampler(own, 0) is own
    assert isinstance(make_pruner("hyperband"), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("median"), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner(None), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="'tpe', 'random'"):
        make_sampler("bayes", 0)
    with pytest.raises(ValueError, match="'hyperband'"):
        make_pruner("early")
    found, fixed = distributions({"lr": htc.loguniform(1e-4, 1e-1), "depth": htc.randint(1, 4),
                                  "act": htc.choice(["relu", "tanh"]), "x": htc.uniform(0, 1),
                                  "epochs": 5})
    d = optuna.distributions
    assert found == {"lr": d.FloatDistribution(1e-4, 1e-1, log=True),
                     "depth": d.IntDistribution(1, 4),
                     "act": d.CategoricalDistribution(("relu", "tanh")),
                     "x": d.FloatDistribution(0, 1)}
    assert fixed == {"epochs": 5}
    with pytest.raises(ValueError, match="numbers, strings"):
        distributions({"f": htc.choice([len, max])})


def test_adaptive_options_are_checked_before_anything_is_queued(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sampler='tpe'"):
        htc.sweep(bowl, space=SPACE, n_trials=4, pruner="median", backend="local",
                  root=tmp_path)
    with pytest.raises(ValueError, match="pruner= \\(not early_stop=\\)"):
        htc.sweep(bowl, space=SPACE, n_trials=4, sampler="tpe", backend="local",
                  early_stop=htc.MedianStopping("loss"), root=tmp_path)
    with pytest.raises(ValueError, match="a pruner needs metric="):
        htc.sweep(bowl, space=SPACE, n_trials=4, sampler="tpe", pruner="median",
                  backend="local", root=tmp_path)
    with pytest.raises(ValueError, match="n_trials="):
        htc.sweep(bowl, space=SPACE, sampler="tpe", metric="loss", backend="local",
                  root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_panel_counts_trials_not_asked_yet(tmp_path: Path) -> None:
    s = htc.sweep(bowl, space=SPACE, n_trials=6, sampler="random", max_concurrent=2,
                  metric="loss", backend="local", root=tmp_path)
    try:
        first = snapshot(s)
        assert len(s) == 2 and first.total == 6 and first.headline.endswith("/ 6 done")
        assert not first.finished and first.counts[htc.ItemState.IDLE] >= 4
        assert s.wait(timeout=120)
        last = snapshot(s)
        assert last.headline == "6 / 6 done" and last.finished and len(s) == 6
        assert [r.trial for r in s.rows()] == list(range(6))
    finally:
        s.close()


# ---------------------------------------------------------------- on the pool


@pytest.mark.pool
def test_tpe_finds_better_than_random_over_five_seeds(pool_env: str, map_root: Path) -> None:
    # Seed 0 runs on the pool; seeds 1-4 run the same ask/tell loop (AdaptiveSweep's
    # watch_step, in this process) over local processes, to keep the job count modest.
    n_trials, at_once = 20, 4
    sweeps: dict[tuple[str, int], htc.Sweep] = {}
    for seed in range(5):
        local = {} if seed == 0 else {"backend": "local"}
        for kind in ("tpe", "random"):
            sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
                       if kind == "tpe" else "random")
            sweeps[kind, seed] = htc.sweep(
                bowl, space=SPACE, n_trials=n_trials, sampler=sampler, seed=seed,
                max_concurrent=at_once, metric="loss", mode="min", root=map_root,
                name=f"{kind}-{seed}", **local)  # type: ignore[arg-type]
    best: dict[str, list[float]] = {"tpe": [], "random": []}
    for (kind, seed), s in sweeps.items():
        assert isinstance(s, AdaptiveSweep)
        assert s.wait(timeout=400), f"{kind} seed {seed} did not finish"
        study = s.study
        assert [t.state for t in study.trials] == [COMPLETE] * n_trials
        assert len(s) == n_trials and len(s.rows()) == n_trials
        assert {r.trial: r.params for r in s.rows()} == {
            i: study.trials[s.trial_of[i]].params for i in range(n_trials)}
        assert s.best().metrics["loss"] == pytest.approx(study.best_value)
        assert len({(p["x"], p["y"]) for p in s.params}) == n_trials  # no point twice
        assert _most_at_once(s) <= at_once
        best[kind].append(study.best_value)
        if seed == 0:  # one map, its trials queued as they were asked
            assert len(s.clusters) > 1 and len(s.store.submissions()) == len(s.clusters)
            assert (s.store.path / STUDY_FILE).is_file()
        s.close()
    assert statistics.mean(best["tpe"]) < statistics.mean(best["random"]), best


@pytest.mark.pool
def test_pruned_trials_are_aborted_and_leave_the_queue(pool_env: str, map_root: Path) -> None:
    steps, pause = 14, 0.5
    s = htc.sweep(steady, space={"x": htc.uniform(0, 2)}, n_trials=6, sampler="random",
                  seed=5, max_concurrent=6, metric="val_loss",
                  pruner=optuna.pruners.ThresholdPruner(upper=1.0),
                  kwargs={"steps": steps, "pause": pause}, root=map_root)
    assert isinstance(s, AdaptiveSweep)
    assert s.wait(timeout=240)
    study = s.study
    xs = {s.trial_of[i]: p["x"] for i, p in enumerate(s.params)}
    bad = {n for n, x in xs.items() if x > 1.0}
    assert bad and len(bad) < len(xs)  # the seed gives both kinds
    assert {t.number for t in study.trials if t.state is PRUNED} == bad
    assert {t.number for t in study.trials if t.state is COMPLETE} == set(xs) - bad
    rows = {s.trial_of[r.trial]: r for r in s.rows()}
    for n in bad:
        assert rows[n].status == "aborted early"
        assert "pruned by ThresholdPruner" in str(rows[n].reason)
        assert rows[n].steps < steps  # stopped long before its end
    assert all(rows[n].status == "done" for n in set(xs) - bad)
    # the pruned trials' jobs were removed by the watcher; none is left in the queue
    with pool_config(pool_env) as htcondor2:
        assert htcondor2.Schedd().query(constraint=f'HtcmlMap == "{s.name}"',
                                        projection=["ClusterId"]) == []
    removed = _history(pool_env, f'HtcmlMap == "{s.name}" && JobStatus == 3',
                       ["ClusterId", "ProcId"])
    by_item = {v: k for k, v in s.trial_of.items()}
    assert {f"{ad['ClusterId']}.{ad['ProcId']}" for ad in removed} == {
        s.job_of(by_item[n]).job_id for n in bad}
    assert sorted(watcher_record(s.store)["aborted"]) == sorted(by_item[n] for n in bad)
    s.close()


KERNEL = textwrap.dedent('''
    import sys
    import htcml_jupyter as htc

    def bowl(x, y):
        import time
        time.sleep(1.5)
        return {"loss": (x - 1) ** 2 + (y + 2) ** 2}

    s = htc.sweep(bowl, space={"x": htc.uniform(-5, 5), "y": htc.uniform(-5, 5)},
                  n_trials=N_TRIALS, sampler="tpe", max_concurrent=3, metric="loss",
                  root=sys.argv[1], pool=sys.argv[2])
    print(s.name, len(s), flush=True)
    import time; time.sleep(600)
''')


@pytest.mark.pool
def test_the_search_goes_on_after_the_kernel_is_killed(pool_env: str, map_root: Path) -> None:
    n_trials = 10
    path = map_root / "kernel.py"
    path.write_text(KERNEL.replace("N_TRIALS", str(n_trials)))
    proc = subprocess.Popen([sys.executable, str(path), str(map_root), pool_env],
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        name, asked = proc.stdout.readline().split()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert int(asked) == 3  # the kernel asked for the first trials only
    store = MapStore(map_root / name)
    wait_until(lambda: watcher_record(store).get("state") == "finished", timeout=300,
               interval=0.5, message="the watcher did not finish the search")
    assert watcher_record(store)["errors"] == []
    s = htc.attach(name, root=map_root)
    assert isinstance(s, AdaptiveSweep)
    assert s.wait(timeout=30)
    assert [t.state for t in s.study.trials] == [COMPLETE] * n_trials
    assert [r.status for r in s.rows()] == ["done"] * n_trials
    rows = [json.loads(line) for line in (store.path / TRIALS_FILE).read_text().splitlines()]
    assert sorted(r["trial"] for r in rows) == list(range(n_trials))
    assert s.best().metrics["loss"] == pytest.approx(s.study.best_value)
    watcher = wait_until(lambda: _history(pool_env, f'HtcmlWatcherOf == "{name}"',
                                          ["ExitCode", "JobUniverse"]),
                         timeout=30, interval=0.5, message="no watcher in the history")
    assert [(ad["ExitCode"], ad["JobUniverse"]) for ad in watcher] == [(0, 12)]
    s.close()


def slow_bowl(x: float, y: float) -> dict[str, float]:
    import time

    time.sleep(1.0)
    return {"loss": (x - 1) ** 2 + (y + 2) ** 2}


@pytest.mark.pool
def test_a_silent_watcher_is_replaced_by_a_new_watcher_job(pool_env: str,
                                                          map_root: Path) -> None:
    s = htc.sweep(slow_bowl, space=SPACE, n_trials=8, sampler="tpe", max_concurrent=2,
                  metric="loss", root=map_root)
    assert isinstance(s, AdaptiveSweep)
    uid = s.backend.job_uid
    if uid in (None, 0) or os.geteuid() != 0:
        pytest.skip("only where root submits for the pool's job user")
    first = wait_until(lambda: watcher_record(s.store).get("state") == "watching"
                       and watcher_record(s.store)["job"], timeout=60, interval=0.3,
                       message="the watcher did not start")
    with pool_config(pool_env) as htcondor2:
        htcondor2.Schedd().act(htcondor2.JobAction.Remove, [first])
    wait_until(lambda: _history(pool_env, f'HtcmlWatcherOf == "{s.name}"', ["ClusterId"]),
               timeout=30, interval=0.3, message="the removed watcher did not leave")
    # the watcher fell silent long ago: the kernel's watcher must act, as root
    write_record(s.store, {"state": "watching", "job": first, "submitted": None,
                           "heartbeat": time.time() - 60, "aborted": [], "errors": []})
    assert s.wait(timeout=240)
    assert [t.state for t in s.study.trials] == [COMPLETE] * 8
    record = watcher_record(s.store)
    assert record["state"] == "finished" and record["job"] != first
    def watchers() -> list[Any]:
        found = _history(pool_env, f'HtcmlWatcherOf == "{s.name}"', ["ClusterId", "ExitCode"])
        return found if len(found) == 2 else []

    ads = wait_until(watchers, timeout=30, interval=0.5,
                     message="no second watcher in the history")
    assert sorted(f"{ad['ClusterId']}.0" for ad in ads)[-1] == record["job"]
    # root never wrote the study: it stayed the job user's
    assert (s.store.path / STUDY_FILE).stat().st_uid == uid
    assert s.watch_errors == []
    s.close()
