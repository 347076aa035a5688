"""Reading a magic's line and cell: notebook expressions without ``eval``, and the
functions a cell defines."""

from __future__ import annotations

import ast
from typing import Any

from IPython.core.error import UsageError

_SAFE_CALLS = {"range": range, "list": list, "tuple": tuple}


def resolve_expression(text: str, namespace: dict[str, Any]) -> Any:
    """Look up ``text`` in ``namespace`` without ``eval``.

    Accepted: names, attributes and subscripts with literal keys (``data.texts[:100]``),
    Python literals (``[1, 2, 3]``, ``{"lr": [0.1, 0.01]}``) and ``range(...)`` of those.
    Quote an expression that holds spaces: ``--kwargs "{'c': 100}"``.
    """
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]  # quoted on the magic's line to keep spaces together
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise UsageError(f"cannot read {text!r}: {exc.msg}") from None

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            if node.id in namespace:
                return namespace[node.id]
            if node.id in ("True", "False", "None"):
                return {"True": True, "False": False, "None": None}[node.id]
            raise UsageError(f"{node.id!r} is not defined in the notebook; define it first")
        if isinstance(node, ast.Attribute):
            return getattr(value(node.value), node.attr)
        if isinstance(node, ast.Subscript):
            return value(node.value)[value(node.slice)]
        if isinstance(node, ast.Slice):
            return slice(*(value(n) if n is not None else None
                           for n in (node.lower, node.upper, node.step)))
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = [value(e) for e in node.elts]
            return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
        if isinstance(node, ast.Dict):
            return {value(k): value(v) for k, v in zip(node.keys, node.values, strict=True)
                    if k is not None}
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in _SAFE_CALLS and not node.keywords):
            return _SAFE_CALLS[node.func.id](*(value(a) for a in node.args))
        raise UsageError(f"{text!r} is too complex for a magic argument: assign it to a "
                         f"variable in a cell first and pass the variable's name")

    try:
        return value(tree.body)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"cannot evaluate {text!r}: {type(exc).__name__}: {exc}") from None


def top_level_functions(source: str) -> list[str]:
    """Names of the functions a cell defines at its top level."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
