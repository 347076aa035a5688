"""Quiet when nothing is wrong: a successful map writes nothing to stderr; its notes
(the environment's choice) go to the panel, the map's log and Python's logging."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

import htcml_jupyter as htc
from htcml_jupyter.engine.notes import note, read_notes, recording_notes
from htcml_jupyter.engine.state import ItemState
from htcml_jupyter.views.panel import MapPanel
from htcml_jupyter.views.progress import MapProgress, header_html, render_html, render_text


@pytest.mark.pool
def test_a_successful_map_writes_nothing_to_stderr(
        ip: InteractiveShell, pool_env: str, map_root: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HTCML_HOME", str(map_root))
    (map_root / "maps").mkdir()
    (map_root / "maps").chmod(0o755)
    ip.user_ns.clear()
    ip.user_ns["xs"] = [1, 2, 3]
    caplog.set_level(logging.INFO, logger="htcml_jupyter")
    capfd.readouterr()
    ip.run_cell_magic("htc_map", "--over xs --wait -o out --environment shared",
                      "def double(x):\n    return 2 * x\n")
    assert ip.user_ns["out"] == [2, 4, 6]
    printed = capfd.readouterr()
    assert printed.err == "", printed.err
    assert "3 / 3 done" in printed.out
    expected = "environment: shared (environment='shared'"
    logged = [r for r in caplog.records if r.name == "htcml_jupyter.environment"]
    assert [r.levelno for r in logged] == [logging.INFO]
    assert logged[0].getMessage().startswith(expected)
    [m] = [htc.attach(info.name) for info in htc.list_maps()]
    assert isinstance(m, htc.Map)
    [line] = m.notes()
    assert expected in line and line == read_notes(m.store.path)[0]
    panel = MapPanel(m, start=False)
    try:
        assert html.escape(expected) in panel.notes.value  # the widget's state
        assert "used:" in panel.usage.value and "core-h" in panel.usage.value
        assert "about" not in panel.header.value
    finally:
        panel.close()
    assert capfd.readouterr().err == ""


def test_notes_go_to_the_map_being_submitted_and_the_logger(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO, logger="htcml_jupyter")
    (tmp_path / "logs").mkdir()
    note("before: nobody's")
    with recording_notes(tmp_path):
        note("environment: packing 3/10 files,\n1 MB of 9 MB", logger="htcml_jupyter.environment")
    note("after: nobody's")
    [line] = read_notes(tmp_path)
    assert line.endswith("  environment: packing 3/10 files, 1 MB of 9 MB")
    assert [r.getMessage() for r in caplog.records] == [
        "before: nobody's", "environment: packing 3/10 files,\n1 MB of 9 MB", "after: nobody's"]
    assert capfd.readouterr().err == ""
    assert read_notes(tmp_path / "missing") == []


def _progress(eta: float | None, done: int) -> MapProgress:
    counts = {s: 0 for s in ItemState}
    counts[ItemState.DONE] = done
    counts[ItemState.IDLE] = 4 - done
    return MapProgress("m", [1], "a pool", "1 CPU, 1GB", 4, counts, 12.0, eta,
                       notes=["2026-12-04 16:00:00  environment: shared <&>"])


def test_time_left_only_when_estimated() -> None:
    unknown = _progress(None, 0)
    assert "left" not in header_html(unknown) and "?" not in header_html(unknown)
    assert "left" not in render_text(unknown) and "?" not in render_text(unknown)
    known = _progress(36.0, 1)
    assert "about 36 s left" in header_html(known) and "about 36 s left" in render_text(known)
    assert "environment: shared &lt;&amp;&gt;" in render_html(known)
