"""Resource and policy options of a map: validated once, from one table."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .option_values import (
    SIZE_PATTERN,
    OptionError,
    check_duration,
    check_environment,
    check_expression,
    check_gpu_memory,
    check_names,
    check_size,
    size_kb,
)

__all__ = ["OPTIONS", "OptionError", "OptionSpec", "SubmitOptions", "default_of",
           "describe_options", "size_kb"]




def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OptionError(f"{name} must be a whole number >= 0, not {value!r}")
    return value


def _positive(name: str, value: Any) -> int:
    if _count(name, value) == 0:
        raise OptionError(f"{name} must be at least 1, not {value!r}")
    return int(value)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise OptionError(f"{name} must be a one-line, non-empty string, not {value!r}")
    return value


def _destination(name: str, value: Any) -> str:
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not text.strip():
        raise OptionError(f"{name} must be a folder path or a URL, not {value!r}")
    if any(c in text for c in ("\n", "\r", '"', ",", ";", "$(", " ")):
        raise OptionError(f"{name}: {text!r} cannot hold spaces, quotes, ',', ';' or '$('")
    if "://" not in text and not os.path.isabs(text):
        raise OptionError(f"{name} must be an absolute folder (the submit host writes to it) "
                          f"or a URL such as osdf:///ospool/..., not {text!r}")
    return text.rstrip("/") or "/"


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"{name} must be a whole number, not {value!r}")
    return value


def _capability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise OptionError(f"{name} must be a CUDA capability such as 7.5, not {value!r}")
    return float(value)


#: A map with more jobs than this is submitted with ``max_idle`` set to it (unless
#: ``max_idle`` or ``max_materialize`` is given): the schedd materializes jobs as others
#: finish instead of holding them all at once.
LATE_MATERIALIZATION = 1000

#: Submit commands the engine relies on (event log, what runs, which files come back and
#: where); ``submit_extra`` may not set them.
RESERVED_COMMANDS = frozenset({
    "log", "log_xml", "executable", "arguments", "transfer_executable",
    "transfer_input_files", "transfer_output_files", "transfer_output_remaps", "initialdir",
    "output", "error", "submit_event_notes", "checkpoint_exit_code",
    "transfer_checkpoint_files", "my.htcmlmap", "+htcmlmap", "my.htcmltask", "+htcmltask",
    "my.htcmlsubmission", "+htcmlsubmission", "when_to_transfer_output",
    "should_transfer_files", "my.wantioproxy", "+wantioproxy", "universe", "environment",
})


def _extra(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise OptionError(f"{name} must be a dict of submit commands, not {value!r}")
    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not re.match(r"^[+A-Za-z_][\w.+]*$", key):
            raise OptionError(f"{name}: {key!r} is not a submit command name")
        if key.lower() in RESERVED_COMMANDS:
            raise OptionError(f"{name} cannot set {key!r}: the map needs that command to "
                              f"track its jobs and collect their results")
        text = str(val)
        if "\n" in text:
            raise OptionError(f"{name}: the value of {key!r} must be one line")
        out[key] = text
    return out


#: Names in the job's folder that the runner itself uses; input files may not take them.
RESERVED_FILE_NAMES = frozenset({
    "runner.py", "job.py", "wire.py", "htchirp.py", "bootstrap.sh", "function.pkl",
    "outcome.pkl", "cloudpickle", "htcml_checkpoint", "htcml_env", "htcml_outputs",
    "calls.py",
})

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def _files(name: str, value: Any) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise OptionError(f"{name} must be a list of paths or URLs, not {value!r}")
    out: list[str] = []
    for item in value:
        text = os.fspath(item) if isinstance(item, os.PathLike) else item
        if not isinstance(text, str) or not text or any(
                c in text for c in (",", "\n", "\r", '"', "$(")):
            raise OptionError(f"{name}: {item!r} must be a path or URL without commas, "
                              f"quotes, newlines or '$(' (HTCondor's file list cannot hold "
                              f"them)")
        if _URL.match(text):
            out.append(text)
            continue
        path = os.path.abspath(os.path.expanduser(text))
        if os.path.basename(path.rstrip("/")) in RESERVED_FILE_NAMES:
            raise OptionError(f"{name}: {path} has the name of a file every job needs "
                              f"({', '.join(sorted(RESERVED_FILE_NAMES))}); rename it")
        if not os.path.exists(path):
            raise OptionError(f"{name}: {path} does not exist; create it or fix the path "
                              f"(URLs such as osdf:// or https:// are fetched by the job)")
        out.append(path)
    return out


def size_in_mb(size: str) -> int:
    """Megabytes in a size such as ``512MB``, ``4GB`` or ``2GiB`` (bare numbers are MB)."""
    m = SIZE_PATTERN.match(size)
    if not m:
        raise OptionError(f"{size!r} is not a size such as 512MB or 4GB")
    number = float(m.group(1))
    unit = (m.group(2) or "M")[0].upper()
    factor = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
    return max(1, int(number * factor))


@dataclass(frozen=True)
class OptionSpec:
    """One option: how it is checked, its default, what it means, and the submit
    command it becomes (``None`` when the engine uses it itself)."""

    check: Callable[[str, Any], Any]
    default: Any
    help: str
    command: str | None = None
    #: Only written when this other option is set (GPU minimums need ``request_gpus``).
    needs: str | None = None
    #: Written even when it has its default value.
    always: bool = False
    #: How the value is written in the submit description.
    render: Callable[[Any], str] = str


def _classad_string(value: Any) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _classad_bool(value: Any) -> str:
    return "true" if value else "false"


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"{name} must be True or False, not {value!r}")
    return value


def _job_length(name: str, value: Any) -> str:
    if value not in ("short", "medium", "long"):
        raise OptionError(f"{name} must be 'short', 'medium' or 'long' (CHTC GPU Lab job "
                          f"lengths), not {value!r}")
    return str(value)


#: The one source of truth for map options: check, default, help, submit command.
OPTIONS: dict[str, OptionSpec] = {
    "request_cpus": OptionSpec(_positive, 1, "CPU cores per job", "request_cpus", always=True),
    "request_memory": OptionSpec(check_size, "1GB", "memory per job, e.g. 512MB, 4GB",
                                 "request_memory", always=True),
    "request_disk": OptionSpec(check_size, "1GB", "scratch disk per job", "request_disk",
                               always=True),
    "request_gpus": OptionSpec(_count, 0, "GPUs per job", "request_gpus"),
    "gpus_minimum_memory": OptionSpec(check_gpu_memory, None,
                                      "least GPU memory in MB, e.g. 20000 (as CHTC and the "
                                      "OSPool write it)", "gpus_minimum_memory",
                                      needs="request_gpus"),
    "gpus_minimum_capability": OptionSpec(_capability, None,
                                          "least CUDA capability, e.g. 7.5",
                                          "gpus_minimum_capability", needs="request_gpus"),
    "requirements": OptionSpec(check_expression, None,
                               "a ClassAd expression the machine must satisfy",
                               "requirements"),
    "container_image": OptionSpec(_text, None, "container image the job runs in",
                                  "container_image"),
    "max_retries": OptionSpec(_count, 0, "reruns of a job that crashes (not Python errors)",
                              "max_retries"),
    "max_idle": OptionSpec(_positive, None, "how many jobs of the map may wait in the queue "
                           f"(late materialization; {LATE_MATERIALIZATION} when the map has "
                           f"more jobs and neither this nor max_materialize is set)",
                           "max_idle"),
    "max_materialize": OptionSpec(_positive, None,
                                  "how many jobs of the map may be in the queue at once "
                                  "(late materialization)", "max_materialize"),
    "priority": OptionSpec(_integer, 0, "job priority within your own jobs", "priority"),
    "accounting_group": OptionSpec(_text, None, "accounting group to charge",
                                   "accounting_group"),
    "project_name": OptionSpec(_text, None, "OSPool project to charge (+ProjectName)",
                               "My.ProjectName", render=_classad_string),
    "want_gpu_lab": OptionSpec(_flag, False, "run on CHTC's GPU Lab (+WantGPULab)",
                               "My.WantGPULab", render=_classad_bool),
    "gpu_job_length": OptionSpec(_job_length, None,
                                 "CHTC GPU Lab job length: short, medium or long "
                                 "(+GPUJobLength; implies want_gpu_lab)", "My.GPUJobLength",
                                 render=_classad_string),
    "want_campus_pools": OptionSpec(_flag, False,
                                    "CHTC: let jobs run on other campus pools "
                                    "(want_campus_pools)", "want_campus_pools",
                                    render=_classad_bool),
    "want_ospool": OptionSpec(_flag, False, "CHTC: let jobs run on the OSPool (want_ospool)",
                              "want_ospool", render=_classad_bool),
    "job_duration_category": OptionSpec(check_duration, None,
                                        "OSPool: 'Medium' or 'Long' "
                                        "(+JobDurationCategory; the OSPool assumes Medium)",
                                        "My.JobDurationCategory", render=_classad_string),
    "is_resumable": OptionSpec(_flag, False,
                               "CHTC: the jobs checkpoint, so more GPUs may run them "
                               "(+is_resumable)", "My.is_resumable", render=_classad_bool),
    "want_flocking": OptionSpec(_flag, False,
                                "let jobs flock to other pools (+WantFlocking; CHTC now "
                                "uses want_campus_pools and want_ospool)",
                                "My.WantFlocking", render=_classad_bool),
    "input_files": OptionSpec(_files, [], "files or URLs sent to every job's folder"),
    "output_destination": OptionSpec(_destination, None,
                                     "where files written under output_dir() go: an "
                                     "absolute folder, or a URL such as osdf:///... "
                                     "(default: the map's folder)"),
    "environment": OptionSpec(check_environment, "auto",
                              "how jobs get Python and packages: 'auto', 'pack', 'shared', or "
                              "the path or URL of an archive from `htcml env pack`"),
    "pack_include": OptionSpec(check_names, [],
                               "distributions (or site-packages folders) a packed "
                               "environment keeps although only the notebook seems to use "
                               "them, e.g. ['ipython'] or ['torch/include']"),
    "pack_exclude": OptionSpec(check_names, [],
                               "distributions a packed environment leaves out as well"),
    "python": OptionSpec(_text, None,
                         "interpreter on the execute node (default: this one's path, or "
                         "python3 in a container)"),
    "chirp": OptionSpec(_flag, True,
                        "let jobs talk to the submit host through chirp (+WantIOProxy): "
                        "report(), checkpoint notes, torchrun's relay; False turns it off, "
                        "so a job cannot read or write your files there"),
    "submit_extra": OptionSpec(_extra, {}, "other submit commands, passed through as given"),
}


def describe_options() -> str:
    """A table of the valid options with their defaults, for messages and help."""
    width = max(map(len, OPTIONS))
    return "\n".join(f"  {name:<{width}}  {spec.help} (default {spec.default!r})"
                     for name, spec in OPTIONS.items())


def default_of(name: str) -> Any:
    """The default of option ``name`` (what the magics show and fall back to)."""
    return OPTIONS[name].default


#: Options kept as tuples in :class:`SubmitOptions` (lists in ``map.json``).
_TUPLES = ("input_files", "pack_include", "pack_exclude")


@dataclass(frozen=True)
class SubmitOptions:
    """The validated options of one map (resources, policy and pass-through commands).

    Build it with :meth:`from_kwargs`, which checks every value against :data:`OPTIONS`
    (the field defaults below come from that table too).
    """

    request_cpus: int = OPTIONS["request_cpus"].default
    request_memory: str = OPTIONS["request_memory"].default
    request_disk: str = OPTIONS["request_disk"].default
    request_gpus: int = OPTIONS["request_gpus"].default
    gpus_minimum_memory: str | None = None
    gpus_minimum_capability: float | None = None
    requirements: str | None = None
    container_image: str | None = None
    max_retries: int = OPTIONS["max_retries"].default
    max_idle: int | None = None
    max_materialize: int | None = None
    priority: int = OPTIONS["priority"].default
    accounting_group: str | None = None
    project_name: str | None = None
    want_gpu_lab: bool = False
    gpu_job_length: str | None = None
    want_campus_pools: bool = False
    want_ospool: bool = False
    job_duration_category: str | None = None
    is_resumable: bool = False
    want_flocking: bool = False
    input_files: tuple[str, ...] = ()
    output_destination: str | None = None
    environment: str = OPTIONS["environment"].default
    pack_include: tuple[str, ...] = ()
    pack_exclude: tuple[str, ...] = ()
    python: str | None = None
    chirp: bool = OPTIONS["chirp"].default
    submit_extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> SubmitOptions:
        """Check every option; unknown names raise with the list of valid ones."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise OptionError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"valid options are:\n{describe_options()}")
        values: dict[str, Any] = {}
        for name, spec in OPTIONS.items():
            if name in options and options[name] is not None:
                values[name] = spec.check(name, options[name])
            else:
                values[name] = spec.default
        for name in _TUPLES:
            values[name] = tuple(values[name])
        if values["gpu_job_length"] and not values["want_gpu_lab"]:
            values["want_gpu_lab"] = True  # a GPU Lab job length means the GPU Lab
        return cls(**values)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SubmitOptions:
        """Options as a map recorded them (``asdict()``), without checking them again:
        a map stays readable after, say, one of its input files was deleted."""
        known = {k: v for k, v in record.items() if k in OPTIONS}
        for name in _TUPLES:
            if name in known:
                known[name] = tuple(known[name])
        return cls(**known)

    def asdict(self) -> dict[str, Any]:
        """The options as plain JSON-able values (stored in the map's ``map.json``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in _TUPLES:
            out[name] = list(getattr(self, name))
        out["submit_extra"] = dict(self.submit_extra)
        return out

    def submit_commands(self) -> dict[str, str]:
        """The submit-description commands these options stand for, from the ``command``
        column of :data:`OPTIONS`, then ``submit_extra`` as given."""
        cmds: dict[str, str] = {}
        for name, spec in OPTIONS.items():
            if spec.command is None:
                continue
            value = getattr(self, name)
            if not spec.always and (value is None or value is False or value == 0
                                    or value == ""):
                continue
            if spec.needs and not getattr(self, spec.needs):
                continue
            cmds[spec.command] = spec.render(value)
        cmds.update(self.submit_extra)
        return cmds
