"""Batches (``batch_size=``): jobs hold whole batches, on creation and on retry."""

from __future__ import annotations

import os
from pathlib import Path

import htcml_jupyter as htc


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
