"""Batches (``batch_size=``): jobs hold whole batches, on creation and on retry, and
record which items went together; the notebook reads that record."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter.engine.chunking import call_key
from htcml_jupyter.engine.payload import dump_function, dump_items
from htcml_jupyter.jobside import runner, wire
from tests import helpers


def _batch_sizes_after_flag(batch: list[int], flag: str = "") -> list[int]:
    """Each item's result is the size of the batch it came in; the batch holding item 0
    fails until ``flag`` exists."""
    if 0 in batch and not os.path.exists(flag):
        raise RuntimeError(f"flag {flag} is missing")
    return [len(batch)] * len(batch)


def test_retry_keeps_whole_batches(map_root: Path, shared_tmp: Path) -> None:
    flag = shared_tmp / "flag"
    m = htc.map(_batch_sizes_after_flag, range(12), kwargs={"flag": str(flag)},
                batch_size=4, root=map_root, backend="local")
    assert m.wait(timeout=60)
    assert sorted(m.errors) == [0, 1, 2, 3]  # one batch failed, all its items with it
    flag.touch()
    assert m.retry() == [0, 1, 2, 3]
    # "auto" gives a retry of 4 items one job each on two or more slots; rounded up to
    # whole batches, the 4 items are again one batch of 4, as they were when created
    assert m.results(timeout=60) == [4] * 12
    retried = [len(items) for _, items in m.store.tasks()][-1:]
    assert retried == [4]


def _print_batch(batch: list[int], stop_at: str = "") -> list[int]:
    """Prints its batch; with ``stop_at``, the first batch holding item 2 ends the job as
    a checkpoint exit would (once: the file marks it done)."""
    print("batch", batch)
    if stop_at and 2 in batch and not os.path.exists(stop_at):
        Path(stop_at).touch()
        raise SystemExit(wire.EXIT_CHECKPOINT)
    return [x * 10 for x in batch]


def _run_job(folder: Path) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([sys.executable, runner.__file__, "function.pkl", "items.pkl",
                           "outcome.pkl"], cwd=folder, capture_output=True, text=True)
    with open(folder / "outcome.pkl", "rb") as f:
        return proc.returncode, wire.read_outcome_header(f)


def test_a_job_records_its_calls(tmp_path: Path) -> None:
    dump_function(_print_batch, {}, tmp_path / "function.pkl", batch_size=2)
    dump_items([(i, i) for i in (2, 5, 7, 9, 11)], tmp_path / "items.pkl")
    code, header = _run_job(tmp_path)
    assert code == wire.EXIT_OK
    assert header["batch_size"] == 2 and header["calls"] == [2, 7, 11]


def test_a_restarted_job_keeps_the_calls_it_made(tmp_path: Path) -> None:
    stop = tmp_path / "stopped-once"
    dump_function(_print_batch, {"stop_at": str(stop)}, tmp_path / "function.pkl",
                  batch_size=2)
    dump_items([(i, i) for i in range(6)], tmp_path / "items.pkl")
    code, header = _run_job(tmp_path)
    assert code == wire.EXIT_CHECKPOINT and header["calls"] == [0, 2, 4]
    code, header = _run_job(tmp_path)
    assert code == wire.EXIT_OK and header["calls"] == [0, 2, 4]
    assert wire.ok_items(header) == set(range(6))


def test_an_unbatched_job_records_no_calls(tmp_path: Path) -> None:
    dump_function(helpers.square, {}, tmp_path / "function.pkl")
    dump_items([(0, 3)], tmp_path / "items.pkl")
    code, header = _run_job(tmp_path)
    assert code == wire.EXIT_OK and "calls" not in header and "batch_size" not in header


@pytest.mark.parametrize(("items", "item", "calls", "batch", "key"), [
    ([0, 1, 2, 3, 4], 4, None, None, 4),       # one item per call
    ([0, 1, 2, 3, 4], 4, None, 2, 4),          # nothing recorded yet: the job's batches
    ([0, 1, 2, 3, 4], 3, None, 2, 2),
    ([0, 1, 2, 3, 4], 3, [0, 1, 4], 2, 1),     # what the job recorded wins
    ([3, 8, 9, 12], 12, [3, 9], 2, 9),         # a retry's job: items not contiguous
    (range(10, 20), 15, [10, 13, 16, 19], 3, 13),
])
def test_call_key(items: Sequence[int], item: int, calls: list[int] | None,
                  batch: int | None, key: int) -> None:
    assert call_key(items, item, calls, batch) == key


def test_a_batched_map_reads_each_items_call_from_its_job(map_root: Path) -> None:
    m = htc.map(_print_batch, range(7), batch_size=3, chunksize=7, root=map_root,
                backend="local")
    assert m.results(timeout=60) == [x * 10 for x in range(7)]
    assert [m.call_of(i) for i in range(7)] == [0, 0, 0, 3, 3, 3, 6]
    assert "batch [3, 4, 5]" in m.stdout(4) and "batch [0, 1, 2]" not in m.stdout(4)
