"""What the job side and the notebook side agree on: file formats, exit codes, markers.

Standard library only.  Shipped with every job inside ``jobside.pyz`` (see :mod:`.archive`);
the notebook side imports the same names from here, so each is defined exactly once.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, NamedTuple

#: First line of every payload file (function, inputs).
MAGIC = b"HTCML-PAYLOAD 1\n"

#: Runner exit codes.
EXIT_OK = 0
#: An item raised: the outcome says which.  ``retry_until`` uses it so that
#: ``max_retries`` reruns only crashes, never Python errors.
EXIT_ITEM_FAILED = 3
#: The payload could not be loaded at all (version mismatch, missing module).
EXIT_PAYLOAD_FAILED = 4
#: The job's packed environment could not start (``bootstrap.sh``): the archive did not
#: unpack, or its interpreter does not run on the execute machine.  The script holds the
#: same number; its stderr says what the execute side lacks.
EXIT_ENVIRONMENT_FAILED = 5
#: The function saved a checkpoint: HTCondor spools it and restarts the job.
EXIT_CHECKPOINT = 85

#: The folder, inside the job's working folder, that HTCondor transfers as checkpoint.
CHECKPOINT_DIR = "htcml_checkpoint"
#: The folder, inside the job's working folder, whose files come back as the items'
#: output files: one subfolder per call of the function, named by its first item.
OUTPUTS_DIR = "htcml_outputs"
#: Environment variable naming the call running now (its first item): read by
#: ``output_dir()``.
CALL_ENV = "_HTCML_CALL"
#: The job attribute each batch of live reports is written to (one event per batch).
REPORT_ATTRIBUTE = "HtcmlReport"
#: The longest text sent in one chirp update; larger batches are split.
MAX_UPDATE = 3500

#: Printed to stdout and stderr before each item, so one job's output splits per item.
ITEM_MARKER = "===== htcml item {index} ====="
ITEM_MARKER_PREFIX = "===== htcml item "
#: Environment variable naming the item running now (read by ``report()``).
ITEM_ENV = "_HTCML_ITEM"
#: Environment variable: a file that local jobs append their reports to.
METRICS_FILE_ENV = "_HTCML_METRICS_FILE"
#: Environment variable set by the local backend (a job outside HTCondor).
LOCAL_ENV = "_HTCML_LOCAL"

#: Error type recorded for an item whose job ended before it finished.
JOB_LOST = "htcml_jupyter.JobLost"

#: Keys of one live-report record, as sent by the job and read by the notebook.
REPORT_ITEM = "i"
REPORT_TIME = "t"
REPORT_STEP = "s"
REPORT_METRICS = "m"
REPORT_SAVED = "saved"
REPORT_RESTORED = "restored"


def split_item_output(text: str, index: int) -> str:
    """The part of a job's stdout or stderr that ``index`` printed (all of it when the
    job printed no markers)."""
    marker = ITEM_MARKER.format(index=index)
    start = text.find(marker)
    if start < 0:
        return text
    start += len(marker) + 1
    end = text.find(ITEM_MARKER_PREFIX, start)
    return text[start:] if end < 0 else text[start:end]


def lost_record(index: int, note: str, host: str, python: str) -> dict[str, Any]:
    """The outcome record of an item whose job ended before it finished."""
    return {"index": index, "ok": False, "lost": True, "started": None, "seconds": None,
            "error": {"type": JOB_LOST, "message": note, "traceback": note,
                      "host": host, "python": python, "exception": None}}


def read_header(stream: Any) -> dict[str, Any]:
    """Read the magic line and JSON header of a payload file."""
    magic = stream.readline(len(MAGIC))
    if magic != MAGIC:
        raise ValueError(f"not an htcml payload file (starts with {magic[:40]!r})")
    header: dict[str, Any] = json.loads(stream.readline())
    return header


def write_payload(path: str, header: dict[str, Any], body: bytes) -> None:
    """Write ``MAGIC``, the header and the body to ``path`` atomically."""
    write_atomically(path, MAGIC + json.dumps(header).encode() + b"\n" + body)


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------- outcome files
#
# An outcome file is data that cannot run code until a value is asked for:
#
#   OUTCOME_MAGIC
#   one line of JSON: the header (host, Python, set-up runs) plus "ok" (the items that
#       have a value, as [start, stop) runs), "plain" (how many table rows), "records"
#       (how many JSON lines) and "size" (bytes of the JSON lines)
#   a table of plain results (ok, a value, a start time and a duration, nothing else),
#       one fixed-size binary row each (PLAIN_ROW: index, started, seconds, value
#       length): the bulk of a big map, read at C speed
#   one line of JSON per other record, its bytes fields replaced by their length:
#       "value", and "exception" inside "error" (null when the exception did not
#       pickle); [index] stands for an item not finished yet (the header's "lost" says
#       why: the note, host and Python of lost_record)
#   the raw bytes of those fields: the table's values in row order, then the lines'
#       (a value, then an exception) in line order
#
# Reading status needs the header line alone; only a value or an exception is pickle,
# and only the calls that return values unpickle it.

#: First line of every outcome file.
OUTCOME_MAGIC = b"HTCML-OUTCOME 2\n"
#: The longest header line read (a header lists runs of items, never values).
MAX_OUTCOME_HEADER = 64 << 20
#: One row of the table of plain results: index, started, seconds, value length.
PLAIN_ROW = struct.Struct("<qddQ")
_PLAIN = frozenset({"index", "ok", "value", "started", "seconds"})


class Encoded(NamedTuple):
    """One record, encoded: a table row or a JSON line, and its raw bytes."""

    row: bytes
    line: bytes
    raw: bytes


def encode_record(record: dict[str, Any]) -> Encoded:
    """One record as a table row (a plain result) or a JSON line whose bytes fields are
    replaced by their lengths; the bytes go to ``raw``."""
    value = record.get("value")
    if (record.get("ok") is True and record.keys() == _PLAIN and type(value) is bytes
            and type(record["started"]) in (int, float)
            and type(record["seconds"]) in (int, float)):
        return Encoded(PLAIN_ROW.pack(int(record["index"]), record["started"],
                                      record["seconds"], len(value)), b"", value)
    line = dict(record)
    raw = b""
    if "value" in line:
        raw = bytes(line["value"])
        line["value"] = len(raw)
    error = line.get("error")
    if isinstance(error, dict):
        exc = error.get("exception")
        error = dict(error)
        error["exception"] = None if exc is None else len(exc)
        raw += b"" if exc is None else bytes(exc)
        line["error"] = error
    return Encoded(b"", json.dumps(line, separators=(",", ":")).encode() + b"\n", raw)


def lost_line(index: int) -> Encoded:
    """The short form of a "lost" placeholder (the header's ``"lost"`` says why)."""
    return Encoded(b"", b"[%d]\n" % index, b"")


def ok_runs(indexes: list[int]) -> list[list[int]]:
    """Sorted item indexes as ``[start, stop)`` runs."""
    runs: list[list[int]] = []
    for i in sorted(indexes):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        elif not runs or runs[-1][1] < i:
            runs.append([i, i + 1])
    return runs


def has_value(record: dict[str, Any] | None) -> bool:
    """Whether a record holds a result."""
    return record is not None and record.get("ok") is True and "value" in record


def join_outcome(header: dict[str, Any], encoded: list[Encoded], ok: list[int]) -> bytes:
    """The bytes of an outcome file from encoded records (``ok``: items with a value)."""
    rows = [e for e in encoded if e.row]
    others = [e for e in encoded if not e.row]
    lines = b"".join([e.line for e in others])
    head = {**header, "ok": ok_runs(ok), "plain": len(rows), "records": len(others),
            "size": len(lines)}
    return b"".join([OUTCOME_MAGIC, json.dumps(head).encode(), b"\n",
                     *[e.row for e in rows], lines, *[e.raw for e in rows],
                     *[e.raw for e in others]])


def encode_outcome(header: dict[str, Any], records: list[dict[str, Any]]) -> bytes:
    """The bytes of an outcome file holding ``records``."""
    return join_outcome(header, [encode_record(r) for r in records],
                        [int(r["index"]) for r in records if has_value(r)])


def read_outcome_header(stream: Any) -> dict[str, Any]:
    """The header of an outcome file (``stream`` at its start, binary): nothing past
    the header line is read.  ValueError when it is not one."""
    magic = stream.readline(len(OUTCOME_MAGIC))
    if magic != OUTCOME_MAGIC:
        raise ValueError(f"not an htcml outcome file of this version (starts with "
                         f"{magic[:40]!r})")
    line = stream.readline(MAX_OUTCOME_HEADER)
    if not line.endswith(b"\n"):
        raise ValueError("the outcome file's header is truncated or too long")
    header = json.loads(line)
    if not isinstance(header, dict) or not isinstance(header.get("ok", []), list):
        raise ValueError("the outcome file's header is not a JSON object")
    return header


def ok_items(header: dict[str, Any]) -> set[int]:
    """The items that have a value, from an outcome header."""
    out: set[int] = set()
    for run in header.get("ok", []):
        start, stop = int(run[0]), int(run[1])
        if stop - start > 1 << 31:
            raise ValueError(f"an outcome header names an impossible run {run!r}")
        out.update(range(start, stop))
    return out


def decode_outcome(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Header and records of an outcome file's bytes, values and exceptions as bytes
    (not unpickled).  ValueError when the file is damaged."""
    import io

    stream = io.BytesIO(data)
    header = read_outcome_header(stream)
    table = stream.tell()
    try:
        plain, size, count = (int(header[key]) for key in ("plain", "size", "records"))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the outcome file's header lacks its sizes ({exc})") from None
    if min(plain, size, count) < 0:
        raise ValueError("the outcome file's header gives negative sizes")
    start = table + plain * PLAIN_ROW.size
    section = data[start:start + size]
    if len(data) < start + size:
        raise ValueError("the outcome file is truncated")
    at, end = start + size, len(data)
    records: list[dict[str, Any]] = []
    append = records.append
    for index, started, seconds, length in PLAIN_ROW.iter_unpack(data[table:start]):
        if at + length > end:
            raise ValueError("the outcome file's value lengths do not match its bytes")
        append({"index": index, "ok": True, "value": data[at:at + length],
                "started": started, "seconds": seconds})
        at += length
    lines = json.loads(b"[" + section.rstrip(b"\n").replace(b"\n", b",") + b"]") \
        if size else []
    if not isinstance(lines, list) or len(lines) != count:
        raise ValueError("the outcome file's records do not match its header")
    lost = header.get("lost")
    for line in lines:
        record = _lost_line(line, lost) if type(line) is list else line
        if not isinstance(record, dict) or type(record.get("index")) is not int:
            raise ValueError("an outcome record is not an object with an index")
        if "value" in record:
            record["value"], at = _take(data, at, end, record["value"])
        error = record.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise ValueError("an outcome record's error is not an object")
            if error.get("exception") is not None:
                error["exception"], at = _take(data, at, end, error["exception"])
        append(record)
    return header, records


def _take(data: bytes, at: int, end: int, length: Any) -> tuple[bytes, int]:
    """``length`` bytes of ``data`` from ``at``, and where the next bytes start."""
    if type(length) is not int or length < 0 or at + length > end:
        raise ValueError("the outcome file's value lengths do not match its bytes")
    return data[at:at + length], at + length


def _lost_line(line: list[Any], lost: Any) -> dict[str, Any]:
    """The record of a lost item's short line, ``[index]``."""
    if len(line) == 1 and isinstance(lost, dict) and type(line[0]) is int:
        return lost_record(line[0], str(lost.get("note", "")), str(lost.get("host", "")),
                           str(lost.get("python", "")))
    raise ValueError(f"an outcome record line has the wrong form: {line[:4]!r}")
