"""Resource and policy options of a map: validated once, from one table."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|[KMGT])?\s*$", re.IGNORECASE)


class OptionError(ValueError):
    """An option of a map is unknown or has a value of the wrong kind."""


def _size(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OptionError(f"{name} must be a size such as 512MB or 4GB, not {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise OptionError(f"{name} must be positive, not {value!r}")
        return f"{int(value)}MB"
    if not _SIZE.match(value):
        raise OptionError(f"{name} must be a size such as 512MB or 4GB, not {value!r}")
    return value.strip().replace(" ", "")


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


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"{name} must be a whole number, not {value!r}")
    return value


def _capability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise OptionError(f"{name} must be a CUDA capability such as 7.5, not {value!r}")
    return float(value)


def _extra(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise OptionError(f"{name} must be a dict of submit commands, not {value!r}")
    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not re.match(r"^[+A-Za-z_][\w.+]*$", key):
            raise OptionError(f"{name}: {key!r} is not a submit command name")
        text = str(val)
        if "\n" in text:
            raise OptionError(f"{name}: the value of {key!r} must be one line")
        out[key] = text
    return out


_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def _files(name: str, value: Any) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise OptionError(f"{name} must be a list of paths or URLs, not {value!r}")
    out: list[str] = []
    for item in value:
        text = os.fspath(item) if isinstance(item, os.PathLike) else item
        if not isinstance(text, str) or not text or "," in text or "\n" in text:
            raise OptionError(f"{name}: {item!r} must be a path or URL without commas")
        if _URL.match(text):
            out.append(text)
            continue
        path = os.path.abspath(os.path.expanduser(text))
        if not os.path.exists(path):
            raise OptionError(f"{name}: {path} does not exist; create it or fix the path "
                              f"(URLs such as osdf:// or https:// are fetched by the job)")
        out.append(path)
    return out


def size_in_mb(size: str) -> int:
    """Megabytes in a size such as ``512MB``, ``4GB`` or ``2GiB`` (bare numbers are MB)."""
    m = _SIZE.match(size)
    if not m:
        raise OptionError(f"{size!r} is not a size such as 512MB or 4GB")
    number = float(m.group(1))
    unit = (m.group(2) or "M")[0].upper()
    factor = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
    return max(1, int(number * factor))


@dataclass(frozen=True)
class OptionSpec:
    """One option: how it is checked, its default, and what it means."""

    check: Callable[[str, Any], Any]
    default: Any
    help: str


#: The one source of truth for map options.
OPTIONS: dict[str, OptionSpec] = {
    "request_cpus": OptionSpec(_positive, 1, "CPU cores per job"),
    "request_memory": OptionSpec(_size, "1GB", "memory per job, e.g. 512MB, 4GB"),
    "request_disk": OptionSpec(_size, "1GB", "scratch disk per job"),
    "request_gpus": OptionSpec(_count, 0, "GPUs per job"),
    "gpus_minimum_memory": OptionSpec(_size, None, "least GPU memory, e.g. 16GB"),
    "gpus_minimum_capability": OptionSpec(_capability, None, "least CUDA capability, e.g. 7.5"),
    "requirements": OptionSpec(_text, None, "a ClassAd expression the machine must satisfy"),
    "container_image": OptionSpec(_text, None, "container image the job runs in"),
    "max_retries": OptionSpec(_count, 0, "reruns of a job that crashes (not Python errors)"),
    "max_idle": OptionSpec(_positive, None, "how many jobs of the map may wait in the queue"),
    "priority": OptionSpec(_integer, 0, "job priority within your own jobs"),
    "accounting_group": OptionSpec(_text, None, "accounting group to charge"),
    "input_files": OptionSpec(_files, [], "files or URLs sent to every job's folder"),
    "python": OptionSpec(_text, None,
                         "interpreter on the execute node (default: this one's path, or "
                         "python3 in a container)"),
    "submit_extra": OptionSpec(_extra, {}, "other submit commands, passed through as given"),
}


def describe_options() -> str:
    """A table of the valid options with their defaults, for messages and help."""
    width = max(map(len, OPTIONS))
    return "\n".join(f"  {name:<{width}}  {spec.help} (default {spec.default!r})"
                     for name, spec in OPTIONS.items())


@dataclass(frozen=True)
class SubmitOptions:
    """The validated options of one map (resources, policy and pass-through commands)."""

    values: Mapping[str, Any]

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
        return cls(values)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def asdict(self) -> dict[str, Any]:
        return dict(self.values)

    def submit_commands(self) -> dict[str, str]:
        """The submit-description commands these options stand for."""
        v = self.values
        cmds: dict[str, str] = {
            "request_cpus": str(v["request_cpus"]),
            "request_memory": v["request_memory"],
            "request_disk": v["request_disk"],
        }
        if v["request_gpus"]:
            cmds["request_gpus"] = str(v["request_gpus"])
            if v["gpus_minimum_memory"]:
                cmds["gpus_minimum_memory"] = v["gpus_minimum_memory"]
            if v["gpus_minimum_capability"]:
                cmds["gpus_minimum_capability"] = str(v["gpus_minimum_capability"])
        if v["requirements"]:
            cmds["requirements"] = v["requirements"]
        if v["container_image"]:
            cmds["container_image"] = v["container_image"]
        if v["max_retries"]:
            cmds["max_retries"] = str(v["max_retries"])
        if v["max_idle"]:
            cmds["max_idle"] = str(v["max_idle"])
        if v["priority"]:
            cmds["priority"] = str(v["priority"])
        if v["accounting_group"]:
            cmds["accounting_group"] = v["accounting_group"]
        cmds.update(v["submit_extra"])
        return cmds
