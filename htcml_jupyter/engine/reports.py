"""Live reports and checkpoint notes sent by running jobs, decoded per item.

A job's ``htcml_jupyter.report()`` and ``checkpoint()`` send small records (keys in
:mod:`htcml_jupyter.jobside.wire`); backends deliver them as ``REPORTED`` events.  This
module is the one place that reads those keys.  Records are JSON sent by jobs, so they
are data, checked here: a record of the wrong shape is skipped, never raised on.
"""

from __future__ import annotations

from typing import Any

from ..jobside.wire import (
    REPORT_ITEM,
    REPORT_METRICS,
    REPORT_RESTORED,
    REPORT_SAVED,
    REPORT_STEP,
    REPORT_TIME,
)


class ReportBook:
    """Every report and checkpoint note seen so far, by item (not thread-safe: the map
    calls it under its lock)."""

    def __init__(self) -> None:
        self.metrics: dict[int, list[dict[str, Any]]] = {}
        self.checkpoint_notes: dict[int, dict[str, Any]] = {}
        self.seen = 0

    def add(self, records: list[dict[str, Any]], default_item: int | None,
            evictions: int) -> None:
        """Take one batch of records from a job; ``default_item`` is the job's first item
        (records made outside an item name none), ``evictions`` its eviction count."""
        for record in records if isinstance(records, list) else ():
            if not isinstance(record, dict):
                continue
            item = record.get(REPORT_ITEM, default_item)
            if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                continue
            if REPORT_METRICS in record:
                metrics = record[REPORT_METRICS]
                if not isinstance(metrics, dict):
                    continue
                row = {"step": _number(record.get(REPORT_STEP)),
                       "time": _number(record.get(REPORT_TIME)),
                       **{str(k): v for k, v in metrics.items() if _number(v) is not None}}
                self.metrics.setdefault(item, []).append(row)
                self.seen += 1
            elif REPORT_SAVED in record:
                self._note(item)["saved"] = _number(record[REPORT_SAVED])
            elif REPORT_RESTORED in record:
                info = self._note(item)
                info["restored"].append(_number(record[REPORT_RESTORED]))
                if evictions > info.get("evictions_seen", 0):  # a restart after an eviction
                    info["evictions_seen"] = evictions
                    info.setdefault("resumed", []).append(_number(record[REPORT_RESTORED]))

    def _note(self, item: int) -> dict[str, Any]:
        return self.checkpoint_notes.setdefault(item, {"saved": None, "restored": []})

    def checkpoint_summary(self, item: int, evictions: int) -> dict[str, Any] | None:
        """``saved``, ``restored``, ``resumed`` and ``evictions`` of one item, or None
        when it neither checkpointed nor was evicted."""
        info = self.checkpoint_notes.get(item)
        if info is None and not evictions:
            return None
        info = info or {"saved": None, "restored": []}
        return {"saved": info["saved"], "restored": list(info["restored"]),
                "resumed": list(info.get("resumed", [])), "evictions": evictions}


def _number(value: Any) -> int | float | None:
    """``value`` when it is a number (a step, a time, a metric), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None
