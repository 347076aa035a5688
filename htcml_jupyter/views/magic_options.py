"""The job options of the cell magics, made from
:data:`~htcml_jupyter.engine.options.OPTIONS`.

Every option of ``htc.map`` is a flag named after it (``request_memory`` is
``--request-memory``), with the table's help, example and default; a few keep the short
aliases the tutorials use (``--memory``, ``--gpus``, ``--image``, ``--files``...).  How
the text on the line becomes the value follows the option's
:attr:`~htcml_jupyter.engine.options.OptionSpec.line_syntax`:

=========  =========================================  ==============================
syntax     on the line                                value
=========  =========================================  ==============================
int        ``--request-cpus 4``                       ``4``
float      ``--gpus-minimum-capability 7.5``          ``7.5``
text       ``--request-memory 4GB``,                  the text (one layer of quotes
           ``--requirements 'Memory > 4096'``         around it removed)
switch     ``--want-gpu-lab``; ``--no-chirp`` for an  ``True``; ``False``
           option that is on by default
names      ``--pack-include ipython,torch/include``   ``["ipython", "torch/include"]``
expr       ``--files data_files``,                    a notebook variable or a Python
           ``--submit-extra "{'My.Lab': '1'}"``       literal (read without ``eval``)
=========  =========================================  ==============================

A flag not given leaves the option out, so ``htc.map`` (or the magics' configured
defaults) decides; the value is then checked by ``htc.map`` itself, like any keyword.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from IPython.core.magic_arguments import ArgDecorator

from ..engine.options import OPTIONS, OptionSpec
from .cell_parsing import resolve_expression

__all__ = ["ALIASES", "flags_of", "given_options", "option_arguments"]

#: Short flags kept as aliases of the generated ones (the tutorials and README use them).
ALIASES: dict[str, tuple[str, ...]] = {
    "request_cpus": ("--cpus",),
    "request_memory": ("--memory",),
    "request_disk": ("--disk",),
    "request_gpus": ("--gpus",),
    "gpus_minimum_memory": ("--gpu-memory",),
    "gpus_minimum_capability": ("--gpu-capability",),
    "container_image": ("--image",),
    "max_retries": ("--retries",),
    "input_files": ("--files",),
}

_METAVARS = {"int": "N", "float": "X", "text": "VALUE", "names": "NAMES", "expr": "EXPR"}


def flags_of(name: str) -> list[str]:
    """The flags of option ``name``: its own (``--no-NAME`` for a switch that is on by
    default), then its aliases."""
    spec = OPTIONS[name]
    stem = name.replace("_", "-")
    own = f"--no-{stem}" if spec.line_syntax == "switch" and spec.default is True \
        else f"--{stem}"
    return [own, *ALIASES.get(name, ())]


def _unquote(text: str) -> str:
    """The text without one layer of matching quotes (the magic's line keeps them)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _names(text: str) -> list[str]:
    names = [n.strip() for n in _unquote(text).split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of names")
    return names


def _shown(value: Any, syntax: str) -> str:
    """A value as it is written on the line."""
    if syntax == "names":
        return ",".join(map(str, value))
    if syntax == "expr":
        return repr(value)
    text = str(value)
    return f"'{text}'" if syntax == "text" and " " in text else text  # one argument


def _help(name: str, spec: OptionSpec) -> str:
    syntax = spec.line_syntax
    if syntax == "switch":
        head = f"turn {name} off (it is on by default): " if spec.default is True else ""
        return (head + spec.help).replace("%", "%%")
    notes = []
    if spec.example is not None and "e.g." not in spec.help:
        notes.append(f"e.g. {_shown(spec.example, syntax)}")
    if spec.default not in (None, [], {}):
        notes.append(f"default {_shown(spec.default, syntax)}")
    text = spec.help + (f" ({'; '.join(notes)})" if notes else "")
    return text.replace("%", "%%")  # argparse formats help with %


def _argument(name: str, spec: OptionSpec) -> dict[str, Any]:
    syntax = spec.line_syntax
    kwargs: dict[str, Any] = {"dest": name, "default": None, "help": _help(name, spec)}
    if syntax == "switch":
        kwargs["action"] = "store_false" if spec.default is True else "store_true"
        return kwargs
    kwargs["metavar"] = _METAVARS[syntax]
    kwargs["type"] = {"int": int, "float": float, "text": _unquote, "names": _names,
                      "expr": str}[syntax]
    return kwargs


class option_arguments(ArgDecorator):  # lower case, like IPython's @argument
    """Give a magic one flag per option of :data:`OPTIONS` (or of ``names``), in a
    group of their own; use it below ``@magic_arguments()`` like ``@argument``."""

    def __init__(self, names: Iterable[str] | None = None,
                 title: str = "job options (htc.map keyword options)"):
        self.names = list(OPTIONS if names is None else names)
        unknown = sorted(set(self.names) - set(OPTIONS))
        if unknown:
            raise ValueError(f"not options of htc.map: {', '.join(unknown)}")
        self.title = title

    def add_to_parser(self, parser: argparse.ArgumentParser, group: Any) -> None:
        """Add the flags to ``parser`` (the magic's parser)."""
        options = parser.add_argument_group(self.title)
        for name in self.names:
            options.add_argument(*flags_of(name), **_argument(name, OPTIONS[name]))


def given_options(args: argparse.Namespace, namespace: dict[str, Any],
                  names: Iterable[str] | None = None) -> dict[str, Any]:
    """The options given on a magic's line, as ``htc.map`` keywords (``expr`` ones
    looked up in ``namespace``); options not given are left out."""
    given: dict[str, Any] = {}
    for name in OPTIONS if names is None else names:
        value = getattr(args, name, None)
        if value is None:
            continue
        if OPTIONS[name].line_syntax == "expr":
            value = resolve_expression(value, namespace)
        given[name] = value
    return given
