"""Resource and policy options of a map: validated once, from one table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .option_values import (
    RESERVED_COMMANDS,
    RESERVED_FILE_NAMES,
    SIZE_PATTERN,
    OptionError,
    check_capability,
    check_count,
    check_destination,
    check_duration,
    check_environment,
    check_expression,
    check_extra,
    check_files,
    check_flag,
    check_gpu_memory,
    check_integer,
    check_job_length,
    check_names,
    check_positive,
    check_size,
    check_text,
    size_kb,
)

__all__ = ["OPTIONS", "RESERVED_COMMANDS", "RESERVED_FILE_NAMES", "OptionError",
           "OptionSpec", "SubmitOptions", "default_of", "describe_options", "size_kb"]

#: A map with more jobs than this is submitted with ``max_idle`` set to it (unless
#: ``max_idle`` or ``max_materialize`` is given): the schedd materializes jobs as others
#: finish instead of holding them all at once.
LATE_MATERIALIZATION = 1000


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
    #: A valid value: shown in help, and what the tests that cover every option use.
    example: Any = None
    #: How a magic's line writes the value (see :attr:`line_syntax`); by default it
    #: follows the example's type.
    syntax: str | None = None

    @property
    def line_syntax(self) -> str:
        """``"int"``, ``"float"``, ``"text"``, ``"switch"`` (a flag), ``"names"``
        (comma-separated) or ``"expr"`` (a notebook variable or a Python literal)."""
        if self.syntax:
            return self.syntax
        return {bool: "switch", int: "int", float: "float", list: "names",
                dict: "expr"}.get(type(self.example), "text")


def _classad_string(value: Any) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _classad_bool(value: Any) -> str:
    return "true" if value else "false"


_Spec = OptionSpec

#: The one source of truth for map options: check, default, help, submit command.
OPTIONS: dict[str, OptionSpec] = {
    "request_cpus": _Spec(check_positive, 1, "CPU cores per job", "request_cpus",
                          always=True, example=4),
    "request_memory": _Spec(check_size, "1GB", "memory per job, e.g. 512MB, 4GB",
                            "request_memory", always=True, example="4GB"),
    "request_disk": _Spec(check_size, "1GB", "scratch disk per job", "request_disk",
                          always=True, example="10GB"),
    "request_gpus": _Spec(check_count, 0, "GPUs per job", "request_gpus", example=1),
    "gpus_minimum_memory": _Spec(check_gpu_memory, None,
                                 "least GPU memory in MB, e.g. 20000 (as CHTC and the OSPool "
                                 "write it)", "gpus_minimum_memory", needs="request_gpus",
                                 example="20000"),
    "gpus_minimum_capability": _Spec(check_capability, None, "least CUDA capability, e.g. 7.5",
                                     "gpus_minimum_capability", needs="request_gpus",
                                     example=7.5),
    "requirements": _Spec(check_expression, None, "a ClassAd expression the machine must "
                          "satisfy", "requirements", example='OpSysAndVer == "AlmaLinux9"'),
    "container_image": _Spec(check_text, None, "container image the job runs in",
                             "container_image", example="docker://python:3.11-slim"),
    "max_retries": _Spec(check_count, 0, "reruns of a job that crashes (not Python errors)",
                         "max_retries", example=2),
    "max_idle": _Spec(check_positive, None, "how many jobs of the map may wait in the queue "
                      f"(late materialization; {LATE_MATERIALIZATION} when the map has more "
                      f"jobs and neither this nor max_materialize is set)", "max_idle",
                      example=100),
    "max_materialize": _Spec(check_positive, None, "how many jobs of the map may be in the "
                             "queue at once (late materialization)", "max_materialize",
                             example=500),
    "priority": _Spec(check_integer, 0, "job priority within your own jobs", "priority",
                      example=5),
    "accounting_group": _Spec(check_text, None, "accounting group to charge",
                              "accounting_group", example="group_ml.alice"),
    "project_name": _Spec(check_text, None, "OSPool project to charge (+ProjectName)",
                          "My.ProjectName", render=_classad_string, example="UW_ML"),
    "want_gpu_lab": _Spec(check_flag, False, "run on CHTC's GPU Lab (+WantGPULab)",
                          "My.WantGPULab", render=_classad_bool, example=True),
    "gpu_job_length": _Spec(check_job_length, None, "CHTC GPU Lab job length: short, medium "
                            "or long (+GPUJobLength; implies want_gpu_lab)", "My.GPUJobLength",
                            render=_classad_string, example="long"),
    "want_campus_pools": _Spec(check_flag, False, "CHTC: let jobs run on other campus pools "
                               "(want_campus_pools)", "want_campus_pools",
                               render=_classad_bool, example=True),
    "want_ospool": _Spec(check_flag, False, "CHTC: let jobs run on the OSPool (want_ospool)",
                         "want_ospool", render=_classad_bool, example=True),
    "job_duration_category": _Spec(check_duration, None, "OSPool: 'Medium' or 'Long' "
                                   "(+JobDurationCategory; the OSPool assumes Medium)",
                                   "My.JobDurationCategory", render=_classad_string,
                                   example="Long"),
    "is_resumable": _Spec(check_flag, False, "CHTC: the jobs checkpoint, so more GPUs may run "
                          "them (+is_resumable)", "My.is_resumable", render=_classad_bool,
                          example=True),
    "want_flocking": _Spec(check_flag, False, "let jobs flock to other pools (+WantFlocking; "
                           "CHTC now uses want_campus_pools and want_ospool)",
                           "My.WantFlocking", render=_classad_bool, example=True),
    "input_files": _Spec(check_files, [], "files or URLs sent to every job's folder",
                         example=["https://example.org/weights.pt"], syntax="expr"),
    "output_destination": _Spec(check_destination, None, "where files written under "
                                "output_dir() go: an absolute folder, or a URL such as "
                                "osdf:///... (default: the map's folder)",
                                example="osdf:///ospool/ap40/data/alice/out"),
    "environment": _Spec(check_environment, "auto", "how jobs get Python and packages: "
                         "'auto', 'pack', 'shared', or the path or URL of an archive from "
                         "`htcml env pack`", example="pack"),
    "pack_include": _Spec(check_names, [], "distributions (or site-packages folders) a packed "
                          "environment keeps although only the notebook seems to use them, "
                          "e.g. ['ipython'] or ['torch/include']",
                          example=["ipython", "torch/include"]),
    "pack_exclude": _Spec(check_names, [], "distributions a packed environment leaves out "
                          "as well", example=["matplotlib"]),
    "python": _Spec(check_text, None, "interpreter on the execute node (default: this one's "
                    "path, or python3 in a container)", example="/usr/bin/python3"),
    "chirp": _Spec(check_flag, True, "let jobs talk to the submit host through chirp "
                   "(+WantIOProxy): report(), checkpoint notes, torchrun's relay; False turns "
                   "it off, so a job cannot read or write your files there", example=False),
    "submit_extra": _Spec(check_extra, {}, "other submit commands, passed through as given",
                          example={"My.Lab": '"ml"'}),
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
