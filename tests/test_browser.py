"""The live map panel in a real JupyterLab page, driven in headless Chromium.

A notebook runs ``%%htc_map`` on the project's pool: a map whose items all succeed
(its one bar fills green and reads ``12 / 12 done``), one where an item raises
(``3 / 4 done``, a red segment) and a sweep (its chart's legend, a tooltip over a
line, the log y axis, the trials table's colour keys).  Needs Debian's Chromium and, in the
virtualenv, JupyterLab and Playwright: ``scripts/install-browser`` installs them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jupyter_server import JupyterLab

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage"]
SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "browser"
#: Seconds a map may take to finish on the pool, as the page shows it.
MAP_TIMEOUT = 90

NOTEBOOK_CELLS = [
    "%load_ext htcml_jupyter",
    "%%htc_map --over range(12) -o m\ndef double(x):\n    return 2 * x",
    "%%htc_map --over range(4) -o bad\ndef inv(x):\n    return 1 / x",
    "%%htc_map --grid {'lr':[0.1,0.3,0.5]} --metric loss -o sw\n"
    "def fit(lr):\n    import time\n    import htcml_jupyter as htc\n    loss = 1.0\n"
    "    for step in range(4):\n        loss *= 1 - lr\n"
    "        htc.report(step=step, loss=loss)\n        time.sleep(0.3)\n    return loss",
]

#: True once the open notebook's kernel is connected and idle.
KERNEL_IDLE_JS = """() => {
  const app = window.jupyterapp;
  const widget = app && app.shell.currentWidget;
  const session = widget && widget.sessionContext && widget.sessionContext.session;
  const kernel = session && session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

pytestmark = pytest.mark.pool


def _missing_parts() -> list[str]:
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(CHROMIUM)
    for module in ("playwright", "jupyterlab", "ipykernel", "nbformat"):
        if importlib.util.find_spec(module) is None:
            missing.append(f"the Python package {module}")
    return missing


@pytest.fixture(scope="module")
def browser_parts() -> None:
    missing = _missing_parts()
    if missing:
        pytest.fail(f"the browser test needs {', '.join(missing)}: run scripts/install-browser",
                    pytrace=False)


@pytest.fixture
def lab(browser_parts: None, pool: str, map_root: Path, tmp_path: Path) -> Iterator[JupyterLab]:
    """JupyterLab whose kernels put maps under ``map_root`` and submit to the pool."""
    env = {"HTCML_HOME": str(map_root), "HTCML_POOL": pool, "HTCML_LOCAL_FALLBACK": "0"}
    server = JupyterLab(tmp_path / "lab", env=env)
    with server:
        yield server


def _write_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS]
    nbformat.write(nb, str(path))


def _page_state(page: Any) -> str:
    """What the cells show, for a failure message."""
    try:
        texts = page.locator(".jp-Notebook .jp-CodeCell").evaluate_all(
            "cells => cells.map((c, i) => `cell ${i}: ` + "
            "(c.querySelector('.jp-OutputArea') || {innerText: ''}).innerText)")
        return "\n".join(texts)
    except Exception as exc:
        return f"(could not read the page: {exc})"


def _check_panel(out: Any, headline: str, percent: int, outcome: str) -> None:
    """One finished panel: exactly one bar, with the done count written on it once, its
    done segment's width and the outcome's class; the header."""
    from playwright.sync_api import expect

    width = re.compile(rf"(^|;)\s*width:\s*{percent}(\.0*)?%")
    panel = out.locator(".htcml-panel")
    bar = panel.locator(".htcml-state-bar")
    text = bar.locator(".htcml-headline")
    expect(text).to_have_text(headline, timeout=MAP_TIMEOUT * 1000)
    expect(bar).to_have_count(1)
    expect(panel.locator(".widget-hprogress, .progress-bar, .htcml-stacked-bar")
           ).to_have_count(0)
    assert text.evaluate("e => e.getBoundingClientRect().right"
                         " <= e.parentElement.getBoundingClientRect().right"), \
        "the bar's text is cut off"
    expect(panel.get_by_text(headline, exact=True)).to_have_count(1)  # said once
    expect(bar).to_have_class(re.compile(rf"\bhtcml-outcome-{outcome}\b"), timeout=5000)
    expect(bar.locator(".htcml-bar-done")).to_have_attribute("style", width)
    header = panel.locator(".htcml-header")
    expect(header).to_contain_text("the project's pool")
    expect(header).to_contain_text("finished in")


#: A point on an SVG path (40 % along it), in page coordinates.
POINT_ON_PATH_JS = """p => {
  const q = p.getPointAtLength(p.getTotalLength() * 0.4);
  const m = p.getScreenCTM();
  return [q.x * m.a + q.y * m.c + m.e, q.x * m.b + q.y * m.d + m.f];
}"""


def _check_sweep_chart(page: Any, sweep: Any) -> None:
    """The sweep's chart: a legend naming each trial, a tooltip with the parameters over a
    line, colour keys in the trials table that match the lines, and the log y axis."""
    from playwright.sync_api import expect

    chart = sweep.locator(".htcml-panel .htcml-sweep-chart")
    expect(chart.locator("text.legendtext")).to_have_text(
        ["trial 0: lr=0.1", "trial 1: lr=0.3", "trial 2: lr=0.5"], timeout=10_000)
    lines = chart.locator("g.curve path.line")
    expect(lines).to_have_count(3)
    table_rows = sweep.locator(".htcml-panel table.htcml-trials tr.htcml-trial")
    expect(table_rows).to_have_count(3)
    for trial in range(3):
        stroke = lines.nth(trial).evaluate("e => getComputedStyle(e).stroke")
        key = sweep.locator(f".htcml-panel tr.htcml-trial[data-trial='{trial}'] .htcml-swatch")
        assert key.evaluate("e => getComputedStyle(e).borderTopColor") == stroke, \
            f"trial {trial}: the table's colour key differs from its line"
    sweep.locator(".htcml-panel").screenshot(path=str(SHOTS / "panel-sweep.png"))

    x, y = lines.nth(1).evaluate(POINT_ON_PATH_JS)
    page.mouse.move(x, y)
    tooltip = page.locator(".bqplot_mark_tooltip:visible")
    expect(tooltip).to_contain_text("trial 1: lr=0.3", timeout=5000)
    sweep.locator(".htcml-panel").screenshot(path=str(SHOTS / "panel-sweep-tooltip.png"))
    page.mouse.move(5, 5)

    y_axis = chart.locator("g.axis").filter(has=page.locator("text.axislabel", has_text="loss"))
    ticks = y_axis.locator("g.tick text")
    log_ticks = ["0.07", "0.1", "0.2", "0.3", "0.5", "0.7"]  # 0.0625 .. 0.9
    expect(ticks).not_to_have_text(log_ticks)
    sweep.locator(".htcml-panel .widget-toggle-button", has_text="log").click()
    expect(ticks).to_have_text(log_ticks, timeout=5000)
    sweep.locator(".htcml-panel").screenshot(path=str(SHOTS / "panel-sweep-log.png"))


def test_panel_updates_in_jupyterlab(lab: JupyterLab) -> None:
    from playwright.sync_api import expect, sync_playwright

    _write_notebook(lab.root_dir / "panel.ipynb")
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in [*SHOTS.glob("panel*.png"), SHOTS / "page.png", SHOTS / "failure.png"]:
        old.unlink(missing_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        started = time.monotonic()
        steps: list[str] = []

        def step(what: str) -> None:
            steps.append(f"{time.monotonic() - started:5.1f} s  {what}")

        try:
            page.goto(lab.notebook_url("panel.ipynb"))
            page.wait_for_function(KERNEL_IDLE_JS, timeout=60_000)
            step("page loaded, kernel idle")
            lab.remember_kernels()
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            expect(cells).to_have_count(len(NOTEBOOK_CELLS))
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

            ok = cells.nth(1).locator(".jp-OutputArea-output")
            expect(ok.locator(".htcml-panel")).to_have_count(1, timeout=30_000)
            step("first panel shown")
            # The panel is displayed as the map is submitted (0 / 12 done): only updates
            # from the kernel's thread can bring it to the end.
            _check_panel(ok, "12 / 12 done", 100, "success")
            step("first map finished in the page")
            ok.locator(".htcml-panel").screenshot(path=str(SHOTS / "panel.png"))

            bad = cells.nth(2).locator(".jp-OutputArea-output")
            _check_panel(bad, "3 / 4 done", 75, "danger")
            step("second map finished in the page")
            expect(bad.locator(".htcml-panel .widget-select")).to_contain_text(
                "ZeroDivisionError")
            bad.locator(".htcml-panel").screenshot(path=str(SHOTS / "panel-failed.png"))

            sweep = cells.nth(3).locator(".jp-OutputArea-output")
            _check_panel(sweep, "3 / 3 done", 100, "success")
            step("sweep finished in the page")
            _check_sweep_chart(page, sweep)
            step("sweep chart checked")
            page.screenshot(path=str(SHOTS / "page.png"))
        except Exception as exc:
            try:
                page.screenshot(path=str(SHOTS / "failure.png"))
            except Exception:
                pass
            step("failed")
            raise AssertionError(
                f"{exc}\n--- steps ---\n" + "\n".join(steps)
                + f"\n--- the notebook's outputs ---\n{_page_state(page)}"
                f"\n--- JupyterLab's log ends ---\n{lab.log_tail(2000)}"
                f"\n(screenshot: {SHOTS / 'failure.png'})") from exc
        finally:
            browser.close()
