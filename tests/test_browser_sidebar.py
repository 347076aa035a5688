"""The "HTCondor maps" sidebar in a real JupyterLab page, driven in headless Chromium.

Two notebooks, each with its own kernel, start a map on the project's pool with
``%%htc_map``.  The sidebar must list both (its prebuilt extension and the server
extension come with the package install), its Cancel button must really remove one
map's jobs from the schedd, and clicking the other map must add a cell that attaches
to it in the active notebook, a cell that then runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from tests.helpers import wait_until
from tests.jupyter_server import JupyterLab
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, KERNEL_IDLE_JS, SHOTS, _missing_parts

pytestmark = pytest.mark.pool

#: Each notebook maps a function that sleeps 20 s per item over 40 items.
NOTEBOOKS = {"first.ipynb": "nap_first", "second.ipynb": "nap_second"}
SIDEBAR = "#htcml-maps-sidebar"


def _cells(function: str) -> list[str]:
    return ["%load_ext htcml_jupyter",
            f"%%htc_map --over range(40) -o m\ndef {function}(x):\n"
            f"    import time\n    time.sleep(20)\n    return x"]


def _write_notebook(path: Path, cells: list[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, str(path))


def _live_jobs(config: str, name: str) -> list[Any]:
    """The jobs of map ``name`` in the pool's queue, except those already removed."""
    with pool_config(config) as htcondor2:
        return list(htcondor2.Schedd().query(
            constraint=f'HtcmlMap == "{name}" && JobStatus != 3',
            projection=["ClusterId", "ProcId"]))


def _map_of(root: Path, function: str) -> str:
    """The name of the one map of ``function`` under ``root``."""
    names = [i.name for i in htc.list_maps(root) if i.function == function]
    assert len(names) == 1, f"maps of {function} under {root}: {names}"
    return names[0]


@pytest.fixture
def lab(pool: str, map_root: Path, tmp_path: Path) -> Iterator[JupyterLab]:
    """JupyterLab whose kernels (and server) keep maps under ``map_root/maps``."""
    missing = _missing_parts()
    if missing:
        pytest.fail(f"the browser test needs {', '.join(missing)}: run scripts/install-browser",
                    pytrace=False)
    env = {"HTCML_HOME": str(map_root), "HTCML_POOL": pool, "HTCML_LOCAL_FALLBACK": "0"}
    with JupyterLab(tmp_path / "lab", env=env) as server:
        yield server


def _run_notebook(page: Any, lab: JupyterLab, path: str) -> None:
    """Open ``path`` (the first one by URL, the next ones in the same page) and run it."""
    if page.url.startswith(lab.url):
        page.evaluate(f"window.jupyterapp.commands.execute('docmanager:open', "
                      f"{{path: '{path}'}})")
        page.wait_for_function(
            f"() => window.jupyterapp.shell.currentWidget?.context?.path === '{path}'",
            timeout=30_000)
    else:
        page.goto(lab.notebook_url(path))
    page.wait_for_function(KERNEL_IDLE_JS, timeout=60_000)
    lab.remember_kernels()
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # The map cell's panel shows once the map is submitted.
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .htcml-panel")
    panel.first.wait_for(timeout=60_000)
    page.wait_for_function(KERNEL_IDLE_JS, timeout=60_000)


def test_sidebar_lists_cancels_and_attaches(lab: JupyterLab, pool: str, map_root: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    for path, function in NOTEBOOKS.items():
        _write_notebook(lab.root_dir / path, _cells(function))
    SHOTS.mkdir(parents=True, exist_ok=True)
    root = map_root / "maps"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        polls: list[float] = []
        page.on("request", lambda r: polls.append(time.monotonic())
                if urlparse(r.url).path.endswith("/htcml/maps") else None)
        try:
            for path in NOTEBOOKS:
                _run_notebook(page, lab, path)
            first, second = (_map_of(root, function) for function in NOTEBOOKS.values())

            # The sidebar: its tab in the left area, then one row per map.
            page.locator(f".jp-SideBar .lm-TabBar-tab[data-id='{SIDEBAR[1:]}']").click()
            sidebar = page.locator(SIDEBAR)
            expect(sidebar).to_be_visible()
            expect(sidebar.locator(".htcml-sidebar-title")).to_have_text("HTCondor maps")
            rows = {name: sidebar.locator(f".htcml-map[data-name='{name}']")
                    for name in (first, second)}
            for row in rows.values():
                expect(row).to_have_count(1, timeout=20_000)
                expect(row.locator(".htcml-map-meta")).to_contain_text("40 items")
                expect(row.locator(".htcml-map-meta")).to_contain_text("the project's pool")
                expect(row.locator(".htcml-map-kind")).to_have_text("map")
                expect(row.locator("button.htcml-cancel")).to_be_enabled()
                expect(row.locator("button.htcml-retry")).to_be_disabled()
                expect(row.locator(".htcml-count").first).to_be_visible()
            expect(sidebar.locator(".htcml-map")).to_have_count(2)
            # Newest first: the second notebook's map heads the list.
            assert sidebar.locator(".htcml-map").first.get_attribute("data-name") == second
            sidebar.screenshot(path=str(SHOTS / "sidebar.png"))

            # While maps run, the sidebar looks about every 2 s.
            start = time.monotonic()
            page.wait_for_timeout(7_000)
            recent = [t for t in polls if t >= start]
            assert 2 <= len(recent) <= 7, f"{len(recent)} looks in 7 s"

            assert _live_jobs(pool, first), "the first map has no jobs to cancel"
            # Cancel asks first; keeping the map running leaves its jobs alone.
            rows[first].locator("button.htcml-cancel").click()
            page.locator(".jp-Dialog button", has_text="Keep running").click()
            expect(page.locator(".jp-Dialog")).to_have_count(0)
            page.wait_for_timeout(1_000)
            assert _live_jobs(pool, first), "keeping the map running removed its jobs"
            rows[first].locator("button.htcml-cancel").click()
            expect(page.locator(".jp-Dialog")).to_contain_text(f"Cancel {first}?")
            page.locator(".jp-Dialog button", has_text="Cancel map").click()
            wait_until(lambda: not _live_jobs(pool, first), timeout=30, interval=0.5,
                       message=f"the jobs of {first} should leave the schedd")
            expect(rows[first].locator(".htcml-count[data-state='removed']")).to_be_visible(
                timeout=30_000)
            expect(rows[first].locator("button.htcml-cancel")).to_be_disabled()
            expect(rows[first].locator("button.htcml-retry")).to_be_enabled()
            assert _live_jobs(pool, second), "cancelling one map touched the other"
            expect(rows[second].locator("button.htcml-cancel")).to_be_enabled()
            sidebar.screenshot(path=str(SHOTS / "sidebar-cancelled.png"))

            # A click on a map adds a cell to the active notebook (the second one).
            cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell")
            expect(cells).to_have_count(2)
            rows[second].locator(".htcml-map-name").click()
            expect(cells).to_have_count(3)
            added = page.evaluate(
                "() => window.jupyterapp.shell.currentWidget.content.activeCell"
                ".model.sharedModel.getSource()")
            assert f'm = htc.attach("{second}")' in added, added
            expect(cells.nth(2)).to_contain_text(f'htc.attach("{second}")')
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-cell')")
            page.wait_for_function(KERNEL_IDLE_JS, timeout=60_000)
            output = cells.nth(2).locator(".jp-OutputArea-output")
            expect(output).to_have_count(0)  # it ran without an error
            assert page.evaluate(
                "() => window.jupyterapp.shell.currentWidget.content.activeCell"
                ".model.executionCount") is not None
            # Once jobs have finished, a row says what they used, in one line (on a busy
            # machine the first 20 s jobs may take minutes to start and end).
            expect(rows[second].locator(".htcml-map-usage")).to_contain_text(
                re.compile(r"core-h, .* GPU-h · .*memory peak [\d.]+ MB of [\d.]+ [MG]B asked"),
                timeout=240_000)
            page.screenshot(path=str(SHOTS / "sidebar-page.png"))
        except Exception as exc:
            try:
                page.screenshot(path=str(SHOTS / "sidebar-failure.png"))
            except Exception:
                pass
            raise AssertionError(f"{exc}\n--- JupyterLab's log ends ---\n"
                                 f"{lab.log_tail(2000)}") from exc
        finally:
            browser.close()
            for info in htc.list_maps(root):
                htc.attach(info.name, root=root).cancel()
