"""Is this machine already part of an HTCondor pool?  Then the project's pool stays off.

An access point (CHTC's, the OSPool's, a campus cluster's) has its own HTCondor: a
configuration that ``CONDOR_CONFIG`` names, or one in HTCondor's usual places
(``/etc/condor/condor_config``, ...) whose collector or local schedd answers.  Starting a
second set of daemons there would compete with the site's own, so ``htcml pool up``
and ``scripts/demo`` ask :func:`find_foreign_pool` first and stop with its
:meth:`ForeignPool.message` (maps then use that pool as it is).

A configuration written by ``htcml pool up`` itself is never foreign, nor is one whose
daemons do not answer (Binder's image has HTCondor installed, not running).

Standard library only, and Python 3.9 syntax: ``scripts/demo`` runs this file with the
machine's ``python3`` before it installs anything (``python3 guard.py`` exits 3 with the
message when the machine belongs to another pool, 0 otherwise).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The first line of every configuration file ``htcml pool up`` writes says so.
PROJECT_MARK = "(written by `htcml pool up`)"

#: Exit status of ``htcml pool up`` and ``scripts/demo`` when they decline.
DECLINED = 3

Address = tuple[str, int]


def _system_configs() -> list[Path]:
    """Where HTCondor looks for its configuration when ``CONDOR_CONFIG`` is not set."""
    places = [Path("/etc/condor/condor_config"), Path("/usr/local/etc/condor_config")]
    try:
        places.append(Path(pwd.getpwnam("condor").pw_dir) / "condor_config")
    except KeyError:
        pass
    return places


@dataclass(frozen=True)
class ForeignPool:
    """An HTCondor pool this machine belongs to that the project did not start.

    Attributes
    ----------
    config
        The configuration naming it (``CONDOR_CONFIG``'s value, or a system file).
    reason
        How it was found, in words.
    from_environment
        True when ``CONDOR_CONFIG`` named it (the fix differs).
    """

    config: str
    reason: str
    from_environment: bool

    def message(self, command: str = "`htcml pool up`") -> str:
        """What to tell the person: what was found, what happens instead, the fix."""
        fix = ("unset CONDOR_CONFIG (it is not one `htcml pool up` wrote)"
               if self.from_environment else
               "stop this machine's HTCondor daemons first (e.g. `sudo systemctl stop "
               "condor`)")
        return (f"this machine already belongs to an HTCondor pool: {self.reason}. "
                f"{command} starts no HTCondor daemons here (on an access point they would "
                f"compete with the site's own). Maps use that pool as it is: "
                f"htc.map(...) without pool= submits to it. To start the project's own "
                f"pool here anyway, {fix}.")


def is_project_config(path: str) -> bool:
    """True when ``path`` is a configuration file written by ``htcml pool up``."""
    try:
        with open(path, errors="replace") as f:
            return PROJECT_MARK in f.readline()
    except OSError:
        return False


def parse_address(value: str, default_port: int = 9618) -> Address | None:
    """``(host, port)`` from an HTCondor address: ``host``, ``host:port``, a sinful
    string ``<ip:port?...>``, or ``[v6]:port``; None when it holds no host."""
    text = value.strip().strip('"').split(",")[0].strip()
    text = text.strip("<>").split("?")[0].split(">")[0]
    if not text or "$(" in text:
        return None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    try:
        return host, int(port) if port else default_port
    except ValueError:
        return None


def answers(address: Address, timeout: float = 2.0) -> bool:
    """True when something accepts a TCP connection at ``address``."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def _same(a: Address, b: Address) -> bool:
    if a[1] != b[1]:
        return False
    try:
        return {i[4][0] for i in socket.getaddrinfo(a[0], a[1])} & {
            i[4][0] for i in socket.getaddrinfo(b[0], b[1])} != set()
    except OSError:
        return a[0] == b[0]


def _clean_env(config: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("_CONDOR_")}
    env["CONDOR_CONFIG"] = config
    path = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(path + [p for p in ("/usr/sbin", "/sbin") if p not in path])
    return env


def config_values(config: str, names: Sequence[str]) -> dict[str, str]:
    """Values of ``names`` in ``config``, as HTCondor itself reads them: through
    ``condor_config_val`` where it is installed, else through the Python bindings in a
    separate process; empty when neither can read it."""
    env = _clean_env(config)
    tool = shutil.which("condor_config_val", path=env["PATH"])
    values: dict[str, str] = {}
    if tool:
        for name in names:
            try:
                proc = subprocess.run([tool, name], env=env, capture_output=True, text=True,
                                      timeout=30)
            except (OSError, subprocess.SubprocessError):
                continue
            if proc.returncode == 0 and proc.stdout.strip():
                values[name] = proc.stdout.strip().splitlines()[0]
        return values
    script = ("import sys, htcondor2\n"
              "for n in sys.argv[1:]:\n"
              "    print(htcondor2.param.get(n, '') or '')\n")
    try:
        proc = subprocess.run([sys.executable, "-c", script, *names], env=env,
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return values
    lines = proc.stdout.splitlines()
    if proc.returncode == 0 and len(lines) == len(names):
        values = {n: v.strip() for n, v in zip(names, lines) if v.strip()}  # noqa: B905 (3.9)
    return values


def project_addresses(state_dirs: Iterable[Path] = ()) -> list[Address]:
    """The collectors of the project's own pools whose client configurations exist."""
    dirs = list(state_dirs)
    if not dirs:
        base = os.environ.get("HTCML_POOL_DIR")
        if base:
            dirs = [Path(base)]
        elif os.geteuid() == 0:
            dirs = [Path("/var/lib/htcml/pool")]
        else:
            home = os.environ.get("HTCML_HOME") or os.path.expanduser("~/.htcml")
            dirs = [Path(home) / "pool"]
        dirs.append(dirs[0].with_name(dirs[0].name + "-isolated"))
    found = []
    for d in dirs:
        settings: dict[str, str] = {}
        try:
            for line in (d / "condor_config").read_text().splitlines():
                key, eq, value = line.partition("=")
                if eq:
                    settings[key.strip().upper()] = value.strip()
        except OSError:
            continue
        address = parse_address(settings.get("COLLECTOR_HOST")
                                or settings.get("CONDOR_HOST", ""))
        if address:
            found.append(address)
    return found


def _answering(config: str, own: Sequence[Address]) -> str | None:
    """What answers for ``config``: its local schedd or its collector (not one of the
    project's own pools), in words; None when nothing does."""
    values = config_values(config, ["SCHEDD_ADDRESS_FILE", "COLLECTOR_HOST"])
    address_file = values.get("SCHEDD_ADDRESS_FILE")
    if address_file:
        try:
            with open(address_file) as f:
                schedd = parse_address(f.readline())
        except OSError:
            schedd = None
        if schedd and not any(_same(schedd, o) for o in own) and answers(schedd):
            return f"its local schedd answers at {schedd[0]}:{schedd[1]}"
    for entry in values.get("COLLECTOR_HOST", "").split(",")[:3]:
        collector = parse_address(entry)
        if collector and not any(_same(collector, o) for o in own) and answers(collector):
            return f"its collector answers at {collector[0]}:{collector[1]}"
    return None


def find_foreign_pool(system_configs: Sequence[Path] | None = None,
                      own: Sequence[Address] | None = None) -> ForeignPool | None:
    """The HTCondor pool this machine already belongs to, when the project did not
    start it; None when the project's pool may be started here.

    Parameters
    ----------
    system_configs
        Configuration files to look at when ``CONDOR_CONFIG`` is not set (default:
        HTCondor's usual places).
    own
        Collector addresses of the project's own pools, which never count (default:
        those of the pools ``htcml pool up`` recorded).

    Returns
    -------
    ForeignPool or None
        What was found, with a :meth:`ForeignPool.message` naming the fix.
    """
    named = os.environ.get("CONDOR_CONFIG", "")
    # The bindings set /dev/null when there is none; the project's own configuration
    # says nothing about the machine's, which is looked at next either way.
    if named and named != os.devnull and not is_project_config(named):
        return ForeignPool(named, f"CONDOR_CONFIG names {named}, an HTCondor configuration "
                                  f"this project did not write", True)
    own = list(project_addresses()) if own is None else list(own)
    for path in _system_configs() if system_configs is None else system_configs:
        if not path.is_file() or is_project_config(str(path)):
            continue
        found = _answering(str(path), own)
        if found:
            return ForeignPool(str(path), f"{path} configures a pool, and {found}", False)
    return None


def main() -> int:
    """``python3 guard.py``: exit 3 with the message when the machine belongs to a pool."""
    found = find_foreign_pool()
    if found is None:
        return 0
    print(found.message("scripts/demo"), file=sys.stderr)
    return DECLINED


if __name__ == "__main__":
    sys.exit(main())
