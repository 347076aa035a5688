"""The progress panel's widget state, asserted through trait values, on the real pool."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.engine.state import ItemState
from htcml_jupyter.views.panel import MapPanel
from htcml_jupyter.views.progress import render_html, render_text, snapshot
from tests import helpers
from tests.helpers import wait_until


def _until(predicate: Callable[[], object], timeout: float = 120) -> None:
    wait_until(predicate, timeout, interval=0.2, message="the panel did not get there")


@pytest.mark.pool
def test_panel_turns_green_when_all_succeed(pool_env: str, map_root: Path) -> None:
    m = htc.map(helpers.square, range(10), root=map_root, chunksize=1)
    panel = MapPanel(m, interval=0.2)
    try:
        assert panel.progress.max == 10
        _until(lambda: panel.label.value == "10 / 10 done")
        _until(lambda: not panel.running)  # the updater stops once the map is finished
        assert panel.progress.value == 10
        assert panel.progress.bar_style == "success"
        assert m.name in panel.header.value and str(m.clusters[0]) in panel.header.value
        assert "htcml-bar-done" in panel.stacked.value
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
        assert panel.progress.bar_style == "danger"
        assert panel.label.value == "0 / 3 done"
        assert [v for _, v in panel.items.options] == [0, 1, 2]
        assert "RuntimeError" in panel.items.options[0][0]
        panel.items.value = 1
        assert "flag" in panel.detail.value and "Traceback" in panel.detail.value
        assert not panel.retry_button.disabled
        flag.touch()
        panel.retry_button.click()
        assert "retrying 3 items" in panel.message.value
        _until(lambda: panel.label.value == "3 / 3 done")
        _until(lambda: panel.progress.bar_style == "success")
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
        assert panel.progress.bar_style == "danger"
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
        assert not panel.release_button.disabled
        panel.items.value = 0
        assert "in.txt" in panel.detail.value
        data.write_text("x")
        data.chmod(0o644)
        panel.release_button.click()
        assert "released 1 held job" in panel.message.value
        _until(lambda: panel.label.value == "1 / 1 done")
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
        assert "2000 / 3000 done" == panel.label.value
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
