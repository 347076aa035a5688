"""How a map's items are packed into jobs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def auto_chunksize(n_items: int, slots: int) -> int:
    """Items per job for ``chunksize="auto"``.

    With at most twice as many items as matching slots, every item gets its own job
    (best load balance and isolation).  With more, items are packed so that each slot
    gets about one job: the per-job cost of HTCondor (about a third of a slot-second
    plus a fresh interpreter) is then paid once per slot instead of once per item.
    When no slot matches (yet), every item gets its own job.
    """
    if slots <= 0 or n_items <= 2 * slots:  # no matching slot known: keep items apart
        return 1
    return math.ceil(n_items / slots)


def items_per_job(chunksize: int | str, n_items: int, batch_size: int | None,
                  slots: Callable[[], int]) -> int:
    """Items per job of a submission of ``n_items`` items (a map's creation, a retry).

    ``chunksize`` is a number, used as given, or ``"auto"`` (:func:`auto_chunksize`
    over ``slots()``, asked only then), rounded up to whole batches when the map has a
    ``batch_size``: a job never splits a batch, so a retried item comes back in a batch
    of the size it was created with.
    """
    if chunksize != "auto":
        return int(chunksize)
    size = auto_chunksize(n_items, slots())
    if batch_size:
        size = math.ceil(size / batch_size) * batch_size  # whole batches per job
    return size


def call_key(items: Sequence[int], item: int, calls: Sequence[int] | None,
             batch_size: int | None) -> int:
    """The first item of the call of the function that handled ``item``.

    ``items`` are the items of ``item``'s job in order; ``calls`` the first item of each
    of its calls, as the job recorded them in its outcome header (``None`` when it
    recorded none: an unbatched map, or a job that has not written its outcome yet).
    The job's record decides; without one the batches are those the job will make,
    ``batch_size`` items at a time in the job's order.
    """
    if calls:
        starts = set(calls)
        position = items.index(item)
        for back in range(position, -1, -1):
            if items[back] in starts:
                return items[back]
    if not batch_size:
        return item
    position = items.index(item)
    return items[position - position % int(batch_size)]
