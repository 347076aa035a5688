"""What the job side and the notebook side agree on: file formats, exit codes, markers.

Standard library only.  Shipped with every job next to ``runner.py`` and ``job.py``; the
notebook side imports the same names from here, so each is defined exactly once.
"""

from __future__ import annotations

from typing import Any

#: First line of every payload file (function, inputs, outcomes).
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
