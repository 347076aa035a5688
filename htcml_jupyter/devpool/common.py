"""What the ways of running the project's pool share: settings, the recorded state,
and small helpers for commands, mounts and the client configuration."""

from __future__ import annotations

import json
import os
import socket
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
# A map's first job starts well within a second of its submit: new idle jobs make the
# schedd publish its submitter ad and ask the negotiator for a cycle, at once with
# SCHEDD_MIN_INTERVAL = 0 (instead of up to 5 s later; SCHEDD_INTERVAL_TIMESLICE, 5%
# by default, still bounds the time the schedd spends on these queue scans), and with
# no cycle delay the negotiator starts that cycle at once.  Unasked, it runs one
# cycle every NEGOTIATOR_INTERVAL seconds.
SCHEDD_INTERVAL = 2
SCHEDD_MIN_INTERVAL = 0
NEGOTIATOR_INTERVAL = 1
NEGOTIATOR_MIN_INTERVAL = 0
NEGOTIATOR_CYCLE_DELAY = 0
UPDATE_INTERVAL = 2
STARTER_UPDATE_INTERVAL = 2
STARTER_INITIAL_UPDATE_INTERVAL = 1
SHADOW_QUEUE_UPDATE_INTERVAL = 2
NUM_CPUS = {num_cpus}
use FEATURE : GPUs
GPU_DISCOVERY_EXTRA = -sim:4,2
MachineMaxVacateTime = 5
RUNBENCHMARKS = 0
# Without cgroups (a chroot) the procd measures jobs from /proc snapshots, every 60 s
# by default: a shorter job would report the memory and CPU of its first instant.
PROCD_MAX_SNAPSHOT_INTERVAL = 1
# DAGs and local-universe jobs run here too: DAGMan reads its nodes' logs every
# second, and a DAG kept under /tmp is fine on this pool.
START_LOCAL_UNIVERSE = True
START_SCHEDULER_UNIVERSE = True
DAGMAN_USER_LOG_SCAN_INTERVAL = 1
DAGMAN_AVOID_SLASH_TMP = False
"""
ROOTFS_EXTRA = """\
MOUNT_UNDER_SCRATCH =
USE_PID_NAMESPACES = False
"""


class PoolError(RuntimeError):
    """The project's pool could not be started, stopped or reached."""


@dataclass
class PoolState:
    """What ``pool up`` recorded: how to reach the pool and what to undo.

    ``mode`` is ``"native"``, ``"rootfs"`` (the shared pool in a Debian root) or
    ``"isolated"``.  The isolated pool also records its ``roots`` and ``ports`` by role
    (``"submit"``, ``"exec1"``, ...) and the ``FileSystemDomain`` of each side.
    """

    mode: str
    state_dir: str
    client_config: str
    job_user: str
    job_uid: int
    rootfs: str = ""
    mounts: list[str] = field(default_factory=list)
    shared_paths: list[str] = field(default_factory=list)
    started: float = 0.0
    roots: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    collector: str = ""
    submit_filesystem_domain: str = ""
    exec_filesystem_domain: str = ""

    def save(self) -> None:
        """Write the state to ``state.json`` in its state folder."""
        path = Path(self.state_dir) / "state.json"
        tmp = path.with_name(f"state.json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)  # a reader never sees half a file

    @classmethod
    def load(cls, state_dir: Path | None = None) -> PoolState | None:
        """The state saved in ``state_dir`` (default: the shared pool's), or None."""
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


def isolated_state_dir() -> Path:
    """Where the isolated pool keeps its state: beside the shared pool's folder, with
    ``-isolated`` added (``/var/lib/htcml/pool-isolated`` as root)."""
    base = default_state_dir()
    return base.with_name(base.name + "-isolated")


def chroot_env() -> dict[str, str]:
    """This process's environment without HTCondor settings: the daemons and tools in
    the root must read the root's own configuration, not a client's CONDOR_CONFIG."""
    return {k: v for k, v in os.environ.items()
            if k != "CONDOR_CONFIG" and not k.startswith("_CONDOR_")}


def run(cmd: list[str], *, check: bool = True, quiet: bool = True, **kw: object) -> str:
    """Run a command and return its output; a failure raises :class:`PoolError`.

    Commands run through ``chroot`` get :func:`chroot_env` unless ``env`` is given.
    """
    if cmd and cmd[0] == "chroot" and "env" not in kw:
        kw["env"] = chroot_env()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise PoolError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    if not quiet:
        print(proc.stdout, end="")
    return str(proc.stdout)


def say(msg: str) -> None:
    """Tell the user what the pool set-up is doing (on standard error)."""
    print(f"[htcml pool] {msg}", file=sys.stderr, flush=True)


def is_mounted(path: str) -> bool:
    """Whether something is mounted exactly at ``path``."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def interpreter_paths() -> list[str]:
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


def package_folder() -> str:
    """The folder holding the installed ``htcml_jupyter`` package (the shadow reads the
    job-side files, such as ``runner.py``, from there)."""
    return str(Path(__file__).resolve().parents[2])


def write_client_config(state: PoolState, token: str, *, condor_host: str = "127.0.0.1") -> None:
    """Write the client configuration and the job user's token into the state folder.

    Parameters
    ----------
    state
        The pool's state; its ``client_config`` is set to the file written.
    token
        An IDTOKEN for the job user, written (alone) to ``<state_dir>/tokens.d``.
    condor_host
        The collector's address, with a port when it is not 9618.
    """
    state_dir = Path(state.state_dir)
    tokens = state_dir / "tokens.d"
    tokens.mkdir(mode=0o700, parents=True, exist_ok=True)
    token_file = tokens / "htcml"
    # Written beside the folder, then renamed into it: a client reading the folder at
    # any moment finds the old token or the new one, never none and never half of one.
    tmp = state_dir / f".token.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable
    with os.fdopen(fd, "w") as f:                                     # by others
        f.write(token.strip() + "\n")
    os.replace(tmp, token_file)
    for old in tokens.iterdir():
        if old != token_file:
            old.unlink()  # a stale token from an earlier pool makes authentication fail
    config = state_dir / "condor_config"
    tmp_config = state_dir / f".condor_config.tmp{os.getpid()}"
    tmp_config.write_text(
        "# Client configuration for the htcml_jupyter pool (written by `htcml pool up`).\n"
        f"CONDOR_HOST = {condor_host}\n"
        "NETWORK_INTERFACE = 127.0.0.1\n"
        "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS, FS\n"
        f"SEC_TOKEN_DIRECTORY = {tokens}\n"
        f"HTCML_JOB_USER = {state.job_user}\n"
    )
    os.replace(tmp_config, config)
    state.client_config = str(config)


def prepare_root(root: Path) -> None:
    """What every Debian root needs before its ``condor_master`` starts: a ``/run/condor``
    the daemons own (else condor_procd respawns in a loop) and this host's name in
    ``/etc/hosts`` (else daemons cannot look themselves up)."""
    (root / "run/condor").mkdir(parents=True, exist_ok=True)
    run(["chroot", str(root), "chown", "condor:condor", "/run/condor"])
    hostname = socket.gethostname()
    hosts = root / "etc/hosts"
    if hostname not in hosts.read_text():
        with hosts.open("a") as f:
            f.write(f"127.0.1.1 {hostname}\n")


def write_settings(root: Path, text: str) -> bool:
    """Write the project's settings for the daemons in ``root`` (its
    ``/etc/condor/config.d/90-htcml``).

    Parameters
    ----------
    root
        A Debian root holding HTCondor.
    text
        The whole configuration text.

    Returns
    -------
    bool
        True when the file changed (a running pool then needs :func:`reconfig_root`).
    """
    path = root / "etc/condor/config.d/90-htcml"
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    tmp = path.with_name(f".90-htcml.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)  # a daemon rereading its configuration never sees half a file
    return True


def reconfig_root(root: Path) -> None:
    """Make the master running in ``root`` and its daemons reread their configuration.

    Nothing restarts and running jobs go on.  The master is addressed through its own
    address file, never looked up by host name (every root on this machine has the
    same one).  Settings read only at start-up (``NUM_CPUS``, the simulated GPUs) wait
    for the pool's next start.

    Parameters
    ----------
    root
        A Debian root whose ``condor_master`` is running.
    """
    chroot = ["chroot", str(root)]
    address_file = run([*chroot, "condor_config_val", "MASTER_ADDRESS_FILE"]).strip()
    try:
        address = (root / address_file.lstrip("/")).read_text().splitlines()[0]
    except (OSError, IndexError) as exc:
        raise PoolError(f"no master address in {root}{address_file}: is its pool "
                        "running? (`htcml pool up` starts it)") from exc
    say(f"applying the new settings in {root} (condor_reconfig)")
    run([*chroot, "condor_reconfig", "-addr", address])
