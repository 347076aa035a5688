"""Execute-side job runner: shipped with every job, needs only the standard library and
cloudpickle.

Usage (what the submit description runs)::

    python runner.py FUNCTION_FILE INPUT_FILE OUTCOME_FILE

``FUNCTION_FILE`` holds the cloudpickled ``(function, kwargs)``; ``INPUT_FILE`` holds the
items of this job as ``[(item_index, argument), ...]``.  The runner calls the function on
each item and always writes ``OUTCOME_FILE`` atomically: placeholders before the first
item (so a job killed mid-way still reports which items were lost), then again after
each item, so every finished item is on disk at once.  A restarted job (after a
checkpoint exit, or an eviction that brought the file back) keeps the records an earlier
run wrote and runs only the other items.  Each record is a dict:
``{"index", "ok", "value" | "error", "started", "seconds"}``;
a value is pickled on its own, so one result that cannot be unpickled on the submit side
does not hide the others.  An error is plain data (type name, message, traceback text,
host) plus the pickled exception when it pickles.

Exit status: 0 when every item succeeded, 3 when an item raised (the outcome says
which), 4 when the payload could not be loaded at all (``bootstrap.sh`` adds 5: a packed
environment that cannot start).  HTCondor's ``max_retries`` stops at these codes
(``retry_until``), so it reruns only crashes.

Both files start with a header: a magic line, then one line of JSON that records the
Python and cloudpickle versions that wrote them; a mismatch is reported before anything
is unpickled.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import sys
import time
import traceback
from typing import Any

if __package__:  # imported from the installed package
    from . import wire
else:  # run as a script in the job's folder, next to wire.py
    import wire  # type: ignore[no-redef]


def python_version() -> str:
    return "{}.{}.{}".format(*sys.version_info[:3])


def read_header(stream: io.BufferedIOBase | Any) -> dict[str, Any]:
    """Read the magic line and JSON header of a payload file."""
    magic = stream.readline()
    if magic != wire.MAGIC:
        raise ValueError(f"not an htcml payload file (starts with {magic[:40]!r})")
    header: dict[str, Any] = json.loads(stream.readline())
    return header


def write_payload(path: str, header: dict[str, Any], body: bytes) -> None:
    """Write ``MAGIC``, the header and the body to ``path`` atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(wire.MAGIC)
        f.write(json.dumps(header).encode() + b"\n")
        f.write(body)
    os.replace(tmp, path)


def _error_record(exc: BaseException, tb_text: str | None = None) -> dict[str, Any]:
    try:
        exc_bytes: bytes | None = _dumps(exc)
    except Exception:
        exc_bytes = None
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": tb_text if tb_text is not None else "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "host": socket.gethostname(),
        "python": python_version(),
        "exception": exc_bytes,
    }


def _dumps(obj: Any) -> bytes:
    try:
        import cloudpickle
    except ImportError:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return bytes(cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _version_problem(header: dict[str, Any]) -> str | None:
    want_py = str(header.get("python", ""))
    have_py = python_version()
    if want_py.split(".")[:2] != have_py.split(".")[:2]:
        return (f"the function was pickled with Python {want_py}, but this job runs Python "
                f"{have_py} ({sys.executable}). Run the job with a matching interpreter "
                f"(the map's python= option, or a container_image with Python "
                f"{'.'.join(want_py.split('.')[:2])}).")
    want_cp = str(header.get("cloudpickle", ""))
    try:
        import cloudpickle
    except ImportError:
        return (f"cloudpickle is not installed for {sys.executable} on this execute node "
                f"(the function was pickled with cloudpickle {want_cp}). Install "
                f"cloudpickle=={want_cp} there, or choose another python= or container_image.")
    have_cp = cloudpickle.__version__
    if want_cp.split(".")[:1] != have_cp.split(".")[:1]:
        return (f"the function was pickled with cloudpickle {want_cp}, but this job has "
                f"cloudpickle {have_cp}. Install cloudpickle=={want_cp} on the execute side "
                f"(or choose another python= or container_image).")
    return None


class VersionMismatch(RuntimeError):
    """The job's Python or cloudpickle differs from the one that pickled the function."""


def _install_job_api_fallback() -> None:
    """Make ``import htcml_jupyter`` work where the package is not installed, from the
    job-side modules shipped with the job (job.py, wire.py): ``report``, ``checkpoint``,
    ``device``."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("htcml_jupyter") is not None:
        return
    import types

    here = os.path.dirname(os.path.abspath(__file__))
    package = types.ModuleType("htcml_jupyter", "job-side API of htcml_jupyter")
    package.__path__ = []
    jobside = types.ModuleType("htcml_jupyter.jobside", "modules shipped with each job")
    jobside.__path__ = [here]
    sys.modules["htcml_jupyter"] = package
    sys.modules["htcml_jupyter.jobside"] = jobside
    package.jobside = jobside  # type: ignore[attr-defined]
    job = importlib.import_module("htcml_jupyter.jobside.job")
    for name in ("report", "checkpoint", "device", "local_reports"):
        setattr(package, name, getattr(job, name))


def _flush_reports() -> None:
    job = sys.modules.get("htcml_jupyter.jobside.job")
    if job is not None:
        job.flush_reports()


def _write_outcome(path: str, header: dict[str, Any], records: list[dict[str, Any]]) -> None:
    write_payload(path, header, pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL))


def _lost(indexes: list[int]) -> list[dict[str, Any]]:
    note = ("the job ended before this item finished (killed, out of memory, or evicted "
            "without a checkpoint)")
    host, python = socket.gethostname(), python_version()
    return [wire.lost_record(i, note, host, python) for i in indexes]


def run(function_file: str, input_file: str, outcome_file: str) -> int:
    """Run every item of ``input_file`` through the function; return the exit status."""
    out_header = {"python": python_version(), "host": socket.gethostname()}
    with open(input_file, "rb") as f:
        in_header = read_header(f)
        input_bytes = f.read()
    indexes: list[int] = list(in_header.get("items", []))
    # A restart (after a checkpoint exit, or an eviction that brought the outcome file
    # back) keeps what the earlier run finished and runs only the rest.
    finished = _finished_records(outcome_file, indexes)
    _write_outcome(outcome_file, out_header, _merge(indexes, finished))
    os.makedirs(wire.CHECKPOINT_DIR, exist_ok=True)  # always there for HTCondor to send back
    try:
        with open(function_file, "rb") as f:
            fn_header = read_header(f)
            problem = _version_problem(fn_header)
            if problem:
                raise VersionMismatch(problem)
            fn_bytes = f.read()
        import cloudpickle  # noqa: F401  (needed to load what cloudpickle wrote)

        _install_job_api_fallback()

        try:
            function, kwargs = pickle.loads(fn_bytes)
            items = pickle.loads(input_bytes)
        except Exception as exc:
            raise VersionMismatch(
                f"could not unpickle the function or its inputs ({type(exc).__name__}: "
                f"{exc}). Pickled with Python {fn_header.get('python')} and cloudpickle "
                f"{fn_header.get('cloudpickle')}; this job has Python {python_version()}. "
                f"A module the function uses by reference may be missing here: install it "
                f"on the execute side, or use the same environment (python=, "
                f"container_image).") from exc
    except Exception as exc:
        record = _error_record(exc)
        _write_outcome(outcome_file, out_header, [
            {"index": i, "ok": False, "started": None, "seconds": None, "error": record,
             "payload": True} for i in indexes])
        print(f"htcml: {record['type']}: {record['message']}", file=sys.stderr)
        return wire.EXIT_PAYLOAD_FAILED

    failed = any(not r.get("ok") for r in finished.values())
    for index, argument in items:
        if index in finished:
            continue
        marker = wire.ITEM_MARKER.format(index=index)
        print(marker, flush=True)
        print(marker, file=sys.stderr, flush=True)
        os.environ[wire.ITEM_ENV] = str(index)  # read by htcml_jupyter.report()
        started = time.time()
        try:
            value = function(argument, **kwargs)
            try:
                record = {"index": index, "ok": True, "value": _dumps(value)}
            except Exception as exc:
                raise TypeError(f"the result of item {index} cannot be pickled: "
                                f"{type(exc).__name__}: {exc}") from exc
        except BaseException as exc:  # every error becomes an outcome
            if isinstance(exc, KeyboardInterrupt):
                raise
            if isinstance(exc, SystemExit) and exc.code == wire.EXIT_CHECKPOINT:
                sys.stdout.flush()
                sys.stderr.flush()
                return wire.EXIT_CHECKPOINT
            failed = True
            # Leave out the runner's own frame: the traceback starts in the user's code.
            user_tb = exc.__traceback__.tb_next if exc.__traceback__ else None
            tb = "".join(traceback.format_exception(type(exc), exc, user_tb))
            print(tb, file=sys.stderr, end="", flush=True)
            record = {"index": index, "ok": False, "error": _error_record(exc, tb)}
        record["started"] = started
        record["seconds"] = time.time() - started
        finished[index] = record
        _flush_reports()
        # Each item's outcome is on disk as soon as it finishes: a job killed later
        # keeps it, and a restart skips it.
        _write_outcome(outcome_file, out_header, _merge(indexes, finished))
    sys.stdout.flush()
    sys.stderr.flush()
    _clear_checkpoints()
    return wire.EXIT_ITEM_FAILED if failed else wire.EXIT_OK


def _finished_records(path: str, indexes: list[int]) -> dict[int, dict[str, Any]]:
    """Records of items an earlier run of this job finished (none when the file is
    missing, empty or damaged, or holds only placeholders)."""
    wanted = set(indexes)
    try:
        with open(path, "rb") as f:
            read_header(f)
            records = pickle.loads(f.read())
        return {int(r["index"]): r for r in records
                if int(r["index"]) in wanted and not r.get("lost") and not r.get("payload")}
    except Exception:
        return {}


def _merge(indexes: list[int], finished: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per item: the finished ones, a "lost" placeholder for the rest."""
    pending = [i for i in indexes if i not in finished]
    return [*(finished[i] for i in indexes if i in finished), *_lost(pending)]


def _clear_checkpoints() -> None:
    """Every item is recorded: the saved states are no longer needed (the folder stays,
    empty, because HTCondor sends it back)."""
    import shutil

    for name in os.listdir(wire.CHECKPOINT_DIR) if os.path.isdir(wire.CHECKPOINT_DIR) else ():
        path = os.path.join(wire.CHECKPOINT_DIR, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    return run(*args)


if __name__ == "__main__":
    sys.exit(main())
