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
import pwd
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .paths import htcml_home

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


def _run(cmd: list[str], *, check: bool = True, quiet: bool = True, **kw: object) -> str:
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


# --------------------------------------------------------------------------- rootfs


def _ensure_rootfs(rootfs: Path) -> None:
    marker = rootfs / ".htcml-ready"
    if marker.exists():
        return
    if shutil.which("debootstrap") is None:
        _say("installing debootstrap")
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "install", "-y", "-qq", "debootstrap"],
             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not (rootfs / "usr/bin").exists():
        _say(f"building a Debian {ROOTFS_SUITE} root in {rootfs} (about 30 s)")
        partial = rootfs.with_name(rootfs.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        _run(["debootstrap", "--variant=minbase", ROOTFS_SUITE, str(partial)])
        partial.rename(rootfs)
    _say("installing minicondor in the root (about 20 s)")
    shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["chroot", str(rootfs), "apt-get", "update", "-qq"], env=env)
    _run(["chroot", str(rootfs), "apt-get", "install", "-y", "-qq",
          "--no-install-recommends", "minicondor"], env=env)
    marker.write_text("ok\n")


def _ensure_user(rootfs: Path | None) -> int:
    """The ordinary user jobs run as, with the same uid on the host and in the root."""
    try:
        uid = pwd.getpwnam(POOL_USER).pw_uid
    except KeyError:
        _run(["useradd", "--uid", str(POOL_UID), "--user-group", "--no-create-home",
              "--shell", "/usr/sbin/nologin", POOL_USER])
        uid = pwd.getpwnam(POOL_USER).pw_uid
    if rootfs is not None:
        inside = _run(["chroot", str(rootfs), "getent", "passwd", POOL_USER], check=False)
        if not inside.strip():
            _run(["chroot", str(rootfs), "useradd", "--uid", str(uid), "--user-group",
                  "--no-create-home", "--shell", "/usr/sbin/nologin", POOL_USER])
    return uid


def _bind(source: str, rootfs: Path, mounts: list[str], *, read_only: bool = False,
          recursive: bool = False) -> None:
    target = rootfs / source.lstrip("/")
    if _is_mounted(str(target)):
        if str(target) not in mounts:
            mounts.append(str(target))
        return
    if os.path.isdir(source):
        target.mkdir(parents=True, exist_ok=True)
        # Let the job user walk through folders we had to create (e.g. /root).
        parent = target.parent
        while parent != rootfs and parent.stat().st_mode & 0o011 != 0o011:
            parent.chmod(parent.stat().st_mode | 0o711)
            parent = parent.parent
    _run(["mount", "--rbind" if recursive else "--bind", source, str(target)])
    if recursive:
        _run(["mount", "--make-rslave", str(target)])
    if read_only:
        _run(["mount", "-o", "remount,ro,bind", str(target)])
    mounts.append(str(target))


def _up_rootfs(state_dir: Path, num_cpus: int) -> PoolState:
    if os.geteuid() != 0:
        raise PoolError("starting the pool in a Debian root needs root; install HTCondor "
                        "(apt-get install minicondor) or run `htcml pool up` as root")
    rootfs = state_dir / "rootfs"
    _ensure_rootfs(rootfs)
    uid = _ensure_user(rootfs)
    mounts: list[str] = []
    proc_dir = rootfs / "proc"
    if not _is_mounted(str(proc_dir)):
        _run(["mount", "-t", "proc", "proc", str(proc_dir)])
    mounts.append(str(proc_dir))
    _bind("/dev", rootfs, mounts, recursive=True)
    shm = rootfs / "dev/shm"
    shared = ["/tmp", "/home", str(htcml_home())]
    for path in shared:
        Path(path).mkdir(parents=True, exist_ok=True)
        _bind(path, rootfs, mounts)
    for path in _interpreter_paths():
        if not any(path == s or path.startswith(s + "/") for s in shared):
            _bind(path, rootfs, mounts, read_only=True)
    if not os.access(shm, os.W_OK):
        raise PoolError(f"{shm} is not writable inside the root")
    home = htcml_home()
    if os.geteuid() == 0:
        os.chown(home, uid, uid)
        home.chmod(0o755)
    run_condor = rootfs / "run/condor"
    run_condor.mkdir(parents=True, exist_ok=True)
    _run(["chroot", str(rootfs), "chown", "condor:condor", "/run/condor"])
    hostname = socket.gethostname()
    hosts = rootfs / "etc/hosts"
    if hostname not in hosts.read_text():
        with hosts.open("a") as f:
            f.write(f"127.0.1.1 {hostname}\n")
    config_d = rootfs / "etc/condor/config.d"
    (config_d / "90-htcml").write_text(TUNING.format(num_cpus=num_cpus) + ROOTFS_EXTRA)
    chroot = ["chroot", str(rootfs)]
    if not _master_running(chroot):
        _say("starting condor_master")
        _run([*chroot, "condor_master"])
    _wait_ready(chroot)
    token = _run([*chroot, "condor_token_create", "-identity", f"{POOL_USER}@{hostname}"])
    state = PoolState(mode="rootfs", state_dir=str(state_dir), client_config="",
                      job_user=POOL_USER, job_uid=uid, rootfs=str(rootfs), mounts=mounts,
                      shared_paths=[*shared, *_interpreter_paths()], started=time.time())
    _write_client_config(state, token)
    return state


def _kill_chrooted(rootfs: str) -> None:
    """End every process left running inside the root (a daemon that ignored condor_off)."""
    target = os.path.realpath(rootfs)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root") == target:
                os.kill(int(pid), 9)
        except OSError:
            continue


def _master_running(prefix: list[str]) -> bool:
    out = _run([*prefix, "condor_who", "-quick"], check=False)
    return 'MASTER = "Alive"' in out


def _wait_ready(prefix: list[str], timeout: float = 90) -> None:
    proc = subprocess.run([*prefix, "condor_who", f"-wait:{int(timeout)}",
                           'IsReady && STARTD_State =?= "Ready"'],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise PoolError(f"the pool did not become ready within {timeout:.0f} s:\n"
                        f"{proc.stdout[-1000:]}{proc.stderr[-1000:]}")


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


# --------------------------------------------------------------------------- native


def _up_native(state_dir: Path, num_cpus: int) -> PoolState:
    if os.geteuid() == 0:
        raise PoolError("a native pool runs as an ordinary user; run `htcml pool up` as "
                        "that user")
    local = state_dir / "local"
    for sub in ("log", "spool", "execute", "lock", "run", "config.d"):
        (local / sub).mkdir(parents=True, exist_ok=True)
    config = state_dir / "condor_config"
    user = pwd.getpwuid(os.getuid()).pw_name
    config.write_text(
        "# Personal pool for htcml_jupyter (written by `htcml pool up`).\n"
        "use ROLE : Personal\n"
        "use SECURITY : user_based\n"
        f"LOCAL_DIR = {local}\n"
        "LOCK = $(LOCAL_DIR)/lock\n"
        "RUN = $(LOCAL_DIR)/run\n"
        "CONDOR_HOST = 127.0.0.1\n"
        "NETWORK_INTERFACE = 127.0.0.1\n"
        "BIND_ALL_INTERFACES = False\n"
        "SEC_DEFAULT_AUTHENTICATION_METHODS = FS, IDTOKENS\n"
        f"ALLOW_ADMINISTRATOR = {user}@$(UID_DOMAIN) $(ALLOW_ADMINISTRATOR)\n"
        f"ALLOW_DAEMON = {user}@$(UID_DOMAIN) $(ALLOW_DAEMON)\n"
        f"LOCAL_CONFIG_DIR = {local / 'config.d'}\n"
        "USE_PID_NAMESPACES = False\n"
        f"HTCML_JOB_USER = {user}\n"
        + TUNING.format(num_cpus=num_cpus)
    )
    env = {**os.environ, "CONDOR_CONFIG": str(config)}
    if not _master_running_env(env):
        _say("starting condor_master")
        subprocess.run(["condor_master"], env=env, check=True)
    proc = subprocess.run(["condor_who", "-wait:90", 'IsReady && STARTD_State =?= "Ready"'],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PoolError(f"the pool did not become ready:\n{proc.stdout}{proc.stderr}")
    return PoolState(mode="native", state_dir=str(state_dir), client_config=str(config),
                     job_user=user, job_uid=os.getuid(), shared_paths=["/"],
                     started=time.time())


def _master_running_env(env: dict[str, str]) -> bool:
    out = subprocess.run(["condor_who", "-quick"], env=env, capture_output=True, text=True)
    return 'MASTER = "Alive"' in out.stdout


# --------------------------------------------------------------------------- API


def up(state_dir: Path | None = None, *, num_cpus: int = 8) -> PoolState:
    """Start the project's pool (or find it running) and record how to reach it."""
    state_dir = state_dir or default_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    if shutil.which("condor_master") and os.geteuid() != 0:
        state = _up_native(state_dir, num_cpus)
    else:
        state = _up_rootfs(state_dir, num_cpus)
    state.save()
    return state


def down(state_dir: Path | None = None) -> bool:
    """Stop the project's pool and undo its mounts; False when it was not up."""
    state_dir = state_dir or default_state_dir()
    state = PoolState.load(state_dir)
    if state is None:
        return False
    if state.mode == "rootfs":
        chroot = ["chroot", state.rootfs]
        if _master_running(chroot):
            _run([*chroot, "condor_off", "-master"], check=False)
            deadline = time.time() + 30
            while time.time() < deadline and _master_running(chroot):
                time.sleep(0.5)
        _kill_chrooted(state.rootfs)
        for target in reversed(state.mounts):
            if _is_mounted(target):
                _run(["umount", "-l", target], check=False)
    else:
        env = {**os.environ, "CONDOR_CONFIG": state.client_config}
        subprocess.run(["condor_off", "-master"], env=env, capture_output=True)
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
