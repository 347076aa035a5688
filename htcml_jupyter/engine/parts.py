"""The parts a :class:`~htcml_jupyter.engine.mapping.Map` is made of, built together.

Each part lives in its own module and is given what it needs explicitly: the table
(:class:`~.table.MapTable`: the jobs' states, read from their events, and the lock they
are read under), the reader of outcomes (:class:`~.results.MapResults`) and the actions
(:class:`~.actions.MapActions`).  Code beside the handle that needs one step the
handle's public methods combine (the executor reads a done item's value without a pass
over every item's state) uses the part's documented method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .actions import MapActions
from .outcomes import OutcomeReader
from .record import MapRecord
from .results import MapResults
from .store import MapStore
from .table import MapTable

if TYPE_CHECKING:
    from ..backends.protocol import Backend


@dataclass(frozen=True)
class MapParts:
    """A map's table, its reader of outcomes and its actions."""

    #: The jobs' states and the lock they are read under.
    table: MapTable
    #: Values, errors and output files.
    results: MapResults
    #: Cancel, abort, vacate, release, retry, extend.
    actions: MapActions

    @classmethod
    def build(cls, store: MapStore, backend: Backend, record: MapRecord) -> MapParts:
        """The parts of the map in ``store`` whose record is ``record``: reads its folder
        (the jobs recorded so far), asks the backend nothing."""
        outcomes = OutcomeReader(store, record.code_locations)
        table = MapTable(store, backend, outcomes, record.n_items)
        return cls(table=table,
                   results=MapResults(table, outcomes, store, record.batch_size or None,
                                      record.options.output_destination),
                   actions=MapActions(table, store, backend, record))
