"""The project's pool as a personal HTCondor pool of the current, ordinary user
(``condor_master`` installed: Debian 13, Ubuntu 24.04, Binder)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .common import (
    ROOTFS_EXTRA,
    TUNING,
    PoolError,
    PoolState,
    run,
    say,
    write_client_config,
)

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


def up_native(state_dir: Path, num_cpus: int) -> PoolState:
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
        say("starting condor_master")
        run(["condor_master", "-pidfile", str(local / "run/master.pid")], env=env)
    _wait_native_ready(env, local / "log")
    collector, uid_domain, address_file = run(
        ["condor_config_val", "COLLECTOR_HOST", "UID_DOMAIN", "SCHEDD_ADDRESS_FILE"],
        env=env).split()
    schedd = run(["condor_status", "-schedd", "-af", "Name"], env=env).split()
    token = run(["condor_token_create", "-identity", f"{user}@{uid_domain}"], env=env)
    state = PoolState(mode="native", state_dir=str(state_dir), client_config="",
                      job_user=user, job_uid=os.getuid(), shared_paths=["/"],
                      started=time.time())
    write_client_config(state, token)
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


def down_native(state: PoolState) -> None:
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
