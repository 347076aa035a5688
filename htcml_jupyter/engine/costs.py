"""What a map's environment costs: bytes the submit side sends, and each job's start.

The record a map keeps under ``"environment"`` in ``map.json`` says how the archive
travels (``route``) and how big it is; the seconds a job spent getting its environment
ready come from the one line ``bootstrap.sh`` writes to the job's error file
(``htcml-environment: ready in 9.81 s (unpacked)``), read as text, never executed.
"""

from __future__ import annotations

import re
import statistics
import warnings
from pathlib import Path
from typing import Any

#: Above this size an archive sent to every job from the submit side earns a warning.
LARGE_ARCHIVE = 1_000_000_000

_READY = re.compile(r"^htcml-environment: ready in ([0-9.]+) s \((.+)\)$", re.MULTILINE)

#: Routes an archive takes to the jobs.
ROUTE_TRANSFER = "transfer"   # an input file of every job, from the submit side
ROUTE_COMMON = "common"       # a common input file: once per execute point
ROUTE_URL = "url"             # fetched by the execute point from a URL


def sent_bytes(record: dict[str, Any], jobs: int, machines: int | None = None) -> int | None:
    """Bytes the submit side sends for ``jobs`` jobs (``machines`` execute points when
    the archive is a common input file); ``None`` when the size is unknown."""
    route = record.get("route")
    if route == ROUTE_URL:
        return 0
    size = record.get("size")
    if not isinstance(size, int):
        return None
    if route == ROUTE_COMMON:
        return size * min(jobs, machines if machines is not None else jobs)
    if route == ROUTE_TRANSFER:
        return size * jobs
    return 0


def warn_if_costly(record: dict[str, Any], jobs: int) -> str | None:
    """Warn once (Python's ``warnings``) when an archive over 1 GB would go from the
    submit side to every job, naming the cheaper routes; returns the message."""
    size = record.get("size")
    if record.get("route") != ROUTE_TRANSFER or not isinstance(size, int) \
            or size <= LARGE_ARCHIVE or jobs < 2:
        return None
    message = (f"the packed environment is {size / 1e9:.1f} GB and goes from this machine "
               f"to each of the {jobs} jobs ({size * jobs / 1e9:.0f} GB in all). Cheaper: "
               f"an image (`htcml env image NAME`, then container_image=...), or an archive "
               f"made once with `htcml env pack --output FILE`, uploaded to OSDF or a web "
               f"server, and passed as environment='osdf:///.../FILE'")
    warnings.warn(message, stacklevel=4)
    return message


#: How many of a map's first jobs its per-job start is the median of.
SAMPLED_JOBS = 8


def job_start_seconds(logs: Path, tasks: int = SAMPLED_JOBS) -> list[float]:
    """Seconds each of the first ``tasks`` finished jobs spent getting its environment
    ready (unpacking the archive or linking the machine's copy)."""
    out: list[float] = []
    for task in range(tasks):
        try:
            with open(logs / f"task-{task}.err", "rb") as f:
                head = f.read(8192).decode(errors="replace")
        except OSError:
            continue
        match = _READY.search(head)
        if match:
            out.append(float(match.group(1)))
    return out


def summarize(record: dict[str, Any], jobs: int, start_seconds: list[float]) -> dict[str, Any]:
    """The record with the measured costs added: ``bytes_sent`` for ``jobs`` jobs and
    ``job_start_seconds``, the median of ``start_seconds`` (what
    :func:`job_start_seconds` read), when any job gave one."""
    out = dict(record)
    out["jobs"] = jobs
    out["bytes_sent"] = sent_bytes(record, jobs)
    if start_seconds:
        out["job_start_seconds"] = round(statistics.median(start_seconds), 2)
        out["job_start_samples"] = len(start_seconds)
    return out
