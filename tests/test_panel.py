"""The progress panel's and the sweep chart's widget state, asserted through trait values
(the panels on the real pool)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.engine.state import ItemState
from htcml_jupyter.training.trials import TrialRow, TrialStatus, rank_trials
from htcml_jupyter.views.curves import (
    PALETTE,
    TrialStyle,
    curves_svg,
    metric_series,
    trial_label,
    trial_styles,
)
from htcml_jupyter.views.panel import MapPanel
from htcml_jupyter.views.progress import render_html, render_text, snapshot
from htcml_jupyter.views.sweep_chart import SweepChart, log_ticks
from htcml_jupyter.views.sweep_panel import trials_table_html
from tests import helpers
from tests.helpers import wait_until


def _until(predicate: Callable[[], object], timeout: float = 120) -> None:
    wait_until(predicate, timeout, interval=0.2, message="the panel did not get there")


@pytest.mark.pool
def test_panel_turns_green_when_all_succeed(pool_env: str, map_root: Path) -> None:
    m = htc.map(helpers.square, range(10), root=map_root, chunksize=1)
    panel = MapPanel(m, interval=0.2)
    try:
        _until(lambda: panel.headline == "10 / 10 done")
        _until(lambda: not panel.running)  # the updater stops once the map is finished
        assert panel.outcome == "success"
        assert "htcml-outcome-success" in panel.bar.value
        assert ">10 / 10 done</span>" in panel.bar.value
        assert 'class="htcml-bar-done" style="width:100.000%' in panel.bar.value
        assert m.name in panel.header.value and str(m.clusters[0]) in panel.header.value
        assert panel.cancel_button.disabled and panel.retry_button.disabled
        assert panel.items_box.layout.display == "none"
    finally:
        panel.close()


@pytest.mark.pool
def test_panel_turns_red_lists_errors_and_retries(pool_env: str, map_root: Path,
                                                  shared_tmp: Path) -> None:
    flag = shared_tmp / "flag"
    m = htc.map(helpers.fail_until_flag, range(3), kwargs={"flag": str(flag)},
                root=map_root, chunksize=1)
    panel = MapPanel(m, interval=0.2)
    try:
        _until(lambda: not panel.running and panel.last is not None and panel.last.finished)
        assert panel.outcome == "danger"
        assert panel.headline == "0 / 3 done"
        assert 'class="htcml-bar-failed" style="width:100.000%' in panel.bar.value
        assert [v for _, v in panel.items.options] == [0, 1, 2]
        assert "RuntimeError" in panel.items.options[0][0]
        panel.items.value = 1
        assert "flag" in panel.detail.value and "Traceback" in panel.detail.value
        assert not panel.retry_button.disabled
        flag.touch()
        panel.retry_button.click()
        assert "retrying 3 items" in panel.message.value
        _until(lambda: panel.headline == "3 / 3 done")
        _until(lambda: panel.outcome == "success")
    finally:
        panel.close()


@pytest.mark.pool
def test_cancel_button_removes_the_jobs(pool_env: str, map_root: Path) -> None:
    m = htc.map(helpers.nap, [600, 600, 600], root=map_root, chunksize=1)
    panel = MapPanel(m, interval=0.2)
    try:
        assert not panel.cancel_button.disabled
        panel.cancel_button.click()
        _until(lambda: panel.last is not None and panel.last.counts[ItemState.REMOVED] == 3)
        with pool_config(pool_env) as htcondor2:
            ads = htcondor2.Schedd().query(constraint=f'HtcmlMap == "{m.name}"',
                                           projection=["ClusterId"])
        assert ads == []
        assert panel.outcome == "danger"
        assert "htcml-bar-removed" in panel.bar.value
    finally:
        panel.close()


@pytest.mark.pool
def test_held_items_show_reason_and_release(pool_env: str, map_root: Path,
                                            shared_tmp: Path) -> None:
    data = shared_tmp / "in.txt"
    data.write_text("x")
    data.chmod(0o644)
    m = htc.map(helpers.read_input_file, [1], kwargs={"filename": "in.txt"}, root=map_root,
                input_files=[str(data)])
    data.unlink()
    panel = MapPanel(m, interval=0.2)
    try:
        _until(lambda: panel.last is not None and panel.last.counts[ItemState.HELD] == 1)
        assert 'class="htcml-bar-held"' in panel.bar.value
        assert not panel.release_button.disabled
        panel.items.value = 0
        assert "in.txt" in panel.detail.value
        data.write_text("x")
        data.chmod(0o644)
        panel.release_button.click()
        assert "released 1 held job" in panel.message.value
        _until(lambda: panel.headline == "1 / 1 done")
    finally:
        panel.close()


def test_large_map_renders_a_bounded_number_of_widgets(map_root: Path) -> None:
    m = htc.map(helpers.fail_on_multiples_of_three, range(3000), root=map_root,
                backend="local", chunksize=500)
    panel = MapPanel(m, interval=0.3)
    try:
        _until(lambda: panel.last is not None and panel.last.finished, timeout=180)
        assert len(panel.items.options) <= 50  # a summary, not 1,000 rows

        def count(widget: object) -> int:
            return 1 + sum(count(c) for c in getattr(widget, "children", ()))

        assert count(panel.widget) < 30
        assert "2000 / 3000 done" == panel.headline
    finally:
        panel.close()


def test_text_and_html_are_escaped(map_root: Path) -> None:
    def evil(x: int) -> int:
        raise ValueError("<script>alert('x')</script>")

    m = htc.map(evil, [1], root=map_root, backend="local", name="esc-test")
    assert m.wait(timeout=60)
    page = render_html(snapshot(m))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<script>" in render_text(snapshot(m))  # plain text is shown as is
    bundle = MapPanel(m, start=False)._repr_mimebundle_()
    assert "text/html" in bundle and "text/plain" in bundle
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "&lt;script&gt;" in bundle["text/html"]


@pytest.mark.parametrize(("seconds", "text"), [(5, "5 s"), (75, "1 min 15 s"),
                                               (3700, "1 h 01 min"), (None, "?")])
def test_format_seconds(seconds: float | None, text: str) -> None:
    from htcml_jupyter.views.progress import format_seconds

    assert format_seconds(seconds) == text


def test_one_bar_carries_state_colours_and_done_count(map_root: Path) -> None:
    m = htc.map(helpers.fail_on_multiples_of_three, range(6), root=map_root,
                backend="local", chunksize=1)
    panel = MapPanel(m, interval=0.2)
    try:
        _until(lambda: panel.last is not None and panel.last.finished, timeout=60)
        panel.update()
        bar = panel.bar.value
        assert bar.count('class="htcml-state-bar') == 1
        assert 'class="htcml-bar-done" style="width:66.667%;background:#2e7d32' in bar
        assert 'class="htcml-bar-failed" style="width:33.333%;background:#c62828' in bar
        assert ">4 / 6 done</span>" in bar and "htcml-outcome-danger" in bar
        # the done count is written once: not in the header, not in the colour key
        assert "4 / 6 done" not in panel.header.value
        assert "failed 2" in panel.legend.value and "done" not in panel.legend.value
        import ipywidgets as w

        def widgets(widget: object) -> list[object]:
            return [widget, *(x for c in getattr(widget, "children", ()) for x in widgets(c))]

        assert not [x for x in widgets(panel.widget) if isinstance(x, w.IntProgress)]
        page = render_html(snapshot(m))
        assert page.count('class="htcml-state-bar') == 1 and page.count("4 / 6 done") == 1
    finally:
        panel.close()


# ------------------------------------------------------------------ the sweep chart
def _row(trial: int, lr: float, status: TrialStatus, loss: float | None) -> TrialRow:
    return TrialRow(trial, {"lr": lr, "depth": 2}, status,
                    {"loss": loss} if loss is not None else {}, 3, None, None, 0, None, None)


ROWS = [_row(0, 0.1, TrialStatus.DONE, 0.6), _row(1, 0.5, TrialStatus.RUNNING, 0.06),
        _row(2, 0.01, TrialStatus.ABORTED, 0.95), _row(3, 0.3, TrialStatus.IDLE, None)]
HISTORIES: dict[int, list[dict[str, float]]] = {
    0: [{"step": 0, "loss": 0.9}, {"step": 1, "loss": 0.75}, {"step": 2, "loss": 0.6}],
    1: [{"step": 0, "loss": 0.5}, {"step": 1, "loss": 0.2}, {"step": 2, "loss": 0.06}],
    2: [{"step": 0, "loss": 0.99}, {"step": 1, "loss": 0.95}],
}


def _chart(histories: dict[int, list[dict[str, float]]] = HISTORIES,
           rows: list[TrialRow] = ROWS) -> tuple[SweepChart, dict[int, TrialStyle]]:
    chart = SweepChart()
    styles = trial_styles(rows, "loss", "min")
    order = [r.trial for r in rank_trials(rows, "loss", "min", include_running=True)]
    chart.update(metric_series(histories, "loss"), styles, "loss", order=order)
    return chart, styles


def test_chart_legend_names_the_trials_in_their_colours() -> None:
    chart, styles = _chart()
    assert chart.legend_labels() == ["trial 0: depth=2, lr=0.1", "trial 1: depth=2, lr=0.5",
                                     "trial 2: depth=2, lr=0.01"]
    assert set(chart.lines) == {0, 1, 2}  # trial 3 reported nothing: no line
    for trial, line in chart.lines.items():
        assert list(line.labels) == [trial_label(ROWS[trial])]
        assert list(line.colors) == [styles[trial].colour]
    assert len({styles[t].colour for t in (0, 1, 2)}) == 3
    # the trials table shows the same colour next to each trial
    table = trials_table_html(ROWS, "loss", "min", styles)
    for trial in (0, 1, 2):
        row = table.split(f'data-trial="{trial}">')[1].split("</tr>")[0]
        assert "border-top:" in row and styles[trial].colour in row


def test_chart_tooltips_show_trial_params_step_and_value() -> None:
    chart, _ = _chart()
    line_tip = chart.lines[0].tooltip
    assert line_tip is not None and list(line_tip.fields) == ["name"]
    point_tip = chart.points.tooltip
    assert list(point_tip.fields) == ["name", "x", "y"]
    assert list(point_tip.labels) == ["", "step", "loss"]
    points = list(zip(chart.points.names, chart.points.x, chart.points.y, strict=True))
    assert ("trial 1: depth=2, lr=0.5", 1.0, 0.2) in points
    assert len(points) == 8 and all("lr=" in name for name, _, _ in points)


def test_log_toggle_switches_the_y_scale_and_its_ticks() -> None:
    import bqplot as bq

    chart, _ = _chart()
    y_axis = chart.figure.axes[1]
    assert isinstance(y_axis.scale, bq.LinearScale) and y_axis.label == "loss"
    chart.scale_choice.value = "log"
    y_axis = chart.figure.axes[1]
    assert isinstance(y_axis.scale, bq.LogScale)
    assert all(isinstance(line.scales["y"], bq.LogScale) for line in chart.lines.values())
    assert isinstance(chart.points.scales["y"], bq.LogScale)
    ticks = list(y_axis.tick_values)
    assert ticks == [0.07, 0.1, 0.2, 0.3, 0.5, 0.7]  # 0.06 .. 0.99: 1-2-3-5-7 a decade
    assert y_axis.label == "loss"
    assert list(chart.x_axis.tick_values) == [0.0, 1.0, 2.0]
    chart.scale_choice.value = "linear"
    assert isinstance(chart.figure.axes[1].scale, bq.LinearScale)
    assert isinstance(chart.lines[0].scales["y"], bq.LinearScale)


def test_log_scale_leaves_out_values_not_above_zero() -> None:
    chart, _ = _chart({0: [{"step": 0, "loss": -1.0}, {"step": 1, "loss": 0.5}]})
    chart.scale_choice.value = "log"
    assert list(chart.lines[0].y) == [0.5] and chart.figure.title == ""
    chart, _ = _chart({0: [{"step": 0, "loss": 0.0}]})
    chart.scale_choice.value = "log"
    assert "above 0" in chart.figure.title


def test_aborted_trial_is_dashed_and_grey_and_best_is_thick() -> None:
    chart, styles = _chart()
    aborted, normal, best = chart.lines[2], chart.lines[0], chart.lines[1]
    assert aborted.line_style == "dashed" and normal.line_style == "solid"
    assert aborted.colors[0] != PALETTE[2] and styles[2].dashed
    assert best.stroke_width > normal.stroke_width == aborted.stroke_width
    assert best.opacities[0] == 1.0 > normal.opacities[0]
    svg = curves_svg(HISTORIES, "loss", styles)
    assert svg.count('stroke-dasharray="4 3"') == 1 and 'stroke-width="3.5"' in svg


def test_chart_updates_its_marks_in_place() -> None:
    chart, styles = _chart()
    lines = dict(chart.lines)
    marks = list(chart.figure.marks)
    changes: list[str] = []
    lines[0].observe(lambda c: changes.append(c["name"]), names=["x", "y", "colors"])
    sent: list[str] = []
    lines[1].observe(lambda c: sent.append(c["name"]), names=["x", "y"])
    grown = {**HISTORIES, 1: [*HISTORIES[1], {"step": 3, "loss": 0.03}]}
    chart.update(metric_series(grown, "loss"), styles, "loss", order=[1, 0])
    assert chart.lines == lines and list(chart.figure.marks) == marks
    assert changes == []  # trial 0 did not change: nothing is sent for it
    assert sent == ["x", "y"] and list(lines[1].x) == [0.0, 1.0, 2.0, 3.0]
    # a trial that reports for the first time gets a new line; the others stay
    grown[3] = [{"step": 0, "loss": 0.7}]
    chart.update(metric_series(grown, "loss"), styles, "loss")
    assert all(chart.lines[t] is lines[t] for t in lines) and 3 in chart.lines
    assert chart.figure.marks[-1] is chart.points


@pytest.mark.parametrize(("low", "high", "ticks"), [
    (0.2, 0.9, [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
    (0.001, 2.3, [0.001, 0.01, 0.1, 1.0]),
    (1e-8, 1e3, [1e-8, 1e-6, 1e-4, 1e-2, 1.0, 100.0]),
    (0.5, 0.5, [0.5]),
    (-1.0, 2.0, []),
])
def test_log_ticks(low: float, high: float, ticks: list[float]) -> None:
    assert log_ticks(low, high) == ticks


def test_legend_names_only_the_best_trials_of_a_large_sweep() -> None:
    rows = [_row(t, 0.01 * (t + 1), TrialStatus.DONE, 1.0 / (t + 1)) for t in range(30)]
    histories = {t: [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 1.0 / (t + 1)}]
                 for t in range(30)}
    chart, _ = _chart(histories, rows)
    assert len(chart.lines) == 30
    assert chart.legend_labels() == [trial_label(rows[t]) for t in range(18, 30)]


@pytest.mark.pool
def test_sweep_panel_chart_table_and_static_html(pool_env: str, map_root: Path) -> None:
    from htcml_jupyter.views.sweep_panel import SweepPanel

    def fit(lr: float) -> float:
        import htcml_jupyter as htc

        loss = 1.0
        for step in range(3):
            loss *= 1 - lr
            htc.report(step=step, loss=loss, acc=1 - loss)
        return loss

    s = htc.sweep(fit, grid={"lr": [0.2, 0.6]}, metric="loss", root=map_root)
    panel = SweepPanel(s, interval=0.3)
    try:
        _until(lambda: panel.last is not None and panel.last.finished)
        panel.update()
        chart = panel.chart
        assert chart.legend_labels() == ["trial 0: lr=0.2", "trial 1: lr=0.6"]
        assert [list(chart.lines[t].y) for t in (0, 1)] == [
            pytest.approx([0.8, 0.64, 0.512]), pytest.approx([0.4, 0.16, 0.064])]
        assert chart.lines[1].stroke_width > chart.lines[0].stroke_width  # the best
        for t in (0, 1):
            row = panel.trials.value.split(f'data-trial="{t}">')[1].split("</tr>")[0]
            assert chart.lines[t].colors[0] in row  # the table's colour key
        first, line = list(chart.lines[0].y), chart.lines[0]
        panel.metric_choice.value = "acc"
        assert chart.y_axes["linear"].label == "acc" and chart.lines[0] is line
        assert list(chart.lines[0].y) == pytest.approx([1 - v for v in first])
        panel.chart.scale_choice.value = "log"
        assert chart.figure.axes[1] is chart.y_axes["log"]
        bundle = panel._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in bundle
        page = bundle["text/html"]  # without widgets: the SVG curves and the same table
        assert page.count('class="htcml-curve"') == 2 and "htcml-trials" in page
        assert page.count('class="htcml-state-bar') == 1 and "2 / 2 done" in page
    finally:
        panel.close()
        s.close()
