from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from htcml_jupyter import auto_chunksize
from htcml_jupyter.engine.chunking import items_per_job
from htcml_jupyter.engine.options import OptionError, SubmitOptions, size_in_mb


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(OptionError) as info:
        SubmitOptions.from_kwargs({"request_memroy": "1GB"})
    message = str(info.value)
    assert "request_memroy" in message
    for valid in ("request_memory", "request_gpus", "max_idle", "submit_extra"):
        assert valid in message


@pytest.mark.parametrize(("name", "value"), [
    ("request_memory", [512]),
    ("request_memory", "lots"),
    ("request_cpus", 0),
    ("request_cpus", "2"),
    ("request_gpus", -1),
    ("request_gpus", True),
    ("gpus_minimum_capability", "seven"),
    ("max_idle", 0),
    ("priority", 1.5),
    ("requirements", "a\nb"),
    ("submit_extra", {"bad key": "1"}),
    ("submit_extra", ["x"]),
    ("input_files", 3),
])
def test_ill_typed_option_is_rejected(name: str, value: object) -> None:
    with pytest.raises(OptionError, match=name):
        SubmitOptions.from_kwargs({name: value})


def test_missing_input_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(OptionError, match=r"nope\.csv"):
        SubmitOptions.from_kwargs({"input_files": [str(missing)]})


def test_submit_commands_from_options() -> None:
    opts = SubmitOptions.from_kwargs({
        "request_memory": 2048, "request_gpus": 1, "gpus_minimum_memory": 8000,
        "gpus_minimum_capability": 7.5, "max_idle": 10, "accounting_group": "group_ml.alice",
        "submit_extra": {"My.Project": '"x"'}})
    cmds = opts.submit_commands()
    assert cmds["request_memory"] == "2048MB"
    assert cmds["request_gpus"] == "1"
    assert cmds["gpus_minimum_memory"] == "8000"  # MB, as CHTC and the OSPool write it
    assert cmds["gpus_minimum_capability"] == "7.5"
    assert cmds["max_idle"] == "10"
    assert cmds["accounting_group"] == "group_ml.alice"
    assert cmds["My.Project"] == '"x"'
    assert "priority" not in cmds


@pytest.mark.parametrize(("text", "mb"), [("512MB", 512), ("4GB", 4096), ("2GiB", 2048),
                                          ("1.5G", 1536), ("100", 100), ("1T", 1048576)])
def test_size_in_mb(text: str, mb: int) -> None:
    assert size_in_mb(text) == mb


@pytest.mark.parametrize(("items", "slots", "size"), [
    (10, 8, 1), (16, 8, 1), (17, 8, 3), (100, 8, 13), (1000, 8, 125), (5, 0, 1)])
def test_auto_chunksize(items: int, slots: int, size: int) -> None:
    assert auto_chunksize(items, slots) == size


@pytest.mark.parametrize(("chunksize", "items", "batch", "slots", "size"), [
    ("auto", 4, 4, 2, 4), ("auto", 4, None, 2, 1), ("auto", 100, 8, 8, 16),
    ("auto", 100, 1, 8, 13), (3, 100, 8, 8, 3), ("auto", 5, 2, 0, 2)])
def test_items_per_job_rounds_auto_to_whole_batches(
        chunksize: int | str, items: int, batch: int | None, slots: int, size: int) -> None:
    assert items_per_job(chunksize, items, batch, lambda: slots) == size


def test_items_per_job_asks_for_slots_only_for_auto() -> None:
    def no_pool() -> int:
        raise AssertionError("a fixed chunksize needs no slot count")

    assert items_per_job(7, 100, 2, no_pool) == 7


@pytest.mark.parametrize("value", ["0GB", "0", 0, -2, 0.0])
def test_sizes_must_be_positive(value: object) -> None:
    with pytest.raises(OptionError, match="positive"):
        SubmitOptions.from_kwargs({"request_memory": value})


def test_fractional_megabytes_round_up() -> None:
    assert SubmitOptions.from_kwargs({"request_memory": 0.5}).request_memory == "1MB"


@pytest.mark.parametrize("name", ["runner.py", "function.pkl", "outcome.pkl", "wire.py"])
def test_input_files_may_not_take_the_runners_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("")
    with pytest.raises(OptionError, match="rename it"):
        SubmitOptions.from_kwargs({"input_files": [str(path)]})


def test_site_options_become_classad_attributes() -> None:
    cmds = SubmitOptions.from_kwargs({
        "project_name": 'Lab "A"', "want_gpu_lab": True, "gpu_job_length": "long",
        "want_flocking": True}).submit_commands()
    assert cmds["My.ProjectName"] == '"Lab \\"A\\""'
    assert cmds["My.WantGPULab"] == "true" and cmds["My.GPUJobLength"] == '"long"'
    assert cmds["My.WantFlocking"] == "true"
    implied = SubmitOptions.from_kwargs({"gpu_job_length": "short"}).submit_commands()
    assert implied["My.GPUJobLength"] == '"short"' and implied["My.WantGPULab"] == "true"
    with pytest.raises(OptionError, match="short"):
        SubmitOptions.from_kwargs({"gpu_job_length": "forever"})
    sites = SubmitOptions.from_kwargs({
        "want_campus_pools": True, "want_ospool": True, "job_duration_category": "Long",
        "is_resumable": True}).submit_commands()
    assert sites["want_campus_pools"] == "true" and sites["want_ospool"] == "true"
    assert sites["My.JobDurationCategory"] == '"Long"' and sites["My.is_resumable"] == "true"
    with pytest.raises(OptionError, match="Medium"):
        SubmitOptions.from_kwargs({"job_duration_category": "Short"})


def test_gpu_memory_is_in_mb_and_warns_when_a_unit_excludes_the_cards() -> None:
    opts = SubmitOptions.from_kwargs({"request_gpus": 1, "gpus_minimum_memory": 20000})
    assert opts.submit_commands()["gpus_minimum_memory"] == "20000"
    assert SubmitOptions.from_kwargs({"gpus_minimum_memory": "15000"}).gpus_minimum_memory \
        == "15000"
    with pytest.warns(UserWarning, match="cards sold as 16 GB do not report"):
        opts = SubmitOptions.from_kwargs({"request_gpus": 1, "gpus_minimum_memory": "16GB"})
    assert opts.gpus_minimum_memory == "16384"
    with pytest.raises(OptionError, match="MB as a number"):
        SubmitOptions.from_kwargs({"gpus_minimum_memory": "lots"})


@pytest.mark.parametrize(("options", "message"), [
    ({"environment": "nonsense"}, r"'auto', 'pack', 'shared', the path of an archive.*"
                                  r"osdf://.*not 'nonsense'"),
    ({"environment": "/no/such/env.tar.gz"}, "no such archive.*htcml env pack"),
    ({"environment": 3}, "environment must be 'auto'"),
    ({"requirements": "Memory >"}, "requirements: .* ClassAd expression"),
    ({"input_files": ['/tmp/a"b']}, "quotes"),
    ({"input_files": ["/tmp/$(x)"]}, r"'\$\('"),
])
def test_options_are_checked_before_anything_is_written(
        tmp_path: Path, options: dict[str, Any], message: str) -> None:
    import htcml_jupyter as htc
    from tests import helpers

    root = tmp_path / "maps"
    with pytest.raises(OptionError, match=message):
        htc.map(helpers.square, [1], root=root, backend="local", name="checked", **options)
    assert not (root / "checked").exists()


def test_environment_values_that_pass(tmp_path: Path) -> None:
    archive = tmp_path / "env.tar.gz"
    archive.write_bytes(b"")
    for value in ("auto", "pack", "shared", "osdf:///ospool/ap40/me/env.tar.gz"):
        assert SubmitOptions.from_kwargs({"environment": value}).environment == value
    assert SubmitOptions.from_kwargs({"environment": str(archive)}).environment \
        == str(archive)
    assert SubmitOptions.from_kwargs(
        {"requirements": 'TARGET.Memory > 4096 && Arch == "X86_64"'}).requirements
