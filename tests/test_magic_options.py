"""``%%htc_map`` has every option of ``htc.map`` as a flag, made from ``OPTIONS``.

The tests here are derived from the table: an option added to ``OPTIONS`` is covered
without editing them.  They drive the magic through a real ``InteractiveShell`` and
stop it at the API layer (``htc.map`` and ``htc.sweep`` record what they were given),
so no pool is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from htcml_jupyter import api
from htcml_jupyter.engine.options import OPTIONS, OptionSpec, SubmitOptions

CELL = "def ident(x):\n    return x\n"


class _Reached(Exception):
    """Raised by the recording ``htc.map``: the magic got as far as the API."""

    def __init__(self, kwargs: dict[str, Any]):
        super().__init__("reached the API")
        self.kwargs = kwargs


@pytest.fixture
def shell(ip: InteractiveShell, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("HTCML_HOME", str(tmp_path))
    ip.user_ns.clear()
    ip.user_ns["xs"] = [1, 2]
    yield ip
    ip.user_ns.clear()


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> None:
    """``htc.map`` and ``htc.sweep`` raise :class:`_Reached` with their keywords."""
    def record(*args: Any, **kwargs: Any) -> Any:
        raise _Reached(kwargs)

    monkeypatch.setattr(api, "map", record)
    monkeypatch.setattr(api, "sweep", record)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _on_the_line(name: str, spec: OptionSpec, ns: dict[str, Any]) -> str:
    """How a user writes option ``name`` with its example value on the magic's line."""
    syntax = spec.line_syntax
    if syntax == "switch":
        return _flag(name) if spec.example else "--no-" + _flag(name)[2:]
    if syntax == "names":
        return f"{_flag(name)} {','.join(spec.example)}"
    if syntax == "expr":
        ns[f"the_{name}"] = spec.example
        return f"{_flag(name)} the_{name}"
    if syntax in ("int", "float", "text"):
        text = str(spec.example)
        if " " in text or '"' in text:
            text = f"'{text}'"
        return f"{_flag(name)} {text}"
    raise AssertionError(f"{name}: the magic test does not know the syntax {syntax!r}")


def _reach(shell: InteractiveShell, line: str) -> dict[str, Any]:
    with pytest.raises(_Reached) as reached:
        shell.run_cell_magic("htc_map", line + " --no-panel", CELL)
    return reached.value.kwargs


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_has_an_example_that_differs_from_its_default(name: str) -> None:
    spec = OPTIONS[name]
    assert spec.example is not None, f"{name} needs an example in OPTIONS"
    assert spec.example != spec.default
    checked = SubmitOptions.from_kwargs({name: spec.example})
    assert getattr(checked, name) != getattr(SubmitOptions(), name)


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.usefixtures("recording")
def test_every_option_reaches_map_from_its_flag(shell: InteractiveShell, name: str) -> None:
    spec = OPTIONS[name]
    kwargs = _reach(shell, "--over xs " + _on_the_line(name, spec, shell.user_ns))
    assert name in kwargs
    expected = getattr(SubmitOptions.from_kwargs({name: spec.example}), name)
    assert getattr(SubmitOptions.from_kwargs({
        k: v for k, v in kwargs.items() if k in OPTIONS}), name) == expected


@pytest.mark.usefixtures("recording")
def test_every_option_reaches_sweep_too(shell: InteractiveShell) -> None:
    shell.user_ns["g"] = {"x": [1, 2]}
    ns = shell.user_ns
    line = " ".join(_on_the_line(name, spec, ns) for name, spec in OPTIONS.items())
    kwargs = _reach(shell, "--grid g " + line)
    assert set(OPTIONS) <= set(kwargs)


def test_help_lists_every_option_with_its_help(ip: InteractiveShell) -> None:
    doc = ip.find_cell_magic("htc_map").__doc__
    assert doc is not None
    packed = "".join(doc.split())  # argparse wraps lines (at spaces and hyphens)
    for name, spec in OPTIONS.items():
        flag = _flag(name)
        if spec.line_syntax == "switch" and spec.default is True:
            flag = "--no-" + flag[2:]
        assert f"{flag} " in doc or f"{flag}," in doc or f"{flag}\n" in doc, flag
        assert "".join(spec.help.split()) in packed, name


@pytest.mark.usefixtures("recording")
def test_todays_short_flags_still_work(shell: InteractiveShell) -> None:
    """The flags of the tutorials and the README, as aliases of the generated ones."""
    kwargs = _reach(shell, "--over xs --cpus 2 --memory 512MB --disk 2GB --gpus 1 "
                           "--gpu-memory 20000 --gpu-capability 8.0 --image img:1 "
                           "--files ['https://example.org/w.pt'] --retries 3 --max-idle 5 "
                           "--no-chirp --environment shared --output-destination /tmp/out")
    assert {k: kwargs[k] for k in OPTIONS if k in kwargs} == {
        "request_cpus": 2, "request_memory": "512MB", "request_disk": "2GB",
        "request_gpus": 1, "gpus_minimum_memory": "20000", "gpus_minimum_capability": 8.0,
        "container_image": "img:1", "input_files": ["https://example.org/w.pt"],
        "max_retries": 3, "max_idle": 5, "chirp": False, "environment": "shared",
        "output_destination": "/tmp/out"}


@pytest.mark.usefixtures("recording")
def test_options_not_given_are_the_configured_defaults_only(
        shell: InteractiveShell) -> None:
    kwargs = _reach(shell, "--over xs")
    assert {k for k in kwargs if k in OPTIONS} == {
        "request_cpus", "request_memory", "request_disk", "environment"}
    assert kwargs["request_memory"] == "1GB"


@pytest.mark.parametrize(("line", "message"), [
    ("--request-cpus two", "invalid int value.*htc_map\\?"),
    ("--gpus-minimum-capability fast", "invalid float value"),
    ("--pack-include a,,b", "comma-separated"),
    ("--submit-extra nowhere", "not defined"),
])
@pytest.mark.usefixtures("recording")
def test_values_that_do_not_parse_are_usage_errors(shell: InteractiveShell, line: str,
                                                   message: str) -> None:
    with pytest.raises(UsageError, match=message):
        shell.run_cell_magic("htc_map", f"--over xs {line} --no-panel", CELL)


def test_a_bad_option_submits_nothing(shell: InteractiveShell, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="nothing was submitted: environment must be "
                                         "'auto', 'pack', 'shared'"):
        shell.run_cell_magic("htc_map", "--over xs --pool local --environment nonsense "
                                        "--name bad-env --no-panel", CELL)
    assert not (tmp_path / "maps" / "bad-env").exists()


def test_torchrun_magic_takes_its_node_options_the_same_way(
        shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    import htcml_jupyter.multinode as multinode
    from htcml_jupyter.views.torchrun_magic import RUN_OPTIONS

    def record(*args: Any, **kwargs: Any) -> Any:
        raise _Reached(kwargs)

    monkeypatch.setattr(multinode, "torchrun", record)
    with pytest.raises(_Reached) as reached:
        shell.run_cell_magic("htc_torchrun", "--nodes 2 --cpus 2 --request-gpus 1 "
                                             "--image img:1 --no-panel", CELL)
    kwargs = reached.value.kwargs
    assert (kwargs["request_cpus"], kwargs["request_gpus"], kwargs["container_image"]) == (
        2, 1, "img:1")
    assert {k for k in kwargs if k in OPTIONS} <= set(RUN_OPTIONS)
    with pytest.raises(UsageError, match="unrecognized"):
        shell.run_cell_magic("htc_torchrun", "--nodes 2 --max-retries 2 --no-panel", CELL)
