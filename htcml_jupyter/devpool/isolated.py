"""The project's isolated pool: an execute side that shares nothing with the notebook.

Real pools (CHTC, the OSPool) run jobs on machines that see neither the notebook's
interpreter nor its files: everything a job needs comes by file transfer.  This pool
is made the same way on one machine, as root, from copies of the shared pool's
Debian 13 root:

* the **submit** root runs the collector, negotiator and schedd on its own shared
  port (:data:`SUBMIT_PORT`, so it runs beside the shared pool on 9618).  It
  bind-mounts what a submit machine has -- ``/tmp``, ``/home``, ``$HTCML_HOME`` and
  the folder holding this package (the shadow sends ``runner.py`` from there) -- but
  not the Python interpreter;
* each **execute** root (``exec1``, ``exec2``, ...) runs only a startd, on ports
  :data:`EXEC_PORT`, :data:`EXEC_PORT` + 1, ..., and mounts nothing but itself,
  ``/proc``, ``/dev``, ``/sys`` and a private ``/dev/shm`` (see :mod:`.execroot`).  Its
  ``FileSystemDomain`` differs from the submit side's, so HTCondor transfers every
  file.  It keeps HTCondor's defaults: every job gets its own ``/tmp``, ``/var/tmp``
  and ``/dev/shm``.  Podman is its docker runtime, so container jobs run there too.

The daemons of different roots authenticate with the submit root's pool signing key
(copied into every execute root) and a token for ``condor@<UID_DOMAIN>``.  Clients use
``<state_dir>/condor_config`` with their own token.  Roots are stopped by process
(the master whose ``/proc/PID/root`` is that root), never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ..paths import htcml_home
from .common import (
    POOL_USER,
    TUNING,
    PoolError,
    PoolState,
    default_state_dir,
    interpreter_paths,
    is_mounted,
    isolated_state_dir,
    package_folder,
    prepare_root,
    reconfig_root,
    run,
    say,
    write_client_config,
    write_settings,
)
from .execroot import docker_settings, ensure_podman, mount_execute_root, unmount_root
from .rootfs import bind, ensure_rootfs, ensure_user, root_masters, stop_root, wait_ready

SUBMIT_PORT = 9718
EXEC_PORT = 9720
SUBMIT_DOMAIN = "submit.htcml"
EXEC_DOMAIN = "exec.htcml"
_READY = ".htcml-isolated-ready"
_DAEMON_TOKEN = "htcml-daemons"
# What a copied root must not keep from the root it was copied from: the queue, logs,
# sandboxes, sockets, the signing key and tokens (made anew for this pool), settings.
_RESET = ("var/spool/condor", "var/lib/condor/execute", "var/log/condor", "run/condor",
          "run/lock/condor", "etc/condor/passwords.d", "etc/condor/tokens.d")


def _source_root(state_dir: Path) -> Path:
    """A finished Debian root to copy: the shared pool's when it was built, else one
    built here."""
    shared = default_state_dir() / "rootfs"
    if (shared / ".htcml-ready").exists():
        return shared
    base = state_dir / "base"
    ensure_rootfs(base)
    return base


def _clone_root(source: Path, dest: Path, state_dir: Path) -> None:
    """Copy ``source`` to ``dest`` without anything mounted in it.

    A running pool's root has host folders bound inside (``/tmp``, the interpreter);
    on one filesystem ``cp --one-file-system`` would copy them too.  A plain (not
    recursive) read-only bind of the root shows only the root's own files.
    """
    view = state_dir / ".clone-view"
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    view.mkdir(parents=True, exist_ok=True)
    say(f"copying {source} to {dest}")
    run(["mount", "--bind", str(source), str(view)])
    try:
        run(["mount", "-o", "remount,ro,bind", str(view)])
        copy = subprocess.run(["cp", "-a", "--one-file-system", f"{view}/.", str(partial)],
                              capture_output=True, text=True)
        # The source pool may be running: its queue, logs and sandboxes change while
        # they are copied, and they are emptied below anyway.
        volatile = tuple(f"{view}/{rel}/" for rel in _RESET)
        problems = [line for line in copy.stderr.splitlines()
                    if not any(v in line for v in volatile)]
        if copy.returncode != 0 and problems:
            raise PoolError(f"copying {source} failed:\n" + "\n".join(problems[-20:]))
    finally:
        run(["umount", str(view)], check=False)
    view.rmdir()
    for rel in _RESET:
        folder = partial / rel
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    (partial / "etc/condor/config.d/90-htcml").unlink(missing_ok=True)
    _remove_empty_mount_points(partial)
    (partial / _READY).write_text("ok\n")
    partial.rename(dest)


def _remove_empty_mount_points(root: Path) -> None:
    """Remove the empty folders the shared pool made to bind host folders on (the
    interpreter's prefix, the work tree), so a job cannot even see their names."""
    keep = {"tmp", "home", "root", "proc", "dev", "run", "sys", "usr", "var", "etc"}
    candidates = {os.path.realpath(p)
                  for p in [str(htcml_home()), package_folder(), *interpreter_paths()]}
    shared = PoolState.load(default_state_dir())
    if shared is not None:
        candidates.update(shared.shared_paths)
    for path in sorted(candidates, key=len, reverse=True):
        folder = root / path.lstrip("/")
        while folder != root and folder.relative_to(root).as_posix() not in keep:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent


def _submit_config(num_cpus: int) -> str:
    return (
        "# Written by htcml_jupyter: the submit side of the isolated pool.\n"
        "DAEMON_LIST = MASTER COLLECTOR NEGOTIATOR SCHEDD\n"
        f"COLLECTOR_HOST = 127.0.0.1:{SUBMIT_PORT}\n"
        f"SHARED_PORT_PORT = {SUBMIT_PORT}\n"
        f"FILESYSTEM_DOMAIN = {SUBMIT_DOMAIN}\n"
        + TUNING.format(num_cpus=num_cpus)
    )


def _exec_config(name: str, port: int, num_cpus: int, docker: str = "") -> str:
    # MOUNT_UNDER_SCRATCH and MOUNT_PRIVATE_DEV_SHM keep HTCondor's defaults here.
    return (
        f"# Written by htcml_jupyter: execute node {name} of the isolated pool.\n"
        "DAEMON_LIST = MASTER STARTD\n"
        f"COLLECTOR_HOST = 127.0.0.1:{SUBMIT_PORT}\n"
        f"SHARED_PORT_PORT = {port}\n"
        f"FILESYSTEM_DOMAIN = {EXEC_DOMAIN}\n"
        f"MASTER_NAME = {name}\n"
        f"STARTD_NAME = {name}\n"
        + docker + TUNING.format(num_cpus=num_cpus)
    )


def _mount_submit(root: Path, mounts: list[str]) -> list[str]:
    """Mount what a submit machine sees; returns the host folders it shares."""
    proc_dir = root / "proc"
    if not is_mounted(str(proc_dir)):
        run(["mount", "-t", "proc", "proc", str(proc_dir)])
    mounts.append(str(proc_dir))
    bind("/dev", root, mounts, recursive=True)
    shared = ["/tmp", "/home", os.path.realpath(htcml_home())]
    for path in shared:
        Path(path).mkdir(parents=True, exist_ok=True)
    package = package_folder()
    if not any(package == s or package.startswith(s + "/") for s in shared):
        shared.append(package)
    for path in shared:
        bind(path, root, mounts, read_only=path == package)
    # An access point runs the notebook: the project code HTCondor starts there (DAGMan's
    # PRE/POST scripts, a sweep's watcher in the local universe) runs its interpreter.
    # Execute roots see none of it.
    for path in interpreter_paths():
        if not any(path == s or path.startswith(s + "/") for s in shared):
            bind(path, root, mounts, read_only=True)
    return shared


def _share_pool_key(submit: Path, execs: list[Path]) -> None:
    """Give every root the submit root's signing key and a token for the daemons."""
    key = submit / "etc/condor/passwords.d/POOL"
    deadline = time.time() + 30
    while not key.exists():
        if time.time() > deadline:
            raise PoolError(f"the submit root made no pool signing key ({key})")
        time.sleep(0.2)
    uid_domain = run(["chroot", str(submit), "condor_config_val", "UID_DOMAIN"]).strip()
    token_file = submit / "etc/condor/tokens.d" / _DAEMON_TOKEN
    if not token_file.exists():
        token = run(["chroot", str(submit), "condor_token_create", "-identity",
                     f"condor@{uid_domain}"])
        _write_secret(token_file, token.strip() + "\n")
        for pid in root_masters(str(submit)):
            os.kill(pid, signal.SIGHUP)  # the submit daemons read the new token
    for root in execs:
        _write_secret(root / "etc/condor/passwords.d/POOL", key.read_bytes())
        _write_secret(root / "etc/condor/tokens.d" / _DAEMON_TOKEN, token_file.read_bytes())


def _write_secret(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.chmod(0o600)
    tmp.rename(path)


def _wait_for_startds(submit: Path, names: list[str], timeout: float = 60) -> None:
    deadline = time.time() + timeout
    seen = ""
    while time.time() < deadline:
        seen = run(["chroot", str(submit), "condor_status", "-af", "Name"],
                   check=False)
        if all(f"@{name}@" in seen for name in names):
            return
        time.sleep(0.3)
    raise PoolError(f"the execute nodes {', '.join(names)} did not reach the collector "
                    f"within {timeout:.0f} s; it lists: {seen.split() or 'nothing'}")


def up_isolated(state_dir: Path | None = None, *, num_cpus: int = 8,
                exec_nodes: int | None = None) -> PoolState:
    """Start the isolated pool (or find it running) and record how to reach it.

    Parameters
    ----------
    state_dir
        Its state folder (default :func:`.common.isolated_state_dir`); the roots lie
        in ``submit``, ``exec1``, ``exec2``, ... inside it.
    num_cpus
        CPUs each execute node offers.
    exec_nodes
        How many execute nodes (roots) to run; node *i* uses port
        ``EXEC_PORT + i - 1``.  None keeps as many as are running (at least one);
        fewer than are running stops the extra ones.

    Returns
    -------
    PoolState
        Mode ``"isolated"``, with the client configuration, roots, ports, mounts and
        the two sides' ``FileSystemDomain``.
    """
    if os.geteuid() != 0:
        raise PoolError("the isolated pool is made of Debian roots and needs root")
    state_dir = state_dir or isolated_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    previous = PoolState.load(state_dir)
    running = [n for n in (previous.roots if previous else {}) if n != "submit"]
    if exec_nodes is None:
        exec_nodes = max(len(running), 1)
    if exec_nodes < 1:
        raise PoolError("the isolated pool needs at least one execute node")
    if previous is not None:
        _stop_extra_nodes(previous, exec_nodes)
    names = [f"exec{i}" for i in range(1, exec_nodes + 1)]
    roots = {"submit": state_dir / "submit", **{n: state_dir / n for n in names}}
    missing = [r for r in roots.values() if not (r / _READY).exists()]
    if missing:
        source = _source_root(state_dir)
        for root in missing:
            shutil.rmtree(root, ignore_errors=True)
            _clone_root(source, root, state_dir)
    uid = 0
    for root in roots.values():
        uid = ensure_user(root)
    ports = {"submit": SUBMIT_PORT, **{n: EXEC_PORT + i for i, n in enumerate(names)}}
    submit = roots["submit"]
    mounts: list[str] = []
    shared = _mount_submit(submit, mounts)
    if os.geteuid() == 0:
        home = htcml_home()
        # root's folder stays root's: jobs write only into the map folders given to them
        os.chown(home, 0, 0)
        home.chmod(0o755)
    prepare_root(submit)
    changed = write_settings(submit, _submit_config(num_cpus))
    if not root_masters(str(submit)):
        say(f"starting the submit side (collector on 127.0.0.1:{SUBMIT_PORT})")
        run(["chroot", str(submit), "condor_master"])
    elif changed:
        reconfig_root(submit)
    execs = [roots[n] for n in names]
    _share_pool_key(submit, execs)
    wait_ready(["chroot", str(submit)], condition="IsReady")
    for name in names:
        root = roots[name]
        if root_masters(str(root)) and not is_mounted(os.path.realpath(root)):
            say(f"restarting execute node {name} so its jobs get a private /tmp")
            stop_root(str(root))
            unmount_root(str(root))
        mount_execute_root(root, mounts)
        ensure_podman(root)
        prepare_root(root)
        changed = write_settings(root, _exec_config(name, ports[name], num_cpus,
                                                    docker_settings(root)))
        if not root_masters(str(root)):
            say(f"starting execute node {name} (port {ports[name]})")
            run(["chroot", str(root), "condor_master"])
        elif changed:
            reconfig_root(root)
    for name in names:
        wait_ready(["chroot", str(roots[name])])
    _wait_for_startds(submit, names)
    uid_domain = run(["chroot", str(submit), "condor_config_val", "UID_DOMAIN"]).strip()
    token = run(["chroot", str(submit), "condor_token_create", "-identity",
                 f"{POOL_USER}@{uid_domain}"])
    state = PoolState(mode="isolated", state_dir=str(state_dir), client_config="",
                      job_user=POOL_USER, job_uid=uid, rootfs=str(submit), mounts=mounts,
                      shared_paths=shared, started=time.time(),
                      roots={k: str(v) for k, v in roots.items()}, ports=ports,
                      collector=f"127.0.0.1:{SUBMIT_PORT}",
                      submit_filesystem_domain=SUBMIT_DOMAIN,
                      exec_filesystem_domain=EXEC_DOMAIN)
    write_client_config(state, token, condor_host=state.collector)
    state.save()
    return state


def _stop_extra_nodes(previous: PoolState, exec_nodes: int) -> None:
    """Stop the execute nodes beyond the first ``exec_nodes`` and undo their mounts."""
    wanted = {f"exec{i}" for i in range(1, exec_nodes + 1)}
    for name, root in previous.roots.items():
        if name == "submit" or name in wanted:
            continue
        say(f"stopping execute node {name}")
        stop_root(root)
        unmount_root(root)


def isolated_running(state_dir: Path | None = None) -> PoolState | None:
    """The isolated pool's recorded state when it is up, else None.

    Parameters
    ----------
    state_dir
        Its state folder (default :func:`.common.isolated_state_dir`).

    Returns
    -------
    PoolState or None
        The state when its client configuration exists and a master runs in every
        one of its roots.
    """
    state = PoolState.load(state_dir or isolated_state_dir())
    if state is None or state.mode != "isolated" or not Path(state.client_config).exists():
        return None
    if not all(root_masters(root) for root in state.roots.values()):
        return None
    return state


def down_isolated(state_dir: Path | None = None) -> bool:
    """Stop the isolated pool's masters (execute nodes first), end what is left in its
    roots and undo its mounts.  The shared pool is not touched.

    Parameters
    ----------
    state_dir
        Its state folder (default :func:`.common.isolated_state_dir`).

    Returns
    -------
    bool
        False when it was not up.
    """
    state_dir = state_dir or isolated_state_dir()
    state = PoolState.load(state_dir)
    if state is None or state.mode != "isolated":
        return False
    execs = [r for n, r in state.roots.items() if n != "submit"]
    for root in [*execs, state.rootfs]:
        stop_root(root)
    for root in execs:
        unmount_root(root)  # what podman mounted there too; the root's own bind last
    for target in reversed(state.mounts):
        if is_mounted(target):
            run(["umount", "-l", target], check=False)
    (state_dir / "state.json").unlink(missing_ok=True)
    return True
