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


# A personal pool: every daemon runs as the current user, and so do the jobs.  The
# daemons read local/condor_config; clients (the notebook's htcondor2 bindings, the
# command-line tools) read the client configuration ``condor_config`` beside it and
# authenticate with a token for the user.  Daemons among themselves use FS (a file in
# /tmp); a client may use the PyPI bindings, whose FS does not work with older daemons
# ("Directory name doesn't match server's network address"), hence the token.
_NATIVE_INHERIT = ("RELEASE_DIR", "BIN", "SBIN", "LIB", "LIBEXEC", "INCLUDE", "SHARE", "ETC")
_NATIVE_DIRS = ("log", "spool", "execute", "lock", "run", "config.d", "cred_dir",
                "passwords.d", "tokens.d")


def _native_release_paths(config: Path) -> dict[str, str]:
    """Where the installed HTCondor keeps its programs, from the system configuration.

    The personal configuration does not read the system one (whose security settings
    name ``condor@`` and root), so it copies these paths: HTCondor's built-in defaults
    (e.g. ``LIBEXEC = /usr/libexec``) do not match the Debian and Ubuntu packages.
    """
    env = dict(os.environ)
    if os.path.realpath(env.get("CONDOR_CONFIG", "")) in (
            os.path.realpath(config), os.path.realpath(config.parent.parent / "condor_config")):
        del env["CONDOR_CONFIG"]
    paths: dict[str, str] = {}
    for key in _NATIVE_INHERIT:
        proc = subprocess.run(["condor_config_val", key], env=env, capture_output=True,
                              text=True)
        value = proc.stdout.strip()
        if proc.returncode == 0 and value and "\n" not in value:
            paths[key] = value
    if "LIBEXEC" not in paths:
        master = shutil.which("condor_master") or "/usr/sbin/condor_master"
        release = os.path.dirname(os.path.dirname(os.path.realpath(master)))
        paths.setdefault("RELEASE_DIR", release)
        for guess in ("libexec/condor", "lib/condor/libexec", "libexec"):
            if os.path.exists(os.path.join(release, guess, "condor_shared_port")):
                paths["LIBEXEC"] = os.path.join(release, guess)
                break
    return paths


def _native_env(config: Path) -> dict[str, str]:
    """The environment for HTCondor's tools: this configuration, and the sbin folders
    (condor_master lies in /usr/sbin, not on an ordinary Debian user's PATH)."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    path += [p for p in ("/usr/sbin", "/sbin") if p not in path]
    return {**os.environ, "CONDOR_CONFIG": str(config), "PATH": os.pathsep.join(path)}


def _native_port(daemon_config: Path) -> int:
    """The collector's port: the one used before when it is still free (so clients that
    read the old configuration keep working), else any free one."""
    try:
        previous = int(daemon_config.read_text().split("COLLECTOR_HOST = $(CONDOR_HOST):")[1]
                       .split()[0])
    except (OSError, IndexError, ValueError):
        previous = 0
    for port in (previous, 0) if previous else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the collector binds it: connections in TIME_WAIT do not count.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise PoolError("no free TCP port on 127.0.0.1 for the pool's collector")


def _native_config(local: Path, user: str, num_cpus: int, paths: dict[str, str],
                   port: int) -> str:
    inherited = "".join(f"{k} = {v}\n" for k, v in paths.items())
    return (
        f"# Personal pool for htcml_jupyter (written by `htcml pool up`): the daemons\n"
        f"# and the jobs run as {user}.\n"
        + inherited
        + "use ROLE : Personal\n"
        f"LOCAL_DIR = {local}\n"
        "LOG = $(LOCAL_DIR)/log\n"
        "SPOOL = $(LOCAL_DIR)/spool\n"
        "EXECUTE = $(LOCAL_DIR)/execute\n"
        "LOCK = $(LOCAL_DIR)/lock\n"
        "RUN = $(LOCAL_DIR)/run\n"
        "CRED_STORE_DIR = $(LOCAL_DIR)/cred_dir\n"
        "SEC_PASSWORD_DIRECTORY = $(LOCAL_DIR)/passwords.d\n"
        "SEC_TOKEN_SYSTEM_DIRECTORY = $(LOCAL_DIR)/tokens.d\n"
        "LOCAL_CONFIG_FILE =\n"
        "LOCAL_CONFIG_DIR = $(LOCAL_DIR)/config.d\n"
        "MAIL = /bin/true\n"
        "SENDMAIL = /bin/true\n"
        "# Loopback only, on a port that was free (a system pool may hold 9618).\n"
        "CONDOR_HOST = 127.0.0.1\n"
        f"COLLECTOR_HOST = $(CONDOR_HOST):{port}\n"
        "NETWORK_INTERFACE = 127.0.0.1\n"
        "BIND_ALL_INTERFACES = False\n"
        "USE_SHARED_PORT = False\n"
        "# Only this user may write, run daemons or administer.\n"
        "use SECURITY : user_based\n"
        "SEC_DEFAULT_AUTHENTICATION_METHODS = FS, IDTOKENS\n"
        f"HTCML_SELF = {user}@$(UID_DOMAIN) {user}@$(FULL_HOSTNAME)\n"
        "ALLOW_ADMINISTRATOR = $(HTCML_SELF)\n"
        "ALLOW_DAEMON = $(HTCML_SELF)\n"
        "ALLOW_NEGOTIATOR = $(HTCML_SELF)\n"
        "ALLOW_WRITE = $(HTCML_SELF)\n"
        "ALLOW_READ = *\n"
        "# Needed inside a chroot (the starter cannot make namespaces there); harmless\n"
        "# elsewhere, as an ordinary user's starter makes none.\n"
        + ROOTFS_EXTRA
        + f"HTCML_JOB_USER = {user}\n"
        + TUNING.format(num_cpus=num_cpus)
    )


def _up_native(state_dir: Path, num_cpus: int) -> PoolState:
    if os.geteuid() == 0:
        raise PoolError("a native pool runs as an ordinary user; run `htcml pool up` as "
                        "that user")
    local = state_dir / "local"
    daemon_config = local / "condor_config"
    user = pwd.getpwuid(os.getuid()).pw_name
    env = _native_env(daemon_config)
    if not (daemon_config.exists() and _master_running_env(env)):
        for sub in _NATIVE_DIRS:
            mode = 0o700 if sub in ("cred_dir", "passwords.d", "tokens.d") else 0o755
            (local / sub).mkdir(mode=mode, parents=True, exist_ok=True)
        for stale in (local / "log").glob(".*_address*"):
            stale.unlink()
        daemon_config.write_text(_native_config(
            local, user, num_cpus, _native_release_paths(daemon_config),
            _native_port(daemon_config)))
        _say("starting condor_master")
        _run(["condor_master", "-pidfile", str(local / "run/master.pid")], env=env)
    _wait_native_ready(env, local / "log")
    collector, uid_domain, address_file = _run(
        ["condor_config_val", "COLLECTOR_HOST", "UID_DOMAIN", "SCHEDD_ADDRESS_FILE"],
        env=env).split()
    schedd = _run(["condor_status", "-schedd", "-af", "Name"], env=env).split()
    token = _run(["condor_token_create", "-identity", f"{user}@{uid_domain}"], env=env)
    state = PoolState(mode="native", state_dir=str(state_dir), client_config="",
                      job_user=user, job_uid=os.getuid(), shared_paths=["/"],
                      started=time.time())
    _write_client_config(state, token)
    with open(state.client_config, "a") as f:
        # The schedd of a personal pool is named user@host: tell clients where it is.
        f.write(f"COLLECTOR_HOST = {collector}\n"
                f"SCHEDD_ADDRESS_FILE = {address_file}\n"
                + (f"SCHEDD_NAME = {schedd[0]}\n" if schedd else ""))
    return state


def _wait_native_ready(env: dict[str, str], log_dir: Path, timeout: float = 90) -> None:
    """Wait until the startd offers its slots and the schedd answers."""
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        slots = subprocess.run(["condor_status", "-af", "Name", "State"], env=env,
                               capture_output=True, text=True)
        queue = subprocess.run(["condor_q", "-totals"], env=env, capture_output=True,
                               text=True)
        if slots.returncode == 0 and "Unclaimed" in slots.stdout and queue.returncode == 0:
            return
        last = (slots.stdout + slots.stderr + queue.stderr)[-1000:]
        time.sleep(0.5)
    logs = ""
    for name in ("MasterLog", "CollectorLog", "StartLog", "SchedLog"):
        try:
            tail = (log_dir / name).read_text().splitlines()[-8:]
        except OSError:
            continue
        logs += f"--- {name}\n" + "\n".join(tail) + "\n"
    raise PoolError(f"the personal pool did not become ready within {timeout:.0f} s:\n"
                    f"{last}\n{logs}")


def _master_running_env(env: dict[str, str]) -> bool:
    out = subprocess.run(["condor_who", "-quick"], env=env, capture_output=True, text=True)
    return 'MASTER = "Alive"' in out.stdout


def _down_native(state: PoolState) -> None:
    """Stop a personal pool: ask the master to shut down, then end it if it lingers."""
    local = Path(state.state_dir) / "local"
    env = _native_env(local / "condor_config")
    subprocess.run(["condor_off", "-fast", "-master"], env=env, capture_output=True)
    pid_file = local / "run/master.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = 0

    def alive() -> bool:
        if pid:
            try:
                return Path(f"/proc/{pid}/comm").read_text().strip() == "condor_master"
            except OSError:
                return False
        return _master_running_env(env)

    for sig, wait in ((0, 30.0), (3, 10.0), (9, 0.0)):  # wait; SIGQUIT: fast; SIGKILL
        if not alive():
            break
        if sig:
            if not pid:
                break
            os.kill(pid, sig)
        deadline = time.time() + wait
        while time.time() < deadline and alive():
            time.sleep(0.3)
    pid_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------- API


def up(state_dir: Path | None = None, *, num_cpus: int = 8) -> PoolState:
    """Start the project's pool (or find it running) and record how to reach it."""
    state_dir = state_dir or default_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    sbin_path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    if shutil.which("condor_master", path=sbin_path) and os.geteuid() != 0:
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
        _down_native(state)
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
