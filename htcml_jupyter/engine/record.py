"""A map's record, ``map.json``: typed, versioned, with an explicit kind.

Every map folder holds one record.  Schema 1 (:data:`SCHEMA`) writes ``"schema"`` and
``"kind"``; a record without ``"schema"`` is schema 0, written before either existed,
and its kind is inferred from the part it holds (``"sweep"``, ``"workflow"`` or
``"torchrun"``).  Both are read; what is written is always the current schema.  The
JSON keys stay those of schema 0 (the backend spec is ``"pool"``), so a record of
either schema reads the same by key.

The kinds:

``map``
    :func:`htcml_jupyter.map`, an executor's or joblib's calls.
``sweep``
    :func:`htcml_jupyter.sweep` (one trial per item; :attr:`MapRecord.sweep`).  A sweep's
    watcher job is not a map of its own: its record is ``watcher.json`` in the sweep's
    folder (:mod:`htcml_jupyter.workflows.watcher_job`).
``stage``
    One stage of :func:`htcml_jupyter.chain` (:attr:`MapRecord.workflow`).
``torchrun``
    A multi-node run of :func:`htcml_jupyter.torchrun`: one job per node
    (:attr:`MapRecord.torchrun`); its backend spec names the launcher.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from .options import SubmitOptions

#: The schema this code writes; it reads every schema up to this one.
SCHEMA = 1

Kind = Literal["map", "sweep", "stage", "torchrun"]
KINDS: tuple[str, ...] = get_args(Kind)

#: The backend spec's ``launcher`` of a torchrun run's nodes.
TORCHRUN_LAUNCHER = "torchrun"

#: The keys of the record that have a field of their own (the rest is kept as is).
_FIELDS = ("schema", "kind", "name", "function", "created", "n_items", "chunksize",
           "chunk_items", "options", "pool", "batch_name", "code_locations", "batch_size",
           "setup", "environment", "sweep", "workflow", "torchrun")


#: The part of the record that goes with each kind but "map".
_PARTS = {"sweep": "sweep", "workflow": "stage", "torchrun": "torchrun"}


class RecordError(ValueError):
    """A map's ``map.json`` cannot be read as a map's record (damaged, or written by a
    newer version of htcml_jupyter)."""


@dataclass(frozen=True)
class SweepPart:
    """What a sweep adds: its trials' parameters, how they are ranked, and, for an
    adaptive sweep, its Optuna study's settings."""

    params: list[dict[str, Any]]
    metric: str | None
    mode: str
    function: str
    #: ``n_trials``, ``max_concurrent``, ``sampler``, ``pruner``, ``seed``, ``first``;
    #: None for a grid or random sweep.
    adaptive: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Any) -> SweepPart:
        data = _mapping(data, "sweep")
        adaptive = data.get("adaptive")
        return cls(params=[dict(p) for p in data.get("params") or []],
                   metric=data.get("metric"), mode=str(data.get("mode", "min")),
                   function=str(data.get("function", "")),
                   adaptive=dict(adaptive) if isinstance(adaptive, Mapping) else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"params": self.params, "metric": self.metric,
                               "mode": self.mode, "function": self.function}
        if self.adaptive is not None:
            out["adaptive"] = self.adaptive
        return out


@dataclass(frozen=True)
class WorkflowPart:
    """The chain a stage belongs to: its name and folder."""

    name: str
    folder: str

    @classmethod
    def from_json(cls, data: Any) -> WorkflowPart:
        data = _mapping(data, "workflow")
        return cls(str(data.get("name", "")), str(data.get("folder", "")))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "folder": self.folder}


@dataclass(frozen=True)
class TorchrunPart:
    """A run's shape: nodes, processes per node, and how long nodes wait for each other."""

    nodes: int
    procs_per_node: int
    join_timeout: float

    @classmethod
    def from_json(cls, data: Any) -> TorchrunPart:
        data = _mapping(data, "torchrun")
        try:
            return cls(int(data["nodes"]), int(data["procs_per_node"]),
                       float(data.get("join_timeout", 600.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"the record's 'torchrun' part is not a run's shape: {exc}") \
                from None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MapRecord:
    """The record of one map folder (``map.json``).

    Read it with :meth:`from_json` (any schema up to :data:`SCHEMA`) or
    :meth:`MapStore.read_record`; write it with :meth:`to_json` or
    :meth:`MapStore.write_record`.  Change it with :meth:`replace`.
    """

    #: The schema it was read in (0: written before records had one).
    schema: int
    kind: Kind
    name: str
    #: The mapped function's name.
    function: str
    #: When the map was created (``time.time()``).
    created: float
    n_items: int
    #: What was asked (``"auto"`` or a number) and what it gave: items per job.
    chunksize: int | Literal["auto"]
    chunk_items: int
    options: SubmitOptions
    #: How to rebuild the backend: ``Backend.describe()`` (``backend``: condor or local,
    #: ``config``, ``description``, ``job_uid``, ``shared_paths``, ``workers``) and, for
    #: a torchrun run, ``launcher``.  Stored under the key ``"pool"``.
    backend: dict[str, Any]
    batch_name: str
    #: ``{function or module name: source file}`` of the pickled code (for tracebacks).
    code_locations: dict[str, str] = field(default_factory=dict)
    batch_size: int | None = None
    #: The ``setup=`` function's name.
    setup: str | None = None
    #: How jobs get Python and packages, chosen at the first submission (None before):
    #: ``kind``, ``reason``, the packed ``archive``..., ``interpreter`` and
    #: ``cloudpickle`` (what a retry from any process runs).
    environment: dict[str, Any] | None = None
    sweep: SweepPart | None = None
    workflow: WorkflowPart | None = None
    torchrun: TorchrunPart | None = None
    #: Keys this version does not know, kept as they were.
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, complete: bool = False) -> MapRecord:
        """The record from ``map.json``'s JSON object, of any schema up to
        :data:`SCHEMA`; :class:`RecordError` says what is wrong otherwise (a record
        without its ``options`` is damaged).  With ``complete``, the fields ``data``
        leaves out take their defaults (a new record written from a few fields)."""
        if not isinstance(data, Mapping):
            raise RecordError(f"a JSON {type(data).__name__} is not the map's record")
        schema = data.get("schema", 0)
        if isinstance(schema, bool) or not isinstance(schema, int) or schema < 0:
            raise RecordError(f"the record's schema {schema!r} is not a version number")
        if schema > SCHEMA:
            raise RecordError(
                f"the map's record has schema {schema}, newer than this htcml_jupyter reads "
                f"(schema {SCHEMA}): upgrade htcml_jupyter (pip install -U htcml_jupyter) "
                f"in this environment to open it")
        # a writer states the kind; only a schema-0 file lacks it
        kind = data["kind"] if schema >= 1 or "kind" in data else _infer_kind(data)
        if kind not in KINDS:
            raise RecordError(f"the record's kind {kind!r} is none of {', '.join(KINDS)}")
        for part, part_kind in _PARTS.items():
            if (data.get(part) is not None) != (kind == part_kind):
                raise RecordError(f"a record of kind {kind!r} "
                                  f"{'holds' if data.get(part) is not None else 'lacks'} "
                                  f"the {part!r} part")
        torchrun = (TorchrunPart.from_json(data["torchrun"]) if data.get("torchrun")
                    is not None else None)
        backend = dict(_mapping(data.get("pool"), "pool"))  # {}: none recorded
        if kind == "torchrun":  # schema 0 runs did not name their launcher
            backend.setdefault("launcher", TORCHRUN_LAUNCHER)
        if data.get("options") is None and not complete:
            raise RecordError("the map's record has no 'options': it is damaged")
        chunksize = data.get("chunksize", 1)
        environment = data.get("environment")
        try:
            return cls(
                schema=schema, kind=cast(Kind, kind), name=str(data.get("name", "")),
                function=str(data.get("function", "?")),
                created=float(data.get("created") or 0.0),
                n_items=_whole(data.get("n_items") or 0, "n_items"),  # None: being written
                chunksize="auto" if chunksize == "auto" else _whole(chunksize, "chunksize"),
                chunk_items=_whole(data.get("chunk_items", 1), "chunk_items"),
                options=SubmitOptions.from_record(_mapping(data.get("options"), "options")),
                backend=backend, batch_name=str(data.get("batch_name") or data.get("name")),
                code_locations={str(k): str(v) for k, v in
                                _mapping(data.get("code_locations"), "code_locations").items()},
                batch_size=(None if data.get("batch_size") is None
                            else _whole(data["batch_size"], "batch_size")),
                setup=None if data.get("setup") is None else str(data["setup"]),
                environment=dict(environment) if isinstance(environment, Mapping) else None,
                sweep=SweepPart.from_json(data["sweep"]) if data.get("sweep") is not None
                else None,
                workflow=(WorkflowPart.from_json(data["workflow"])
                          if data.get("workflow") is not None else None),
                torchrun=torchrun,
                extra={k: v for k, v in data.items() if k not in _FIELDS})
        except (TypeError, ValueError) as exc:
            if isinstance(exc, RecordError):
                raise
            raise RecordError(f"the map's record is damaged: {exc}") from None

    # ------------------------------------------------------------------ writing
    def to_json(self) -> dict[str, Any]:
        """The record as ``map.json``'s JSON object, in the current schema."""
        out: dict[str, Any] = {
            "schema": SCHEMA, "kind": self.kind, "name": self.name,
            "function": self.function, "created": self.created, "n_items": self.n_items,
            "chunksize": self.chunksize, "chunk_items": self.chunk_items,
            "options": self.options.asdict(), "pool": dict(self.backend),
            "batch_name": self.batch_name, "code_locations": dict(self.code_locations),
            "batch_size": self.batch_size, "setup": self.setup,
        }
        if self.environment is not None:
            out["environment"] = dict(self.environment)
        for name, part in (("sweep", self.sweep), ("workflow", self.workflow),
                           ("torchrun", self.torchrun)):
            if part is not None:
                out[name] = part.to_json()
        return {**self.extra, **out}

    def replace(self, **changes: Any) -> MapRecord:
        """A copy with ``changes`` (e.g. ``n_items=...``, ``environment=...``)."""
        return dataclasses.replace(self, **changes)

    def with_schema(self) -> MapRecord:
        """This record as it reads once written (in the current schema)."""
        return self.replace(schema=SCHEMA)

    # ------------------------------------------------------------------ derived
    @property
    def pool_description(self) -> str:
        """Where the jobs run, in words (``"the project's pool"``)."""
        return str(self.backend.get("description", "?"))

    @property
    def launcher(self) -> str | None:
        """What starts each job in front of the runner (``"torchrun"``), or None."""
        launcher = self.backend.get("launcher")
        return str(launcher) if launcher is not None else None

    @property
    def adaptive(self) -> dict[str, Any] | None:
        """An adaptive sweep's study settings (``n_trials``, ``max_concurrent``,
        ``first``...); None for any other map."""
        return self.sweep.adaptive if self.sweep is not None else None

    @property
    def interpreter(self) -> str | None:
        """The interpreter jobs run, recorded at the first submission (shared
        environments; None before it, and for the other environments)."""
        found = (self.environment or {}).get("interpreter")
        return str(found) if found else None


def _infer_kind(data: Mapping[str, Any]) -> str:
    """The kind of a schema-0 record, from the part it holds (as that code decided)."""
    for part, kind in _PARTS.items():
        if data.get(part) is not None:
            return kind
    return "map"


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    """``value`` when it is a JSON object; a part left out (None) reads as empty."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RecordError(f"the record's {key!r} is a {type(value).__name__}, not a "
                          f"JSON object")
    return value


def _whole(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecordError(f"the record's {key!r} is {value!r}, not a whole number")
    return value
