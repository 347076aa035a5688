"""The job-side API: what a mapped function calls while it runs on an execute node.

Standard library only (plus HTCondor's pure-Python chirp client, which is shipped with
each job), so it works on an execute node where this package is not installed: the
job runner then makes this module importable as ``htcml_jupyter``.

* :func:`report` -- send metrics to the notebook while the job runs.
* :func:`checkpoint` -- save state at epoch boundaries and resume from it after an
  eviction (HTCondor self-checkpointing).
* :func:`device` -- ``"cuda"`` when the job has a usable GPU, else ``"cpu"``.
* :func:`output_dir` -- a folder whose files come back with the item's results.

Outside a job (a plain call in the notebook) reports are kept in memory and
checkpoints go to a local folder, so the same function runs unchanged.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

# Always imported as htcml_jupyter.jobside.job: from the installed package, or from the
# job's folder through the stand-in package the job runner sets up.
from .wire import (
    CALL_ENV,
    CHECKPOINT_DIR,
    EXIT_CHECKPOINT,
    ITEM_ENV,
    LOCAL_ENV,
    MAX_UPDATE,
    METRICS_FILE_ENV,
    OUTPUTS_DIR,
    REPORT_ATTRIBUTE,
    REPORT_ITEM,
    REPORT_METRICS,
    REPORT_RESTORED,
    REPORT_SAVED,
    REPORT_STEP,
    REPORT_TIME,
)

if TYPE_CHECKING:  # pathlib loads only when output_dir() is called
    from pathlib import Path

#: The exit code a job uses to ask HTCondor to spool its checkpoint and restart it.
CHECKPOINT_EXIT_CODE = EXIT_CHECKPOINT

def _current_item() -> int | None:
    """The item the job runner is running now (it sets ``_HTCML_ITEM``)."""
    value = os.environ.get(ITEM_ENV)
    return int(value) if value and value.isdigit() else None


class CheckpointExit(SystemExit):
    """Raised by :meth:`Checkpoint.save` to end the job so HTCondor spools the state."""

    def __init__(self) -> None:
        super().__init__(CHECKPOINT_EXIT_CODE)


# --------------------------------------------------------------------------- reports


def _chirp_allowed() -> bool:
    """Whether this job may use chirp: its job ad says ``WantIOProxy = true`` (HTCondor
    writes a chirp configuration for every job, but serves only those)."""
    if not os.environ.get("_CONDOR_CHIRP_CONFIG"):
        return False
    try:
        with open(os.environ.get("_CONDOR_JOB_AD", "")) as ad:
            for line in ad:
                key, _, value = line.partition("=")
                if key.strip().lower() == "wantioproxy":
                    return value.strip().lower() == "true"
    except OSError:
        return True  # no job ad to read: try chirp, as before
    return False


class _Reporter:
    """Buffers reports and sends them from a background thread."""

    def __init__(self) -> None:
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.local: list[dict[str, Any]] = []
        self.file = os.environ.get(METRICS_FILE_ENV)
        self.chirp_ok = _chirp_allowed() and not self.file
        # In an HTCondor job without chirp (a map made with chirp=False) reports have
        # nowhere to go: they are dropped, with one warning.
        self.dropped = bool(os.environ.get("_CONDOR_JOB_AD")) and not (
            self.file or self.chirp_ok)
        self.warned = False
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.sent = 0
        self.errors = 0

    def put(self, record: dict[str, Any]) -> None:
        if self.dropped:
            if not self.warned:
                self.warned = True
                print("htcml: this job has no chirp (the map was made with chirp=False): "
                      "report() and checkpoint notes are not sent to the notebook",
                      file=sys.stderr, flush=True)
            return
        if not (self.file or self.chirp_ok):
            self.local.append(record)
            return
        if self.thread is None:
            with self.lock:
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name="htcml-report",
                                                   daemon=True)
                    self.thread.start()
                    atexit.register(self.flush)
        self.queue.put(record)

    def _drain(self, first: dict[str, Any] | None) -> tuple[list[dict[str, Any]], bool]:
        batch = [] if first is None else [first]
        stop = first is None
        while True:
            try:
                more = self.queue.get_nowait()
            except queue.Empty:
                return batch, stop
            if more is None:
                stop = True
            else:
                batch.append(more)

    def _run(self) -> None:
        chirp = None
        while True:
            first = self.queue.get()
            # Whatever queued while the last update was on its way goes in this one:
            # a burst of reports batches itself, a lone report leaves at once.
            batch, stop = self._drain(first)
            if batch:
                try:
                    if self.file:
                        with open(self.file, "a") as f:
                            f.write("".join(json.dumps(r) + "\n" for r in batch))
                    else:
                        chirp = self._send_chirp(chirp, batch)
                    self.sent += len(batch)
                except Exception as exc:  # a report must never break the training
                    self.errors += 1
                    chirp = None
                    print(f"htcml: could not send {len(batch)} report(s): {exc}",
                          file=sys.stderr)
            for _ in range(len(batch) + (1 if first is None else 0)):
                self.queue.task_done()
            if stop:
                return

    @staticmethod
    def _send_chirp(chirp: Any, batch: list[dict[str, Any]]) -> Any:
        try:
            from htcondor2.htchirp import HTChirp
        except ImportError:
            from htchirp import HTChirp  # shipped with the job
        if chirp is None:
            chirp = HTChirp()
            chirp.connect()
        chunk: list[dict[str, Any]] = []
        for record in batch:
            chunk.append(record)
            if len(json.dumps(chunk)) > MAX_UPDATE and len(chunk) > 1:
                chunk.pop()
                chirp.set_job_attr(REPORT_ATTRIBUTE, json.dumps(json.dumps(chunk)))
                chunk = [record]
        if chunk:
            chirp.set_job_attr(REPORT_ATTRIBUTE, json.dumps(json.dumps(chunk)))
        return chirp

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every report so far has been sent (the runner calls this)."""
        if self.thread is None or not self.thread.is_alive():
            return
        deadline = time.time() + timeout
        while self.queue.unfinished_tasks and time.time() < deadline:
            time.sleep(0.01)


_reporter = _Reporter()


def report(step: int | None = None, **metrics: float) -> None:
    """Send metrics (numbers) for the current item to the notebook, e.g.
    ``htc.report(step=epoch, loss=0.3, accuracy=0.91)``.

    Cheap (a few microseconds): reports are buffered and sent from a background thread
    (as HTCondor job-attribute updates, which reach the notebook through the map's job
    event log).  Outside a job they are kept in memory (:func:`local_reports`).
    """
    clean: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy and torch scalars
            except (TypeError, ValueError):
                raise TypeError(f"report({key}=...) must be a number, not "
                                f"{type(value).__name__}") from None
        clean[key] = value
    record: dict[str, Any] = {REPORT_ITEM: _current_item(), REPORT_TIME: round(time.time(), 3),
                              REPORT_METRICS: clean}
    if step is not None:
        record[REPORT_STEP] = int(step)
    _reporter.put(record)


def local_reports() -> list[dict[str, Any]]:
    """Reports made outside a job, in this process (for trying a function locally)."""
    return list(_reporter.local)


def flush_reports() -> None:
    """Block until every report so far is sent; the job runner calls it after each item."""
    _reporter.flush()


# --------------------------------------------------------------------------- checkpoints


class Checkpoint:
    """Save and restore the state of a long computation across evictions.

    ``restore()`` returns the last saved state, or None on the first start.  ``save(state)``
    writes it atomically and, when ``every`` seconds have passed since the last spool (0:
    every time), ends the job with HTCondor's checkpoint exit code; HTCondor copies the
    checkpoint to the submit side and restarts the job, which calls ``restore()`` again.
    A job evicted later resumes from the last spooled state on any machine.
    """

    def __init__(self, every: float = 3600.0, folder: str | None = None):
        self.every = every
        self.in_job = bool(os.environ.get("_CONDOR_JOB_AD") or os.environ.get(LOCAL_ENV))
        if folder is None and not self.in_job:
            import shutil
            import tempfile  # a plain call in the notebook: keep the state out of the way
            import weakref

            folder = tempfile.mkdtemp(prefix="htcml-checkpoint-")
            # removed with this object (or at exit): nothing is left behind in /tmp
            weakref.finalize(self, shutil.rmtree, folder, True)
        if folder is None:
            # one folder per item: items of one job never restore each other's state
            item = _current_item()
            folder = os.path.join(os.getcwd(), CHECKPOINT_DIR,
                                  f"item-{item}" if item is not None else "job")
        self.folder = folder
        self._last_spool = time.time()

    @property
    def path(self) -> str:
        return os.path.join(self.folder, "state.pkl")

    def restore(self) -> Any:
        """The last saved state, or None when there is none."""
        try:
            with open(self.path, "rb") as f:
                torch_format = f.read(2) == b"PK"  # torch.save writes a zip archive
        except FileNotFoundError:
            return None
        if torch_format:
            import torch

            # a state saved on a GPU must resume on a machine without one
            location = None if torch.cuda.is_available() else "cpu"
            payload = torch.load(self.path, weights_only=False, map_location=location)
        else:
            with open(self.path, "rb") as f:
                payload = pickle.load(f)
        _reporter.put({REPORT_ITEM: _current_item(), REPORT_TIME: round(time.time(), 3),
                       REPORT_RESTORED: payload.get("step")})
        return payload["state"]

    def save(self, state: Any, step: int | None = None) -> None:
        """Write ``state`` (anything pickle or torch.save can write) atomically;
        ``step`` (e.g. the epoch) is shown in the notebook."""
        os.makedirs(self.folder, exist_ok=True)
        tmp = self.path + ".tmp"
        payload = {"state": state, "step": step, "time": time.time()}
        if "torch" in sys.modules and _holds_torch(state):
            sys.modules["torch"].save(payload, tmp)
        else:
            with open(tmp, "wb") as f:
                pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _reporter.put({REPORT_ITEM: _current_item(), REPORT_TIME: round(time.time(), 3),
                       REPORT_SAVED: step})
        if self.in_job and time.time() - self._last_spool >= self.every:
            _reporter.flush()
            raise CheckpointExit()


def _holds_torch(state: Any) -> bool:
    mod = type(state).__module__
    if mod.startswith("torch"):
        return True
    if isinstance(state, dict):
        return any(_holds_torch(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return any(_holds_torch(v) for v in state)
    return False


def checkpoint(every: float = 3600.0) -> Checkpoint:
    """The job's checkpoint: ``state = ckpt.restore()`` then ``ckpt.save(state)``.

    ``every``: least seconds between two spools to the submit side (default 3600, an
    hour: CHTC and the OSPool advise one to five hours between checkpoints).  Each spool
    ends the job's process and starts it again (interpreter, imports, set-up, CUDA
    initialisation: 1-3 s on the project's pool, more with a large model), and sends the
    checkpoint to the access point; a graceful eviction spools the last save anyway, so a
    short interval only buys protection against crashes of the machine.  ``every=0``
    spools at every save (epochs of hours, or tests).
    """
    return Checkpoint(every=every)


def device() -> str:
    """``"cuda"`` when torch sees a usable GPU (as HTCondor assigned it), else ``"cpu"``."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- output files


def output_dir() -> Path:
    """The folder for the output files of the item (or batch) running now.

    What the function writes here comes back with the results: into the map's folder
    (``m.output_files(item)`` lists the files), or to the map's ``output_destination``
    (a folder, or a URL such as ``osdf:///...``).  Each call gets its own folder, so
    items never overwrite each other's files.  Outside a job it is a folder under the
    current directory.
    """
    from pathlib import Path

    key = os.environ.get(CALL_ENV, "local")
    folder = Path(OUTPUTS_DIR) / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()
