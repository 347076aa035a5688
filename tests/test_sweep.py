"""Sweeps with live reports and early abort, on the project's pool."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.jobside.job import local_reports
from htcml_jupyter.training.sweeps import sample_space
from tests.helpers import wait_until


def decaying(lr: float, depth: int, epochs: int = 6, pause: float = 0.4) -> dict[str, float]:
    import time

    import htcml_jupyter as htc

    loss = 1.0
    for epoch in range(epochs):
        loss = loss * (1 - lr) + 0.01 * depth
        htc.report(step=epoch, loss=loss, lr_seen=lr)
        time.sleep(pause)
    return {"final_loss": loss}


@pytest.mark.pool
def test_grid_sweep_with_median_stopping(pool_env: str, map_root: Path) -> None:
    # trials of about 5 s, so the watcher (once a second) sees them all while they run
    s = htc.sweep(decaying, grid={"lr": [0.02, 0.05, 0.3, 0.5], "depth": [1, 2]},
                  kwargs={"epochs": 8, "pause": 0.6}, metric="loss", mode="min", root=map_root,
                  early_stop=htc.MedianStopping("loss", grace_steps=1, min_trials=3))
    assert isinstance(s, htc.Sweep) and len(s.params) == 8 and len(s.clusters) == 1
    assert s.wait(timeout=180)
    rows = {r.trial: r for r in s.rows()}
    aborted = [t for t, r in rows.items() if r.status == "aborted early"]
    assert aborted, "the median rule stopped nothing"
    slow = {t for t, r in rows.items() if r.params["lr"] <= 0.05}
    assert slow <= set(aborted)  # the slow learners were all stopped
    assert all(r.status == "done" for r in rows.values() if r.params["lr"] == 0.5)
    for t in aborted:
        reason = rows[t].reason
        assert reason and "median" in reason
        assert rows[t].steps >= 2 and "loss" in rows[t].metrics  # its last metrics are kept
        assert rows[t].evictions == 0
    assert s.status()["failed"] == 0  # aborted is not failed
    best = s.best()
    assert best.params == {"lr": 0.5, "depth": 1}
    assert best.metrics["final_loss"] == pytest.approx(best.metrics["loss"])
    assert best.host
    with pool_config(pool_env) as htcondor2:
        assert htcondor2.Schedd().query(constraint=f'HtcmlMap == "{s.name}"',
                                        projection=["ClusterId"]) == []
    again = htc.attach(s.name, root=map_root)
    assert isinstance(again, htc.Sweep)
    assert {r.trial: r.status for r in again.rows()} == {t: r.status for t, r in rows.items()}
    again.close()
    s.close()


@pytest.mark.pool
def test_reports_arrive_while_the_job_runs(pool_env: str, map_root: Path) -> None:
    def slow_reporter(x: int) -> int:
        import time

        import htcml_jupyter as htc

        for step in range(3):
            htc.report(step=step, value=x * 10 + step)
        time.sleep(600)
        return x

    m = htc.map(slow_reporter, [1, 2], root=map_root, chunksize=1)
    try:
        wait_until(lambda: len(m.reports(0)) >= 3 and len(m.reports(1)) >= 3, timeout=120,
                   interval=0.2, message="items 0 and 1 should each report three steps")
        assert [r["value"] for r in m.reports(1)] == [20, 21, 22]
        assert [r["step"] for r in m.reports(0)] == [0, 1, 2]
        assert m.status()["running"] == 2  # seen while the jobs still run
    finally:
        m.cancel()
        m.close()


@pytest.mark.pool
def test_random_search_repeat_and_custom_policy(pool_env: str, map_root: Path) -> None:
    space = {"lr": htc.loguniform(1e-3, 1.0), "depth": htc.choice([1, 2, 3]),
             "epochs": 3, "pause": 0.1}
    assert sample_space(space, 4, seed=7) == sample_space(space, 4, seed=7)

    def stop_deep(trial: int, history: list[dict[str, Any]],
                  histories: dict[int, list[dict[str, Any]]]) -> str | None:
        return "too deep" if history and history[-1]["lr_seen"] > 0.5 else None

    s = htc.sweep(decaying, space=space, n_trials=3, repeat=2, seed=7, root=map_root,
                  metric="final_loss", early_stop=stop_deep)
    assert len(s.params) == 6
    assert [p["seed"] for p in s.params] == [7, 8] * 3
    assert s.params[0]["lr"] == s.params[1]["lr"]
    with pytest.raises(htc.MapError):  # decaying() takes no seed argument
        s.results(timeout=180)
    assert all("seed" in e.message for e in s.errors.values())
    s.close()


def test_sweep_argument_errors(map_root: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of grid"):
        htc.sweep(decaying, root=map_root, backend="local")
    with pytest.raises(ValueError, match="n_trials"):
        htc.sweep(decaying, grid={"lr": [1]}, n_trials=3, root=map_root, backend="local")
    with pytest.raises(ValueError, match="mode"):
        htc.sweep(decaying, grid={"lr": [1]}, mode="best", root=map_root, backend="local")
    with pytest.raises(TypeError, match="early_stop"):
        htc.sweep(decaying, grid={"lr": [1]}, early_stop="median",  # type: ignore[arg-type]
                  root=map_root, backend="local")
    with pytest.raises(ValueError, match="empty"):
        htc.sweep(decaying, grid={"lr": []}, root=map_root, backend="local")
    assert htc.list_maps(map_root) == []


def test_best_needs_a_known_metric(map_root: Path) -> None:
    s = htc.sweep(decaying, grid={"lr": [0.5], "depth": [1], "pause": [0.0]},
                  root=map_root, backend="local")
    assert s.wait(timeout=60)
    assert s.best("loss").params["lr"] == 0.5
    with pytest.raises(ValueError, match="metrics seen: final_loss, loss, lr_seen"):
        s.best("accuracy", mode="max")
    table = s.table()
    rows = table if isinstance(table, list) else table.reset_index().to_dict("records")
    assert rows[0]["status"] == "done" and rows[0]["lr"] == 0.5
    s.close()


def test_report_outside_a_job_is_kept_locally() -> None:
    before = len(local_reports())
    htc.report(step=3, loss=0.5)
    assert local_reports()[before:] == [{"i": None, "t": pytest.approx(time.time(), abs=5),
                                         "m": {"loss": 0.5}, "s": 3}]
    with pytest.raises(TypeError, match="must be a number"):
        htc.report(loss="high")  # type: ignore[arg-type]


@pytest.mark.parametrize(("policy", "trial", "expect"), [
    (htc.Threshold("loss", step=2, value=0.5), 0, "worse than 0.5"),
    (htc.Threshold("loss", step=2, value=0.5), 1, None),
    (htc.Threshold("acc", step=1, value=0.8, mode="max"), 0, "worse than 0.8"),
    (htc.SuccessiveHalving("loss", rungs=(1,), eta=3), 0, "outside the best 1 of 3"),
    (htc.SuccessiveHalving("loss", rungs=(1,), eta=3), 1, None),
    (htc.MedianStopping("loss", min_trials=2), 0, "median"),
    (htc.MedianStopping("loss", min_trials=2), 1, None),
    (htc.MedianStopping("loss", min_trials=3), 0, None),  # too few peers to judge
])
def test_policies(policy: Callable[..., str | None], trial: int, expect: str | None) -> None:
    histories = {
        0: [{"step": 0, "loss": 0.9, "acc": 0.5}, {"step": 1, "loss": 0.8, "acc": 0.6},
            {"step": 2, "loss": 0.7, "acc": 0.6}],
        1: [{"step": 0, "loss": 0.6, "acc": 0.7}, {"step": 1, "loss": 0.4, "acc": 0.9},
            {"step": 2, "loss": 0.3, "acc": 0.95}],
        2: [{"step": 0, "loss": 0.7, "acc": 0.6}, {"step": 1, "loss": 0.6, "acc": 0.7}],
    }
    reason = policy(trial, histories[trial], histories)
    if expect is None:
        assert reason is None
    else:
        assert reason is not None and expect in reason


@pytest.mark.pool
def test_sweep_panel_shows_curves_and_trials(pool_env: str, map_root: Path) -> None:
    from htcml_jupyter.views.sweep_panel import SweepPanel

    s = htc.sweep(decaying, grid={"lr": [0.1, 0.5], "depth": [1], "epochs": [4],
                                  "pause": [0.2]}, metric="loss", root=map_root)
    panel = SweepPanel(s, interval=0.3)
    try:
        wait_until(lambda: panel.last is not None and panel.last.finished, timeout=120,
                   interval=0.2, message="the sweep panel should show the sweep finished")
        panel.update()
        assert panel.headline == "2 / 2 done"
        assert list(panel.metric_choice.options) == ["loss", "lr_seen"]
        assert panel.metric_choice.value == "loss"
        assert sorted(panel.chart.lines) == [0, 1]
        assert panel.chart.lines[1].stroke_width > panel.chart.lines[0].stroke_width  # best
        assert panel.trials.value.count('<tr class="htcml-trial ') == 2
        first_row = panel.trials.value.split('<tr class="htcml-trial ')[1]
        assert first_row.split("</td>")[0].endswith(">1")  # best first: lr=0.5 is trial 1
        panel.metric_choice.value = "lr_seen"
        assert panel.chart.y_axes["linear"].label == "lr_seen"
        assert list(panel.chart.lines[1].y) == [0.5] * 4
    finally:
        panel.close()
        s.close()


@pytest.mark.pool
def test_magic_random_search_with_policy(ip: InteractiveShell, pool_env: str, map_root: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTCML_HOME", str(map_root))
    shell = ip
    shell.user_ns["space"] = {"lr": htc.uniform(0.4, 0.6), "depth": htc.randint(1, 2)}
    shell.user_ns["stop"] = htc.Threshold("loss", step=0, value=0.0)  # stops everything
    shell.run_cell_magic(
        "htc_map", "--grid space --random 3 --seed 5 --metric loss --early-stop stop "
                   "--no-panel -o sw",
        "def tiny(lr, depth):\n    import time\n    import htcml_jupyter as htc\n"
        "    htc.report(step=0, loss=lr * depth)\n    time.sleep(600)\n")
    sw = shell.user_ns["sw"]
    assert isinstance(sw, htc.Sweep) and len(sw.params) == 3
    assert all(0.4 <= p["lr"] <= 0.6 and p["depth"] in (1, 2) for p in sw.params)
    assert sw.wait(timeout=120)
    assert [r.status for r in sw.rows()] == ["aborted early"] * 3
    sw.close()
