"""How option values are checked: the ``check`` column of
:data:`htcml_jupyter.engine.options.OPTIONS`.

Each check takes the option's name (for the message) and the value, and returns the
value as the map records it, or raises :class:`OptionError` saying what is allowed.
Everything an option needs is checked here, when the map is made, so a bad value never
leaves a folder or a job behind: sizes, GPU memory in MB, lists of names, an archive
that must exist, a ClassAd expression that must parse, file names HTCondor's lists can
hold.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|[KMGT])?\s*$", re.IGNORECASE)

class OptionError(ValueError):
    """An option of a map is unknown or has a value of the wrong kind."""

def check_size(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OptionError(f"{name} must be a size such as 512MB or 4GB, not {value!r}")
    if isinstance(value, (int, float)):
        if not value > 0:
            raise OptionError(f"{name} must be positive, not {value!r}")
        return f"{math.ceil(value)}MB"  # a bare number is megabytes; 0.5 is 1MB, not 0MB
    m = SIZE_PATTERN.match(value)
    if not m or not float(m.group(1)) > 0:
        raise OptionError(f"{name} must be a positive size such as 512MB or 4GB, not "
                          f"{value!r}")
    return value.strip().replace(" ", "")

_UNIT_KB = {"": 1024, "K": 1, "M": 1024, "G": 1024 ** 2, "T": 1024 ** 3}


def size_kb(size: str) -> int:
    """A size as the options write it (``"1GB"``, ``"512MB"``, ``"2G"``) in KiB, the way
    HTCondor reads ``request_disk`` (a bare number there is KiB; here it is MB)."""
    m = SIZE_PATTERN.match(size)
    if not m:
        raise OptionError(f"not a size: {size!r}")
    unit = (m.group(2) or "M")[0].upper()
    return math.ceil(float(m.group(1)) * _UNIT_KB[unit])

def check_names(name: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(
            isinstance(v, str) and v.strip() and not any(c in v for c in " ,\n")
            for v in items):
        raise OptionError(f"{name} must be a list of distribution names (or folders "
                          f"such as 'torch/include'), not {value!r}")
    return [v.strip() for v in items]

def check_gpu_memory(name: str, value: Any) -> str:
    """GPU memory as the sites write it: a number is MB (``20000``); a size with a
    unit is converted to MB, with a warning where the unit would leave out the very
    cards it names (a "16 GB" card reports about 16,000 MB, less than 16 GiB)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OptionError(f"{name} must be MB as a number (e.g. 20000) or a size such as "
                          f"20GB, not {value!r}")
    if isinstance(value, (int, float)) or str(value).strip().isdigit():
        mb = math.ceil(float(value))
        if mb <= 0:
            raise OptionError(f"{name} must be positive, not {value!r}")
        return str(mb)
    m = SIZE_PATTERN.match(str(value))
    if not m or not float(m.group(1)) > 0:
        raise OptionError(f"{name} must be MB as a number (e.g. 20000) or a size such as "
                          f"20GB, not {value!r}")
    mb = math.ceil(size_kb(str(value)) / 1024)
    unit = (m.group(2) or "").upper()
    if unit.startswith("G") and "I" not in unit:
        warnings.warn(f"{name}={value!r} asks for {mb} MB, which cards sold as "
                      f"{m.group(1)} GB do not report (they show about "
                      f"{int(float(m.group(1)) * 1000)} MB or less); write the MB number the "
                      f"sites use, e.g. {name}={int(float(m.group(1)) * 900)}", stacklevel=4)
    return str(mb)

#: What ``environment=`` names besides an archive: see :mod:`htcml_jupyter.environment`.
ENVIRONMENT_KINDS = ("auto", "pack", "shared")
#: URL schemes HTCondor's file transfer fetches itself (an archive given by its URL).
URL_SCHEMES = ("https://", "http://", "osdf://", "pelican://", "stash://", "s3://")
#: How an archive made by ``htcml env pack`` is named.
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def check_environment(name: str, value: Any) -> str:
    """``auto``, ``pack``, ``shared``, the URL of an archive, or the path of an archive
    that exists here (made absolute, so the map records what was checked)."""
    allowed = (f"{name} must be 'auto', 'pack', 'shared', the path of an archive made by "
               f"`htcml env pack` ({' or '.join(ARCHIVE_SUFFIXES)}) or its URL "
               f"({', '.join(URL_SCHEMES)})")
    if not isinstance(value, (str, os.PathLike)):
        raise OptionError(f"{allowed}, not {value!r}")
    text = os.fspath(value).strip()
    if text in ENVIRONMENT_KINDS:
        return text
    if any(c in text for c in ("\n", "\r", '"', ",", "$(")):
        raise OptionError(f"{allowed}; {text!r} holds a newline, a quote, ',' or '$('")
    if text.lower().startswith(URL_SCHEMES):
        return text
    if not text.endswith(ARCHIVE_SUFFIXES):
        raise OptionError(f"{allowed}, not {value!r}")
    path = os.path.abspath(os.path.expanduser(text))
    if not os.path.isfile(path):
        raise OptionError(f"{name}={value!r}: no such archive ({path}); make one with "
                          f"`htcml env pack --output {text}`")
    return path


def check_expression(name: str, value: Any) -> str:
    """A one-line ClassAd expression that parses (``TARGET.Memory > 4096``)."""
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise OptionError(f"{name} must be a one-line ClassAd expression, not {value!r}")
    import classad2  # only when an expression is given

    try:
        classad2.ExprTree(value)
    except Exception:
        raise OptionError(f"{name}: {value!r} is not a ClassAd expression HTCondor can "
                          f"parse (e.g. 'TARGET.Memory > 4096 && HasDocker')") from None
    return value


def check_duration(name: str, value: Any) -> str:
    if value not in ("Medium", "Long"):
        raise OptionError(f"{name} must be 'Medium' (under 10 h, at most 20 h) or 'Long' "
                          f"(under 20 h, at most 40 h), the OSPool's job duration "
                          f"categories, not {value!r}")
    return str(value)


def check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OptionError(f"{name} must be a whole number >= 0, not {value!r}")
    return value


def check_positive(name: str, value: Any) -> int:
    if check_count(name, value) == 0:
        raise OptionError(f"{name} must be at least 1, not {value!r}")
    return int(value)


def check_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise OptionError(f"{name} must be a one-line, non-empty string, not {value!r}")
    return value


def check_destination(name: str, value: Any) -> str:
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not text.strip():
        raise OptionError(f"{name} must be a folder path or a URL, not {value!r}")
    if any(c in text for c in ("\n", "\r", '"', ",", ";", "$(", " ")):
        raise OptionError(f"{name}: {text!r} cannot hold spaces, quotes, ',', ';' or '$('")
    if "://" not in text and not os.path.isabs(text):
        raise OptionError(f"{name} must be an absolute folder (the submit host writes to it) "
                          f"or a URL such as osdf:///ospool/..., not {text!r}")
    return text.rstrip("/") or "/"


def check_integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"{name} must be a whole number, not {value!r}")
    return value


def check_capability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise OptionError(f"{name} must be a CUDA capability such as 7.5, not {value!r}")
    return float(value)


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


def check_extra(name: str, value: Any) -> dict[str, str]:
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
    "calls.py", "jobside.pyz",
})

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def check_files(name: str, value: Any) -> list[str]:
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


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"{name} must be True or False, not {value!r}")
    return value


def check_job_length(name: str, value: Any) -> str:
    if value not in ("short", "medium", "long"):
        raise OptionError(f"{name} must be 'short', 'medium' or 'long' (CHTC GPU Lab job "
                          f"lengths), not {value!r}")
    return str(value)
