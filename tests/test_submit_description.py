"""The exact submit description of a map's jobs, against golden files (no pool needed).

The goldens are ``tests/golden/submit-<case>.json``: the options given and the commands
:func:`submit_description` returns, with the machine's paths written as ``<MAP>`` (the
map's folder), ``<ROOT>`` (the folder holding it) and ``<PYTHON>`` (this interpreter).
``HTCML_UPDATE_GOLDEN=1 pytest tests/test_submit_description.py`` rewrites them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from htcml_jupyter.backends.submit_description import submit_description
from htcml_jupyter.engine.options import RESERVED_COMMANDS, OptionError, SubmitOptions
from htcml_jupyter.engine.store import MapStore
from htcml_jupyter.jobside import wire
from htcml_jupyter.jobside.archive import ARCHIVE_NAME

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("HTCML_UPDATE_GOLDEN") == "1"
MAP_NAME = "golden-map"
BATCH = "golden-batch"

CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "resources": {"request_cpus": 4, "request_memory": "8GB", "request_disk": "20GB",
                  "priority": 5, "requirements": 'OpSysAndVer == "AlmaLinux9"'},
    "gpus": {"request_gpus": 2, "gpus_minimum_memory": "15000",
             "gpus_minimum_capability": 8.0},
    # GPU minimums mean nothing without GPUs: they are left out
    "gpu_minimums_without_gpus": {"gpus_minimum_memory": "15000",
                                  "gpus_minimum_capability": 7.5},
    "container_image": {"container_image": "docker://python:3.11-slim"},
    "python": {"python": "/opt/conda/bin/python"},
    "max_idle": {"max_idle": 10},
    "accounting_group": {"accounting_group": "group_ml.alice"},
    "checkpointing_with_retries": {"max_retries": 2},
    "submit_extra": {"submit_extra": {"My.Project": '"vision"', "+Department": '"ml"',
                                      "periodic_release": "NumJobStarts < 3",
                                      "job_max_vacate_time": "30"}},
    "input_files": {"input_files": ["<ROOT>/data.csv", "osdf:///ospool/ap40/data/big.tar"]},
    # no chirp: no +WantIOProxy, so the job cannot reach the submit host's files
    "no_chirp": {"chirp": False},
}


def _store(root: Path) -> MapStore:
    return MapStore.create(root, MAP_NAME, {"name": MAP_NAME})


def _normalized(value: str, store: MapStore, root: Path) -> str:
    return (value.replace(str(store.path), "<MAP>").replace(str(root), "<ROOT>")
            .replace(sys.executable, "<PYTHON>"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_submit_description_matches_golden(case: str, tmp_path: Path) -> None:
    root = tmp_path / "maps"
    store = _store(root)
    given = CASES[case]
    if "input_files" in given:
        (root / "data.csv").write_text("x\n")
        kwargs = {**given, "input_files": [f.replace("<ROOT>", str(root))
                                           for f in given["input_files"]]}
    else:
        kwargs = given
    options = SubmitOptions.from_kwargs(kwargs)
    commands = submit_description(store, options, batch_name=BATCH, launch=None)
    assert all(isinstance(v, str) for v in commands.values()), commands
    got = {"options": given,
           "commands": {k: _normalized(v, store, root) for k, v in commands.items()}}
    path = GOLDEN / f"submit-{case}.json"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    assert path.exists(), f"no golden file {path}: run with HTCML_UPDATE_GOLDEN=1"
    expected = json.loads(path.read_text())
    assert got["options"] == expected["options"], "the case changed: update the golden file"
    missing = sorted(set(expected["commands"]) - set(got["commands"]))
    extra = sorted(set(got["commands"]) - set(expected["commands"]))
    changed = {k: (expected["commands"][k], got["commands"][k])
               for k in sorted(set(expected["commands"]) & set(got["commands"]))
               if expected["commands"][k] != got["commands"][k]}
    assert not (missing or extra or changed), (
        f"submit description of {case!r} differs from {path.name}: missing {missing}, "
        f"new {extra}, changed (golden, now) {changed}; if the change is meant, rewrite "
        f"the golden files with HTCML_UPDATE_GOLDEN=1")


def test_every_map_submits_checkpointing_and_its_own_tracking(tmp_path: Path) -> None:
    store = _store(tmp_path)
    commands = submit_description(store, SubmitOptions.from_kwargs({}), batch_name=BATCH)
    # htcml_jupyter.checkpoint exits with this code to have HTCondor spool this folder
    assert commands["checkpoint_exit_code"] == str(wire.EXIT_CHECKPOINT) == "85"
    assert commands["transfer_checkpoint_files"] == wire.CHECKPOINT_DIR
    assert commands["log"] == str(store.event_log)
    assert commands["My.HtcmlMap"] == f'"{MAP_NAME}"' and commands["batch_name"] == BATCH
    assert commands["executable"] == sys.executable
    assert "retry_until" not in commands  # only with max_retries


@pytest.mark.parametrize("command", sorted(RESERVED_COMMANDS))
def test_submit_extra_cannot_set_a_reserved_command(command: str, tmp_path: Path) -> None:
    for spelling in (command, command.upper()):
        with pytest.raises(OptionError, match="submit_extra"):
            SubmitOptions.from_kwargs({"submit_extra": {spelling: "x"}})
        # options made by hand skip that check: the description refuses them too
        with pytest.raises(OptionError, match="submit_extra"):
            submit_description(_store(tmp_path / spelling.lstrip("+").replace(".", "-")),
                               SubmitOptions(submit_extra={spelling: "x"}),
                               batch_name=BATCH)


@pytest.mark.parametrize("folder", ["maps$(HOME)", "new\nline", 'double"quote', "com,ma",
                                    "carriage\rreturn"])
def test_map_folder_that_breaks_the_description_is_refused(folder: str,
                                                          tmp_path: Path) -> None:
    store = _store(tmp_path / folder)
    with pytest.raises(OptionError, match="cannot be used in a submit description"):
        submit_description(store, SubmitOptions.from_kwargs({}), batch_name=BATCH)


def test_input_file_that_breaks_the_description_is_refused(tmp_path: Path) -> None:
    odd = tmp_path / "in$(Process).csv"
    odd.write_text("x\n")
    with pytest.raises(OptionError, match=r"input_files: .*'\$\('"):  # when the map is made
        SubmitOptions.from_kwargs({"input_files": [str(odd)]})
    options = SubmitOptions(input_files=(str(odd),))  # made by hand: refused here
    with pytest.raises(OptionError, match="cannot be used in a submit description"):
        submit_description(_store(tmp_path / "maps"), options, batch_name=BATCH)


def test_a_job_receives_one_job_side_file_and_what_an_eviction_sends_back(
        tmp_path: Path) -> None:
    store = _store(tmp_path)
    commands = submit_description(store, SubmitOptions.from_kwargs({}), batch_name=BATCH)
    sent = [p.strip() for p in commands["transfer_input_files"].split(",")]
    # the job side as one archive, the seed outcome and folders, the function, the
    # job's items: nothing else
    assert sent == [str(store.job_side_archive), *(str(p) for p in store.seed_files()),
                    str(store.function_file), "inputs/task-$(task).pkl$(files)"]
    assert commands["arguments"] == f"{ARCHIVE_NAME} function.pkl task-$(task).pkl outcome.pkl"
    # every file HTCondor sends back exists from the start: a job evicted before its
    # interpreter ran is requeued, not held for a missing output file
    back = [f.strip() for f in commands["transfer_output_files"].split(",")]
    assert back == ["outcome.pkl", wire.CHECKPOINT_DIR, wire.OUTPUTS_DIR]
    assert [p.name for p in store.seed_files()] == back
