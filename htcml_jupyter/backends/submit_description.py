"""The submit description of a map's jobs: a pure function of the map and its options.

Nothing here talks to a pool, so tests read the exact commands a map submits (golden
files under ``tests/golden/``).  The commands the engine depends on -- where the event
log goes, what the job runs, which files come back and where -- cannot be overridden
through ``submit_extra``; trying is an :class:`~htcml_jupyter.OptionError`.
"""

from __future__ import annotations

from ..engine.options import (
    LATE_MATERIALIZATION,
    RESERVED_COMMANDS,
    OptionError,
    SubmitOptions,
    default_of,
    size_kb,
)
from ..engine.store import MapStore
from ..environment.launch import JobLaunch, default_launch
from ..jobside import wire
from ..jobside.archive import ARCHIVE_NAME


def job_side_files(store: MapStore) -> list[str]:
    """The files every job needs besides its payload: the job side as one archive in the
    map's folder (runner, job-side API, HTCondor's chirp client and cloudpickle; see
    :mod:`~htcml_jupyter.jobside.archive`), written when the map's jobs are, and the
    seed files (:meth:`MapStore.seed_files`) an eviction before it starts sends back."""
    return [str(store.job_side_archive), *(str(p) for p in store.seed_files())]


def _checked_path(path: str) -> str:
    if any(c in path for c in ("\n", "\r", '"', ",", "$(")):
        raise OptionError(f"the path {path!r} cannot be used in a submit description "
                          f"(it holds a newline, a quote, ',' or '$('); choose a map folder "
                          f"(HTCML_HOME) and file names without them")
    return path


def _files_destination(options: SubmitOptions) -> str:
    """Where a job's output files folder goes: the map's folder, or the user's folder
    or URL (``output_destination``), one subfolder per job."""
    if options.output_destination:
        return _checked_path(options.output_destination) + "/task-$(task)"
    return "outputs/files/task-$(task)"


def submit_description(store: MapStore, options: SubmitOptions, *, batch_name: str,
                       launch: JobLaunch | None = None,
                       job_files: list[str] | None = None,
                       token: str | None = None, jobs: int = 1) -> dict[str, str]:
    """The submit commands of one submission of ``store``'s map (one job per task:
    ``$(task)`` and ``$(files)``, its per-item input files, come from the itemdata;
    ``jobs`` is how many jobs the submission queues)."""
    clash = sorted(k for k in options.submit_extra if k.lower() in RESERVED_COMMANDS)
    if clash:  # from_kwargs refuses these; a hand-made SubmitOptions may still hold them
        raise OptionError(f"submit_extra cannot set {', '.join(clash)}: the map needs these "
                          f"commands to track its jobs and collect their results")
    launch = launch or default_launch(options)
    files = job_files if job_files is not None else job_side_files(store)
    inputs = [*files, *launch.input_files, str(store.function_file), *options.input_files]
    environment = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
                   **launch.environment}
    arguments = [*launch.arguments_prefix, ARCHIVE_NAME, "function.pkl", "task-$(task).pkl",
                 "outcome.pkl"]
    commands: dict[str, str] = {
        "universe": "vanilla",
        "executable": launch.executable,
        "transfer_executable": "true" if launch.transfer_executable else "false",
        "arguments": " ".join(arguments),
        "initialdir": _checked_path(str(store.path)),
        # $(files): ", " and the job's per-item files and URLs, or nothing
        "transfer_input_files": ", ".join([*(_checked_path(p) for p in inputs),
                                           "inputs/task-$(task).pkl"]) + "$(files)",
        **({"transfer_common_input_files": ", ".join(
            _checked_path(p) for p in launch.common_input_files)}
           if launch.common_input_files else {}),
        "should_transfer_files": "YES",
        # On an eviction the outcome so far and the saved checkpoints go to the schedd's
        # spool and come back with the restarted job, which resumes from the last save
        # and skips finished items.  HTCondor holds a job when one of these is missing:
        # all three come with the job (the seed files), so even a job evicted before
        # its interpreter started has them.
        "when_to_transfer_output": "ON_EXIT_OR_EVICT",
        # what the function wrote under output_dir() comes back as one folder per job
        "transfer_output_files": f"outcome.pkl, {wire.CHECKPOINT_DIR}, {wire.OUTPUTS_DIR}",
        "transfer_output_remaps": (f'"outcome.pkl = outputs/task-$(task).pkl; '
                                   f'{wire.CHECKPOINT_DIR} = logs/checkpoint-task-$(task); '
                                   f'{wire.OUTPUTS_DIR} = {_files_destination(options)}"'),
        "output": "logs/task-$(task).out",
        "error": "logs/task-$(task).err",
        "log": _checked_path(str(store.event_log)),
        "log_xml": "true",
        "submit_event_notes": "task $(task)",
        "job_max_vacate_time": "5",
        "environment": '"' + " ".join(f"{k}={v}" for k, v in environment.items()) + '"',
        "batch_name": batch_name,
        "My.HtcmlMap": f'"{store.name}"',
        "My.HtcmlTask": "$(task)",
        **({"My.HtcmlSubmission": f'"{token}"'} if token else {}),
        # live reports (htcml_jupyter.report) go through chirp to the event log; chirp
        # also lets the job read and write the user's files here (chirp=False: off)
        **({"My.WantIOProxy": "true"} if options.chirp else {}),
        # self-checkpointing (htcml_jupyter.checkpoint): exit 85 spools the folder
        "checkpoint_exit_code": str(wire.EXIT_CHECKPOINT),
        "transfer_checkpoint_files": wire.CHECKPOINT_DIR,
    }
    commands.update(options.submit_commands())
    if launch.disk_kb and options.request_disk == default_of("request_disk") \
            and launch.disk_kb > size_kb(options.request_disk):
        commands["request_disk"] = f"{launch.disk_kb}K"  # the environment must fit
    if jobs > LATE_MATERIALIZATION and not (options.max_idle or options.max_materialize):
        commands["max_idle"] = str(LATE_MATERIALIZATION)  # the schedd holds fewer at once
    if options.max_retries:
        # rerun crashes only: never a Python error, a payload that cannot load here, or
        # an environment that cannot start here (each would fail the same way again)
        commands["retry_until"] = " || ".join(
            f"ExitCode =?= {code}" for code in (wire.EXIT_ITEM_FAILED, wire.EXIT_PAYLOAD_FAILED,
                                                wire.EXIT_ENVIRONMENT_FAILED))
    return commands
