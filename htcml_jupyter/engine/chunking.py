"""How a map's items are packed into jobs."""

from __future__ import annotations

import math


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


