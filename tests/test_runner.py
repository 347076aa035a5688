"""The execute-side runner, run as the real entry point in a subprocess."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import cloudpickle

from htcml_jupyter.engine.payload import dump_function, dump_items, payload_header
from htcml_jupyter.jobside import runner, wire
from tests import helpers


def _run(tmp_path: Path) -> tuple[int, list[dict[str, Any]]]:
    proc = subprocess.run([sys.executable, runner.__file__, "function.pkl", "items.pkl",
                           "outcome.pkl"], cwd=tmp_path, capture_output=True, text=True)
    return proc.returncode, wire.decode_outcome((tmp_path / "outcome.pkl").read_bytes())[1]


def test_outcome_per_item_and_exit_codes(tmp_path: Path) -> None:
    dump_function(helpers.fail_on_multiples_of_three, {}, tmp_path / "function.pkl")
    dump_items([(5, 1), (6, 3)], tmp_path / "items.pkl")
    code, records = _run(tmp_path)
    assert code == wire.EXIT_ITEM_FAILED
    assert [r["index"] for r in records] == [5, 6]
    assert records[0]["ok"] and pickle.loads(records[0]["value"]) == 101
    assert not records[1]["ok"] and records[1]["error"]["type"] == "builtins.ValueError"


def test_python_version_mismatch_names_both_versions_and_fix(tmp_path: Path) -> None:
    body = cloudpickle.dumps((helpers.square, {}))
    header = payload_header()
    header["python"] = "2.7.18"
    runner.write_payload(str(tmp_path / "function.pkl"), header, body)
    dump_items([(0, 2)], tmp_path / "items.pkl")
    code, records = _run(tmp_path)
    assert code == wire.EXIT_PAYLOAD_FAILED
    message = records[0]["error"]["message"]
    assert "2.7.18" in message and runner.python_version() in message
    assert "python=" in message and "container_image" in message


def test_cloudpickle_version_mismatch(tmp_path: Path) -> None:
    header = payload_header()
    header["cloudpickle"] = "0.5.0"
    runner.write_payload(str(tmp_path / "function.pkl"), header,
                         cloudpickle.dumps((helpers.square, {})))
    dump_items([(0, 2)], tmp_path / "items.pkl")
    code, records = _run(tmp_path)
    assert code == wire.EXIT_PAYLOAD_FAILED
    message = records[0]["error"]["message"]
    assert "0.5.0" in message and cloudpickle.__version__ in message


def test_garbage_payload_gives_a_structured_error(tmp_path: Path) -> None:
    runner.write_payload(str(tmp_path / "function.pkl"), payload_header(), b"not a pickle")
    dump_items([(3, 1)], tmp_path / "items.pkl")
    code, records = _run(tmp_path)
    assert code == wire.EXIT_PAYLOAD_FAILED
    assert records[0]["index"] == 3
    assert "could not unpickle" in records[0]["error"]["message"]


def die_on_item(x: int, log: str = "", die: int = -1) -> int:
    """Appends ``x`` to ``log``, then dies hard (no outcome written) when ``x == die``."""
    import os

    with open(log, "a") as f:
        f.write(f"{x}\n")
    if x == die:
        os._exit(137)  # as the kernel's out-of-memory killer would end it
    return x * 10


def test_finished_items_survive_a_killed_chunk_and_are_not_run_again(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    dump_function(die_on_item, {"log": str(log), "die": 2}, tmp_path / "function.pkl")
    dump_items([(0, 0), (1, 1), (2, 2), (3, 3)], tmp_path / "items.pkl")
    code, records = _run(tmp_path)
    assert code == 137
    by_item = {r["index"]: r for r in records}
    assert [pickle.loads(by_item[i]["value"]) for i in (0, 1)] == [0, 10]  # on disk already
    assert by_item[2].get("lost") and by_item[3].get("lost")
    # the job runs again in the same folder (after an eviction or a checkpoint exit)
    dump_function(die_on_item, {"log": str(log), "die": -1}, tmp_path / "function.pkl")
    code, records = _run(tmp_path)
    assert code == wire.EXIT_OK
    assert [pickle.loads(r["value"]) for r in records] == [0, 10, 20, 30]
    assert log.read_text().split() == ["0", "1", "2", "2", "3"]  # 0 and 1 ran once


def saves_state(x: int) -> dict[str, Any]:
    import htcml_jupyter as htc

    ckpt = htc.checkpoint(every=1000)
    seen = ckpt.restore()
    ckpt.save({"x": x})
    return {"restored": seen, "folder": ckpt.folder}


def test_items_of_one_job_keep_separate_checkpoints(tmp_path: Path) -> None:
    import os

    dump_function(saves_state, {}, tmp_path / "function.pkl")
    dump_items([(0, 7), (1, 8)], tmp_path / "items.pkl")
    env = {**os.environ, "_HTCML_LOCAL": "1"}
    proc = subprocess.run([sys.executable, runner.__file__, "function.pkl", "items.pkl",
                           "outcome.pkl"], cwd=tmp_path, env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    records = wire.decode_outcome((tmp_path / "outcome.pkl").read_bytes())[1]
    values = [pickle.loads(r["value"]) for r in records]
    assert [v["restored"] for v in values] == [None, None]  # item 1 never saw item 0's state
    assert values[0]["folder"] != values[1]["folder"]
    assert os.listdir(tmp_path / "htcml_checkpoint") == []  # emptied once all are recorded


def _load_offset() -> int:
    return 1000


def _batch_plus(batch: list[int], offset: int) -> list[int]:
    if 7 in batch:
        raise KeyError("seven")
    return [x + offset for x in batch]


def test_setup_once_and_batches_in_one_job(tmp_path: Path) -> None:
    dump_function(_batch_plus, {}, tmp_path / "function.pkl", setup=_load_offset,
                  batch_size=3)
    dump_items([(i, i) for i in range(10)], tmp_path / "items.pkl")
    code, records = _run(tmp_path)
    assert code == wire.EXIT_ITEM_FAILED
    by_index = {r["index"]: r for r in records}
    assert [pickle.loads(by_index[i]["value"]) for i in (0, 1, 2, 3, 4, 5, 9)] == \
        [1000, 1001, 1002, 1003, 1004, 1005, 1009]
    assert {by_index[i]["error"]["type"] for i in (6, 7, 8)} == {"builtins.KeyError"}
    with open(tmp_path / "outcome.pkl", "rb") as f:
        header = wire.read_outcome_header(f)
    assert len(header["setup_runs"]) == 1


def test_a_restart_keeps_finished_items_of_a_big_job(tmp_path: Path) -> None:
    """Jobs of many items write their outcome at most about once a second, and always
    at the end; a second run finds every item finished and runs nothing again."""
    log = tmp_path / "calls.log"
    dump_function(die_on_item, {"log": str(log)}, tmp_path / "function.pkl")
    dump_items([(i, i) for i in range(5000)], tmp_path / "items.pkl")
    code, records = _run(tmp_path)
    assert code == wire.EXIT_OK and len(records) == 5000
    assert pickle.loads(records[4999]["value"]) == 49990
    assert len(log.read_text().split()) == 5000
    code, again = _run(tmp_path)
    assert code == wire.EXIT_OK and len(again) == 5000
    assert len(log.read_text().split()) == 5000  # nothing ran twice
