"""The magics, driven through a real IPython InteractiveShell against the real pool."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import htcml_jupyter as htc
from htcml_jupyter.views.magics import resolve_expression
from tests.helpers import wait_until


@pytest.fixture
def shell(ip: InteractiveShell, pool_env: str, map_root: Path,
          monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    """The session's shell, its maps under ``map_root``, submitting to the pool."""
    monkeypatch.setenv("HTCML_HOME", str(map_root))
    (map_root / "maps").mkdir()
    (map_root / "maps").chmod(0o755)
    ip.user_ns.clear()
    return ip


@pytest.mark.pool
def test_htc_map_runs_cell_and_binds_handle(shell: InteractiveShell) -> None:
    shell.user_ns["xs"] = list(range(6))
    shell.run_cell_magic("htc_map", "--over xs --memory 256MB -o m --no-panel",
                         "import math\nOFFSET = 10\n\ndef shifted(x):\n    return x + OFFSET\n")
    assert "math" in shell.user_ns and shell.user_ns["OFFSET"] == 10  # the cell ran here
    m = shell.user_ns["m"]
    assert isinstance(m, htc.Map)
    assert m.options.request_memory == "256MB"
    assert m.results(timeout=120) == [x + 10 for x in range(6)]


@pytest.mark.pool
def test_htc_map_wait_binds_results(shell: InteractiveShell) -> None:
    shell.user_ns["params"] = {"a": [1, 2], "b": [10, 20, 30]}
    shell.run_cell_magic("htc_map", "--grid params --kwargs \"{'c': 100}\" --wait -o out "
                         "--no-panel", "def add(a, b, c):\n    return a + b + c\n")
    assert shell.user_ns["out"] == [a + b + 100 for a in (1, 2) for b in (10, 20, 30)]


@pytest.mark.pool
def test_htc_map_wait_with_failures_binds_then_raises(
        shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.user_ns["xs"] = [1, 0, 2]
    result = shell.run_cell("%%htc_map --over xs --wait -o inv --no-panel\n"
                            "def inverse(x):\n    return 1 / x\n")
    assert isinstance(result.error_in_exec, htc.MapError)
    out = shell.user_ns["inv"]
    assert out[0] == 1.0 and out[2] == 0.5 and isinstance(out[1], htc.RemoteError)
    printed = capsys.readouterr()
    shown = printed.out + printed.err
    assert "Remote traceback" in shown and "ZeroDivisionError" in shown


@pytest.mark.parametrize(("line", "cell", "message"), [
    ("--over nothing_here", "def f(x):\n    return x\n", "not defined"),
    ("", "def f(x):\n    return x\n", "exactly one of --over"),
    ("--over xs --grid g", "def f(x):\n    return x\n", "exactly one of --over"),
    ("--over xs", "def f(x):\n    return x\ndef g(x):\n    return x\n", "exactly one"),
    ("--over xs", "x = 1\n", "exactly one"),
    ("--over xs --fn missing", "def f(x):\n    return x\n", "missing"),
    ("--over xs --memory lots", "def f(x):\n    return x\n", "request_memory"),
    ("--over xs --chunksize many", "def f(x):\n    return x\n", "chunksize"),
    ("--over xs --cpus two", "def f(x):\n    return x\n", "invalid int value.*htc_map\\?"),
    ("--over __import__('os').system('true')", "def f(x):\n    return x\n", "too complex"),
    ("--grid xs", "def f(x):\n    return x\n", "dict of lists"),
])
@pytest.mark.pool
def test_usage_errors_submit_nothing(shell: InteractiveShell, line: str, cell: str,
                                     message: str) -> None:
    shell.user_ns["xs"] = [1, 2]
    shell.user_ns["g"] = {"a": [1]}
    before = htc.list_maps()
    with pytest.raises(UsageError, match=message):
        shell.run_cell_magic("htc_map", line + " --no-panel", cell)
    assert htc.list_maps() == before


@pytest.mark.pool
def test_unpicklable_function_is_a_usage_error(shell: InteractiveShell) -> None:
    shell.user_ns["xs"] = [1]
    with pytest.raises(UsageError, match="nothing was submitted"):
        shell.run_cell_magic("htc_map", "--over xs --no-panel",
                             "import threading\nLOCK = threading.Lock()\n"
                             "def locked(x):\n    with LOCK:\n        return x\n")
    assert htc.list_maps() == []


@pytest.mark.pool
def test_line_magics(
        shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.user_ns["xs"] = [3, 0]
    shell.run_cell_magic("htc_map", "--over xs --name lm-demo -o m --no-panel",
                         "def inv(x):\n    return 1 / x\n")
    m = shell.user_ns["m"]
    assert m.wait(timeout=120)
    capsys.readouterr()
    shell.run_line_magic("htc_maps", "")
    assert "lm-demo" in capsys.readouterr().out
    shell.run_line_magic("htc_status", "lm-demo")
    status = capsys.readouterr().out
    assert "1 / 2 done" in status and "ZeroDivisionError" in status
    shell.run_line_magic("htc_attach", "lm-demo -o again --no-panel")
    assert shell.user_ns["again"].name == "lm-demo"
    shell.run_line_magic("htc_retry", "lm-demo")
    assert "retrying 1 item" in capsys.readouterr().out
    assert m.wait(timeout=120)
    assert len(m.clusters) == 2
    shell.run_line_magic("htc_pool", "")
    pool = capsys.readouterr().out
    assert "CPUs" in pool and "GPUs" in pool and "free of" in pool
    with pytest.raises(UsageError, match="no map named"):
        shell.run_line_magic("htc_status", "no-such-map")


@pytest.mark.pool
def test_htc_cancel(
        shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.user_ns["xs"] = [600]
    shell.run_cell_magic("htc_map", "--over xs -o slow --no-panel",
                         "def nap(s):\n    import time\n    time.sleep(s)\n")
    shell.run_line_magic("htc_cancel", "slow")
    m = shell.user_ns["slow"]
    assert m.wait(timeout=60)
    assert m.status()["removed"] == 1


@pytest.mark.pool
def test_htc_config_sets_defaults(
        shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_line_magic("htc_config", "")
    listing = capsys.readouterr().out
    assert "request_memory" in listing and "chunksize" in listing
    shell.run_line_magic("htc_config", "request_memory=384MB request_cpus=2")
    try:
        shell.user_ns["xs"] = [1]
        shell.run_cell_magic("htc_map", "--over xs -o m --no-panel",
                             "def ident(x):\n    return x\n")
        m = shell.user_ns["m"]
        assert m.options.request_memory == "384MB" and m.options.request_cpus == 2
        m.cancel()
    finally:
        shell.run_line_magic("htc_config", "request_memory=1GB request_cpus=1")
    with pytest.raises(UsageError, match="KEY=VALUE"):
        shell.run_line_magic("htc_config", "memory=1GB")


def test_help_is_complete(ip: InteractiveShell) -> None:
    doc = ip.find_cell_magic("htc_map").__doc__
    assert doc is not None
    for flag in ("--over", "--grid", "--kwargs", "--gpus", "--memory", "--wait", "-o",
                 "--max-idle", "--image", "--files"):
        assert flag in doc


def test_resolve_expression_parses_without_eval() -> None:
    ns = {"data": {"texts": ["a", "b", "c"]}, "n": 2}
    assert resolve_expression("data['texts'][:n]", ns) == ["a", "b"]
    assert resolve_expression("range(3)", ns) == range(3)
    assert resolve_expression("{'lr': [0.1, 0.01]}", ns) == {"lr": [0.1, 0.01]}
    with pytest.raises(UsageError):
        resolve_expression("open('/etc/passwd')", ns)
    with pytest.raises(UsageError):
        resolve_expression("data.__class__.__subclasses__()", ns)


@pytest.mark.pool
def test_panel_without_widget_frontend_prints_text(
        shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.user_ns["xs"] = [1, 2]
    shell.run_cell_magic("htc_map", "--over xs -o m", "def ident(x):\n    return x\n")
    printed = capsys.readouterr().out
    assert "/ 2 done" in printed  # terminal IPython: the same information as text
    m = shell.user_ns["m"]
    assert m.wait(timeout=120)
    wait_until(lambda: "2 / 2 done" in m._repr_html_(), timeout=10,
               message="the map's HTML shows it finished")


@pytest.mark.pool
def test_flags_made_from_the_table_reach_the_jobs(shell: InteractiveShell) -> None:
    """Options that had no flag before reach the job's own ad through the real pool."""
    shell.user_ns["xs"] = [1]
    shell.user_ns["extra"] = {"My.HtcmlLab": '"ml"'}
    shell.run_cell_magic(
        "htc_map", "--over xs --priority 3 --requirements 'TARGET.Cpus >= 1' "
                   "--submit-extra extra --max-materialize 4 --wait -o ads --no-panel",
        "def own_ad(x):\n    import os\n    with open(os.environ['_CONDOR_JOB_AD']) as f:\n"
        "        lines = f.read().splitlines()\n"
        "    return sorted(l for l in lines if l.split(' ')[0] in ('JobPrio', 'HtcmlLab'))\n")
    assert shell.user_ns["ads"] == [['HtcmlLab = "ml"', "JobPrio = 3"]]
