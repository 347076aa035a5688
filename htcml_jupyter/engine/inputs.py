"""Inputs that are files: per-item :class:`~htcml_jupyter.File` values and those given
once for every job (as keyword arguments), checked before anything is submitted.

A ``File`` is never pickled into a task's input file with its content: HTCondor
transfers it (local paths from the submit side, URLs through its plugins: ``https://``,
``osdf://``, ...) into the job's folder, and the runner hands the function a local path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..jobside.calls import File, find_files
from .options import OptionError

#: Characters a transferred file's path or URL cannot hold (HTCondor's list syntax).
_FORBIDDEN = ("\n", "\r", '"', ",", "$(", ";")


class InputFileError(OptionError, FileNotFoundError):
    """A ``File`` input cannot be sent: missing, unreadable, or clashing with another."""


def _source(file: File, where: str) -> str:
    """The path or URL HTCondor transfers for ``file`` (local paths made absolute)."""
    text = file.source.removeprefix("file://") if file.source.startswith("file://") else \
        file.source
    if any(c in text for c in _FORBIDDEN):
        raise InputFileError(f"{where}: {file!r} cannot be transferred by HTCondor (its path "
                             f"holds a newline, a quote, ',', ';' or '$('); rename it")
    if not file.name:
        raise InputFileError(f"{where}: {file!r} names no file (it ends with '/'); name "
                             f"the file itself")
    if file.is_url:
        return text
    path = os.path.abspath(text)
    if not os.path.isfile(path):
        why = "is a folder" if os.path.isdir(path) else "does not exist"
        raise InputFileError(f"{where}: the input file {path} {why}. Give an existing "
                             f"file, or a URL (https://, osdf://) that the pool can fetch")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{where}: the input file {path} cannot be read by this user")
    return path


def job_files(chunk: Sequence[tuple[int, Any]], shared: Sequence[str] = ()) -> list[str]:
    """The sources of every ``File`` in one job's items; refuses a missing file and two
    different files that would land under the same name in the job's folder."""
    names: dict[str, str] = {os.path.basename(s.rstrip("/")): s for s in shared}
    sources: list[str] = []
    for index, argument in chunk:
        for file in find_files(argument):
            source = _source(file, f"item {index}")
            other = names.setdefault(file.name, source)
            if other != source:
                raise InputFileError(
                    f"item {index}: {file!r} and {other!r} would both be {file.name!r} in "
                    f"the job's folder; give them different names, or chunksize=1 so "
                    f"that they go to different jobs")
            if source not in sources:
                sources.append(source)
    return sources


def shared_files(kwargs: dict[str, Any]) -> list[str]:
    """The sources of ``File`` values among the keyword arguments: sent once per job
    (model weights, a vocabulary), never copied into each task's pickle."""
    sources: list[str] = []
    for key, value in kwargs.items():
        for file in find_files(value):
            source = _source(file, f"keyword argument {key!r}")
            if source not in sources:
                sources.append(source)
    return sources
