"""Execute-side job runner: shipped with every job, needs only the standard library and
cloudpickle.

Usage (what the submit description runs)::

    python runner.py FUNCTION_FILE INPUT_FILE OUTCOME_FILE

``FUNCTION_FILE`` holds the cloudpickled function and its keyword arguments (plus the
map's ``setup`` and ``batch_size``: :class:`calls.Payload`); ``INPUT_FILE`` holds the
items of this job as ``[(item_index, argument), ...]``.  The runner runs the set-up
once, calls the function on each item (or each batch) and always writes
``OUTCOME_FILE`` atomically: placeholders before the first item (so a job killed
mid-way still reports which items were lost), then again after each call (at most
about once a second for jobs of more than 1,000 items), so finished items are on disk
at once.  A restarted job (after a
checkpoint exit, or an eviction that brought the file back) keeps the records an earlier
run wrote and runs only the other items.  Each record is a dict:
``{"index", "ok", "value" | "error", "started", "seconds"}``, plus ``"call"`` and
``"files"`` when the call wrote files under ``output_dir()``; the header lists the
set-up's runs (``"setup_runs"``), the items that have a value and, with a
``batch_size``, the batch size and each call's first item (``"calls"``, in the job's
order: an item belongs to the last call that starts at or before it).  The outcome file is
data (JSON, format in :mod:`wire`): only each value, pickled on its own, and each pickled
exception are pickle, so reading which items succeeded never unpickles anything, and one
result that cannot be unpickled on the submit side does not hide the others.  An error
is plain data (type name, message, traceback text, host) plus the pickled exception when
it pickles.

Exit status: 0 when every item succeeded, 3 when an item raised (the outcome says
which), 4 when the payload could not be loaded at all (``bootstrap.sh`` adds 5: a packed
environment that cannot start).  HTCondor's ``max_retries`` stops at these codes
(``retry_until``), so it reruns only crashes.

The input files start with a header: a magic line, then one line of JSON that records
the Python and cloudpickle versions that wrote them; a mismatch is reported before
anything is unpickled.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from typing import Any

if __package__:  # imported from the installed package
    from . import wire
else:  # run as a script in the job's folder, next to wire.py
    import wire  # type: ignore[no-redef]


def python_version() -> str:
    return "{}.{}.{}".format(*sys.version_info[:3])


#: The payload files' format lives in :mod:`wire`; these names are kept here for callers.
read_header = wire.read_header
write_payload = wire.write_payload
write_atomically = wire.write_atomically


def _error_record(exc: BaseException, tb_text: str | None = None) -> dict[str, Any]:
    import traceback  # only when something failed: a job that succeeds never loads it
    try:
        exc_bytes: bytes | None = _dumps(exc)
    except Exception:
        exc_bytes = None
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": tb_text if tb_text is not None else "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "host": os.uname().nodename,  # socket.gethostname(), without loading socket
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
    # The job side travels as one archive; what a launcher ships beside it (the torchrun
    # modules a run's pickled function names) is found in the folder that holds it.
    jobside.__path__ = [here, os.path.dirname(here)] if here.endswith(".pyz") else [here]
    sys.modules["htcml_jupyter"] = package
    sys.modules["htcml_jupyter.jobside"] = jobside
    package.jobside = jobside  # type: ignore[attr-defined]
    job = importlib.import_module("htcml_jupyter.jobside.job")
    package.File = importlib.import_module(  # type: ignore[attr-defined]
        "htcml_jupyter.jobside.calls").File
    for name in ("report", "checkpoint", "device", "local_reports", "output_dir"):
        setattr(package, name, getattr(job, name))


def _flush_reports() -> None:
    job = sys.modules.get("htcml_jupyter.jobside.job")
    if job is not None:
        job.flush_reports()


#: Why an item has no record yet (the job ended before it finished).
LOST_NOTE = ("the job ended before this item finished (killed, out of memory, or evicted "
             "without a checkpoint)")


def run(function_file: str, input_file: str, outcome_file: str,
        clear_checkpoints: bool = True) -> int:
    """Run every item of ``input_file`` through the function; return the exit status.

    ``clear_checkpoints=False`` keeps the saved checkpoints when every item is recorded
    (a caller that may restart the same work, as a torchrun node does)."""
    out_header: dict[str, Any] = {"python": python_version(), "host": os.uname().nodename}
    with open(input_file, "rb") as f:
        in_header = read_header(f)
        input_bytes = f.read()
    indexes: list[int] = _indexes(in_header)
    # A restart (after a checkpoint exit, or an eviction that brought the outcome file
    # back) keeps what the earlier run finished and runs only the rest.
    earlier_header, finished = _finished_records(outcome_file, indexes)
    setup_runs: list[dict[str, Any]] = list(earlier_header.get("setup_runs", []))
    out_header["setup_runs"] = setup_runs
    writer = _OutcomeWriter(outcome_file, out_header, indexes)
    writer.write(finished)
    os.makedirs(wire.CHECKPOINT_DIR, exist_ok=True)  # always there for HTCondor to send back
    os.makedirs(wire.OUTPUTS_DIR, exist_ok=True)
    try:
        with open(function_file, "rb") as f:
            fn_header = read_header(f)
            problem = _version_problem(fn_header)
            if problem:
                raise VersionMismatch(problem)
            fn_bytes = f.read()
        import cloudpickle  # noqa: F401  (needed to load what cloudpickle wrote)

        _install_job_api_fallback()
        calls = _calls_module()
        try:
            payload = calls.Payload.from_pickled(pickle.loads(fn_bytes))
            items = pickle.loads(input_bytes)
            payload.kwargs = calls.localize(payload.kwargs)
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
        writer.write_all([{"index": i, "ok": False, "started": None, "seconds": None,
                           "error": record, "payload": True} for i in indexes])
        print(f"htcml: {record['type']}: {record['message']}", file=sys.stderr)
        return wire.EXIT_PAYLOAD_FAILED

    failed = any(not r.get("ok") for r in finished.values())
    pending = [(i, a) for i, a in items if i not in finished]
    planned = calls.calls_of(pending, payload.batch_size)
    if payload.batch_size:  # which items went together: read back, never recomputed
        out_header["batch_size"] = payload.batch_size
        out_header["calls"] = [*(k for k in earlier_header.get("calls", ()) if k in finished),
                               *(call[0][0] for call in planned)]
    setup = None
    if pending and payload.setup is not None:
        started = time.time()
        try:
            setup = calls.run_setup(payload)
        except BaseException as exc:  # every pending item fails with the set-up's error
            if isinstance(exc, KeyboardInterrupt):
                raise
            tb = _user_traceback(exc)
            print(f"htcml: the set-up failed\n{tb}", file=sys.stderr, end="", flush=True)
            error = _error_record(exc, "the set-up failed (it ran before the items):\n" + tb)
            for index, _ in pending:
                finished[index] = {"index": index, "ok": False, "error": error,
                                   "started": started, "seconds": time.time() - started}
            writer.write(finished, force=True)
            return wire.EXIT_ITEM_FAILED
        setup_runs.append({"started": started, "seconds": setup.seconds,
                           "host": out_header["host"]})
    for call in planned:
        key = call[0][0]
        marker = wire.ITEM_MARKER.format(index=key)
        print(marker, flush=True)
        print(marker, file=sys.stderr, flush=True)
        os.environ[wire.ITEM_ENV] = str(key)  # read by htcml_jupyter.report()
        os.environ[wire.CALL_ENV] = str(key)  # read by htcml_jupyter.output_dir()
        started = time.time()
        try:
            records = _value_records(call, calls.call_function(payload, setup, call))
        except BaseException as exc:  # every error becomes an outcome
            if isinstance(exc, KeyboardInterrupt):
                raise
            if isinstance(exc, SystemExit) and exc.code == wire.EXIT_CHECKPOINT:
                writer.write(finished, force=True)
                sys.stdout.flush()
                sys.stderr.flush()
                return wire.EXIT_CHECKPOINT
            tb = _user_traceback(exc)
            print(tb, file=sys.stderr, end="", flush=True)
            error = _error_record(exc, tb)
            records = [{"index": i, "ok": False, "error": error} for i, _ in call]
        seconds = time.time() - started
        files = calls.written_files(calls.output_folder(wire.OUTPUTS_DIR, key))
        for record in records:
            record["started"] = started
            record["seconds"] = seconds
            if files:
                record["call"] = key
                record["files"] = files
            failed = failed or not record["ok"]
            finished[record["index"]] = record
        _flush_reports()
        # Each finished item's outcome reaches the disk at once (throttled for jobs of
        # very many items): a job killed later keeps it, and a restart skips it.
        writer.write(finished)
    writer.write(finished, force=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if clear_checkpoints:
        clear_saved_checkpoints()
    return wire.EXIT_ITEM_FAILED if failed else wire.EXIT_OK


def _indexes(header: dict[str, Any]) -> list[int]:
    """The job's item indexes: a list, or ``[first, count]`` for a contiguous run."""
    span = header.get("span")
    if span is not None:
        return list(range(int(span[0]), int(span[0]) + int(span[1])))
    return list(header.get("items", []))


def _calls_module() -> Any:
    """``htcml_jupyter.jobside.calls`` (installed, or the job's copy through the stand-in
    package): the module that pickled ``File`` values load from."""
    return __import__("htcml_jupyter.jobside.calls", fromlist=["calls"])


def _user_traceback(exc: BaseException) -> str:
    """The traceback without the runner's own frames: it starts in the user's code."""
    import traceback

    # by their code objects' file names: in jobside.pyz these are not __file__'s paths
    own = {_user_traceback.__code__.co_filename, *(
        m.call_function.__code__.co_filename for m in map(sys.modules.get, (
            "calls", "htcml_jupyter.jobside.calls")) if m is not None)}
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in own:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _value_records(call: list[tuple[int, Any]], values: list[Any]) -> list[dict[str, Any]]:
    """One record per item; a value that cannot be pickled fails only its own item."""
    records = []
    for (index, _), value in zip(call, values, strict=True):
        try:
            records.append({"index": index, "ok": True, "value": _dumps_value(value)})
        except Exception as exc:
            problem = TypeError(f"the result of item {index} cannot be pickled: "
                                f"{type(exc).__name__}: {exc}")
            records.append({"index": index, "ok": False, "error": _error_record(problem)})
    return records


def _dumps_value(value: Any) -> bytes:
    """Plain pickle where it can (fast for the millions of small results of a big map),
    cloudpickle for what only it can pickle (lambdas, classes defined in the notebook)."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return _dumps(value)


class _OutcomeWriter:
    """Writes the outcome file atomically: after every call for jobs of up to
    :data:`EVERY_CALL_UP_TO` items; for bigger jobs at most every second or so (and
    never so often that writing takes more than a twentieth of the time)."""

    EVERY_CALL_UP_TO = 1000

    def __init__(self, path: str, header: dict[str, Any], indexes: list[int]):
        self.path, self.header, self.indexes = path, header, indexes
        self.every_call = len(indexes) <= self.EVERY_CALL_UP_TO
        self.last = 0.0
        self.cost = 0.0
        self.encoded: dict[int, tuple[dict[str, Any], wire.Encoded]] = {}
        header["lost"] = {"note": LOST_NOTE, "host": header.get("host"),
                          "python": python_version()}

    def _encoded(self, record: dict[str, Any]) -> wire.Encoded:
        """A record's bytes, encoded once (records are never changed once made)."""
        index = int(record["index"])
        known = self.encoded.get(index)
        if known is None or known[0] is not record:
            known = self.encoded[index] = (record, wire.encode_record(record))
        return known[1]

    def write(self, finished: dict[int, dict[str, Any]], force: bool = False) -> None:
        now = time.time()
        if not (force or self.every_call or now - self.last >= max(1.0, 20 * self.cost)):
            return
        parts = [self._encoded(finished[i]) if i in finished else wire.lost_line(i)
                 for i in self.indexes]
        ok = [i for i in self.indexes if wire.has_value(finished.get(i))]
        write_atomically(self.path, wire.join_outcome(self.header, parts, ok))
        self.last = time.time()
        self.cost = self.last - now

    def write_all(self, records: list[dict[str, Any]]) -> None:
        write_atomically(self.path, wire.encode_outcome(self.header, records))


def _finished_records(path: str, indexes: list[int]
                      ) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """The header and the records of items an earlier run of this job finished (none when
    the file is missing, empty or damaged, or holds only placeholders)."""
    wanted = set(indexes)
    try:
        with open(path, "rb") as f:
            header, records = wire.decode_outcome(f.read())
        return header, {int(r["index"]): r for r in records
                        if int(r["index"]) in wanted and not r.get("lost")
                        and not r.get("payload")}
    except Exception:
        return {}, {}


def clear_saved_checkpoints() -> None:
    """Every item is recorded: the saved states are no longer needed (the folder stays,
    empty, because HTCondor sends it back)."""
    for name in os.listdir(wire.CHECKPOINT_DIR) if os.path.isdir(wire.CHECKPOINT_DIR) else ():
        path = os.path.join(wire.CHECKPOINT_DIR, name)
        if os.path.isdir(path) and not os.path.islink(path):
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    return run(args[0], args[1], args[2])


if __name__ == "__main__":
    sys.exit(main())
