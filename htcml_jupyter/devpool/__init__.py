"""The project's own single-node HTCondor pool, for development, tests and demos.

``htcml pool up`` starts a real HTCondor pool on this machine and records how a
client reaches it (a client configuration file plus a token); ``htcml pool down``
stops it and undoes every mount.

Two ways to get the daemons:

* **native** -- ``condor_master`` is on ``PATH`` (Debian 13, Ubuntu 24.04, Binder):
  a personal pool run by the current, ordinary user under the state folder.
* **rootfs** -- as root on a machine without HTCondor packages (Debian 12): a
  Debian 13 root made with ``debootstrap`` holding ``minicondor``, started with
  ``chroot``.  Jobs run as an ordinary user (``htcml``), and the host folders a job
  needs (the interpreter, the map folders, ``/tmp``) are bind-mounted at the same
  paths, as a pool with a shared filesystem would have them.

Both pools get several slots, fast negotiation and two simulated GPUs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..paths import htcml_home

POOL_USER = "htcml"
POOL_UID = 1777
ROOTFS_SUITE = "trixie"
TUNING = """\
# Written by htcml_jupyter: a fast, small single-node pool.
NEGOTIATOR_INTERVAL = 1
NEGOTIATOR_MIN_INTERVAL = 1
NEGOTIATOR_CYCLE_DELAY = 1
SCHEDD_INTERVAL = 2
UPDATE_INTERVAL = 2
STARTER_UPDATE_INTERVAL = 2
STARTER_INITIAL_UPDATE_INTERVAL = 1
SHADOW_QUEUE_UPDATE_INTERVAL = 2
NUM_CPUS = {num_cpus}
use FEATURE : GPUs
GPU_DISCOVERY_EXTRA = -sim:4,2
MachineMaxVacateTime = 5
RUNBENCHMARKS = 0
"""
ROOTFS_EXTRA = """\
MOUNT_UNDER_SCRATCH =
USE_PID_NAMESPACES = False
"""


class PoolError(RuntimeError):
    """The project's pool could not be started, stopped or reached."""


@dataclass
class PoolState:
    """What ``pool up`` recorded: how to reach the pool and what to undo."""

    mode: str
    state_dir: str
    client_config: str
    job_user: str
    job_uid: int
    rootfs: str = ""
    mounts: list[str] = field(default_factory=list)
    shared_paths: list[str] = field(default_factory=list)
    started: float = 0.0

    def save(self) -> None:
        path = Path(self.state_dir) / "state.json"
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: Path | None = None) -> PoolState | None:
        path = (state_dir or default_state_dir()) / "state.json"
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def default_state_dir() -> Path:
    """Where the project's pool keeps its state (``$HTCML_POOL_DIR`` overrides)."""
    env = os.environ.get("HTCML_POOL_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/htcml/pool")
    return htcml_home() / "pool"


def chroot_env() -> dict[str, str]:
    """This process's environment without HTCondor settings: the daemons and tools in
    the root must read the root's own configuration, not a client's CONDOR_CONFIG."""
    return {k: v for k, v in os.environ.items()
            if k != "CONDOR_CONFIG" and not k.startswith("_CONDOR_")}


def _run(cmd: list[str], *, check: bool = True, quiet: bool = True, **kw: object) -> str:
    if cmd and cmd[0] == "chroot" and "env" not in kw:
        kw["env"] = chroot_env()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise PoolError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    if not quiet:
        print(proc.stdout, end="")
    return str(proc.stdout)


def _say(msg: str) -> None:
    print(f"[htcml pool] {msg}", file=sys.stderr, flush=True)


def _is_mounted(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def _interpreter_paths() -> list[str]:
    """Host folders a job needs to run this interpreter with its packages."""
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            paths.add(os.path.realpath(entry))
    # Keep only the outermost folders.
    kept: list[str] = []
    for p in sorted(paths):
        if p in ("/", "/usr", "/tmp") or p.startswith("/usr/"):
            continue
        if not any(p == k or p.startswith(k + "/") for k in kept):
            kept.append(p)
    return kept


def _write_client_config(state: PoolState, token: str) -> None:
    state_dir = Path(state.state_dir)
    tokens = state_dir / "tokens.d"
    tokens.mkdir(mode=0o700, parents=True, exist_ok=True)
    for old in tokens.iterdir():
        old.unlink()
    token_file = tokens / "htcml"
    token_file.write_text(token.strip() + "\n")
    token_file.chmod(0o600)
    config = state_dir / "condor_config"
    config.write_text(
        "# Client configuration for the htcml_jupyter pool (written by `htcml pool up`).\n"
        "CONDOR_HOST = 127.0.0.1\n"
        "NETWORK_INTERFACE = 127.0.0.1\n"
        "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS, FS\n"
        f"SEC_TOKEN_DIRECTORY = {tokens}\n"
        f"HTCML_JOB_USER = {state.job_user}\n"
    )
    state.client_config = str(config)


# --------------------------------------------------------------------------- API


def up(state_dir: Path | None = None, *, num_cpus: int = 8) -> PoolState:
    """Start the project's pool (or find it running) and record how to reach it."""
    state_dir = state_dir or default_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    sbin_path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    if shutil.which("condor_master", path=sbin_path) and os.geteuid() != 0:
        from .native import up_native

        state = up_native(state_dir, num_cpus)
    else:
        from .rootfs import up_rootfs

        state = up_rootfs(state_dir, num_cpus)
    state.save()
    return state


def down(state_dir: Path | None = None) -> bool:
    """Stop the project's pool and undo its mounts; False when it was not up."""
    state_dir = state_dir or default_state_dir()
    state = PoolState.load(state_dir)
    if state is None:
        return False
    if state.mode == "rootfs":
        from .rootfs import down_rootfs

        down_rootfs(state)
    else:
        from .native import down_native

        down_native(state)
    (state_dir / "state.json").unlink(missing_ok=True)
    return True


def running_state(state_dir: Path | None = None) -> PoolState | None:
    """The recorded state when the project's pool was started and not stopped, else None."""
    state = PoolState.load(state_dir)
    if state is None or not Path(state.client_config).exists():
        return None
    if state.mode == "rootfs" and not _is_mounted(os.path.join(state.rootfs, "proc")):
        return None
    return state
