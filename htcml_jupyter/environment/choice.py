"""Which environment a map's jobs get: the meaning of ``environment=``.

``"auto"`` follows HTCondor's own rule for a shared filesystem: the execute machines
share the submit side's files when they advertise the same ``FileSystemDomain``.  The
pool answers through :class:`PoolFacts` (the HTCondor backend asks its collector and
schedd); nothing here talks to a pool.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..engine.option_values import URL_SCHEMES
from ..engine.options import OptionError, SubmitOptions

#: The kinds of environment a map can record.
KINDS = ("shared", "pack", "archive", "container")

Domains = tuple[str | None, list[str]]


class PoolFacts(Protocol):
    """What the environment code asks of the pool a map's jobs go to (an HTCondor
    backend answers it)."""

    #: Words for people: "the project's pool".
    description: str

    def filesystem_domains(self) -> Domains:
        """The submit side's filesystem domain (None when unknown) and each execute
        machine's; raises :class:`~htcml_jupyter.PoolUnavailable` naming the fix."""
        ...

    def schedd_version(self) -> str:
        """The schedd's ``CondorVersion`` (``"$CondorVersion: 23.9.6 ..."``)."""
        ...


@dataclass(frozen=True)
class Decision:
    """How a map's jobs get Python.

    Attributes
    ----------
    kind
        One of :data:`KINDS`.
    reason
        Why, in words (printed once per map).
    archive
        For ``"archive"``: the path or URL given; ``None`` otherwise.
    """

    kind: str
    reason: str
    archive: str | None = None


def auto_decision(submit_domain: str | None, execute_domains: Iterable[str]) -> Decision:
    """``environment="auto"``: ``shared`` when every execute machine advertises the
    submit side's filesystem domain, ``pack`` otherwise.

    Parameters
    ----------
    submit_domain
        The schedd's ``FILESYSTEM_DOMAIN``; ``None`` when unknown.
    execute_domains
        The ``FileSystemDomain`` of each execute machine (repeats are fine).
    """
    domains = sorted(set(execute_domains))
    if not domains:
        return Decision("pack", "no execute machine advertises a filesystem domain yet, "
                                "so none can be assumed to share the submit side's files")
    if not submit_domain:
        return Decision("pack", "the submit side's filesystem domain is unknown")
    others = [d for d in domains if d != submit_domain]
    if not others:
        return Decision("shared", f"the execute machines share the submit side's "
                                  f"filesystem domain {submit_domain}")
    which = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    noun = "domain" if len(others) == 1 else "domains"
    verb = "differs" if len(others) == 1 else "differ"
    return Decision("pack", f"the execute machines' filesystem {noun} {which} {verb} from "
                            f"the submit side's {submit_domain}")


def is_url(value: str) -> bool:
    """Whether ``value`` is a URL HTCondor's file transfer can fetch."""
    return value.lower().startswith(URL_SCHEMES)


def decide(options: SubmitOptions, domains: Callable[[], Domains]) -> Decision:
    """Resolve ``options.environment`` (``domains`` is only asked for ``"auto"``).

    ``container_image=`` wins over ``environment=``; ``python=`` names the interpreter
    on the execute side, which is then used as it is.
    """
    if options.container_image:
        return Decision("container", f"the jobs run in {options.container_image} with its "
                                     f"{options.python or 'python3'}; environment= is ignored")
    if options.python:
        return Decision("shared", f"python={options.python} names the execute side's "
                                  f"interpreter")
    value = (options.environment or "auto").strip()
    if value == "shared":
        return Decision("shared", "environment='shared': the jobs run this interpreter "
                                  "by its path")
    if value == "pack":
        return Decision("pack", "environment='pack'")
    if value == "auto":
        return auto_decision(*domains())
    if is_url(value):
        return Decision("archive", f"the archive at {value}", archive=value)
    path = os.path.abspath(os.path.expanduser(value))
    if not path.endswith((".tar.gz", ".tgz")):
        raise OptionError(f"environment={value!r} is not 'auto', 'pack', 'shared', an "
                          f"archive made by `htcml env pack` (.tar.gz) or its URL")
    if not os.path.isfile(path):
        raise OptionError(f"environment={value!r}: no such archive ({path}); make one with "
                          f"`htcml env pack --output {value}`")
    return Decision("archive", f"the archive {path}", archive=path)
