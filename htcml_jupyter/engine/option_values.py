"""How option values are written and checked: sizes, GPU memory in MB, lists of names.

The checks of :data:`htcml_jupyter.engine.options.OPTIONS` that know a unit or a site's
convention live here; each takes the option's name (for the message) and the value.
"""

from __future__ import annotations

import math
import os
import re
import warnings
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
