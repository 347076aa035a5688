"""Hyperparameter grids: every combination of a dict of lists, as keyword arguments."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``grid``'s values, as one dict of keyword arguments each.

    >>> grid_points({"lr": [0.1, 0.01], "depth": [2]})
    [{'lr': 0.1, 'depth': 2}, {'lr': 0.01, 'depth': 2}]
    """
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError("a grid must be a non-empty dict of lists, e.g. "
                         "{'lr': [0.1, 0.01], 'depth': [2, 4]}")
    keys = list(grid)
    values = []
    for key in keys:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"grid key {key!r} must be a keyword-argument name")
        options = grid[key]
        if isinstance(options, (str, bytes)) or not isinstance(options, Sequence | range):
            raise TypeError(f"grid[{key!r}] must be a list of values, not "
                            f"{type(options).__name__}")
        if not options:
            raise ValueError(f"grid[{key!r}] is empty")
        values.append(list(options))
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def unpack(function: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``function`` so a map item that is a dict becomes its keyword arguments.

    The wrapper is a closure, so cloudpickle sends it by value: the execute side needs
    nothing of this package.
    """
    def call_with_point(point: dict[str, Any], **constant: Any) -> Any:
        return function(**point, **constant)

    call_with_point.__name__ = getattr(function, "__name__", "call_with_point")
    call_with_point.__qualname__ = call_with_point.__name__
    call_with_point.__doc__ = getattr(function, "__doc__", None)
    return call_with_point
