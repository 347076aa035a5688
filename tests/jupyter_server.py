"""A throwaway JupyterLab server for browser tests.

It runs on 127.0.0.1 with a random token, its own root folder and its own Jupyter
and IPython folders (so nothing of the user's setup leaks in), offline (no news, no
update checks), with ``window.jupyterapp`` exposed to the page, in a new process
session.  :meth:`JupyterLab.stop` ends that whole process group and every kernel the
server started (kernels run in sessions of their own), always.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

try:
    from jupyter_server.auth.authorizer import Authorizer
except ImportError:  # the browser tests say how to install it
    Authorizer = object  # type: ignore[misc,assignment]

#: Settings that keep JupyterLab quiet and predictable in a test: no news toast,
#: every cell attached to the DOM.
_USER_SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


class ReadOnlyAuthorizer(Authorizer):
    """An ``Authorizer`` that lets an authenticated user read and nothing else
    (``--ServerApp.authorizer_class=tests.jupyter_server.ReadOnlyAuthorizer``)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return action == "read"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process now running."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces; the parent pid follows it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    tree = _children()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _start_time(pid: int) -> str | None:
    """The start time of a process (with its pid, an identity that survives pid reuse)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class JupyterLab:
    """One JupyterLab server; use as a context manager or call start() and stop()."""

    def __init__(self, base: Path, env: dict[str, str] | None = None,
                 startup_timeout: float = 60.0, args: list[str] | None = None):
        self.base = base
        self.extra_args = list(args or [])
        self.root_dir = base / "root"
        self.log_path = base / "jupyterlab.log"
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.token = secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        #: Leaders of the process groups to end: pid -> start time.
        self._groups: dict[int, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, relpath: str) -> str:
        """The page of a notebook (relative to the root folder), with no restored tabs."""
        return f"{self.url}/lab/tree/{relpath}?token={self.token}&reset"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def start(self) -> JupyterLab:
        dirs = {name: self.base / name.lower()
                for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                             "IPYTHONDIR")}
        for path in [self.root_dir, *dirs.values()]:
            path.mkdir(parents=True, exist_ok=True)
        settings_dir = dirs["JUPYTER_CONFIG_DIR"] / "lab" / "user-settings"
        for rel, values in _USER_SETTINGS.items():
            path = settings_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
        env.update({k: str(v) for k, v in dirs.items()})
        env["JUPYTERLAB_SETTINGS_DIR"] = str(settings_dir)
        env["JUPYTERLAB_WORKSPACES_DIR"] = str(self.base / "workspaces")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        self.port = _free_port()
        cmd = [sys.executable, "-m", "jupyterlab",
               "--no-browser", "--allow-root",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root_dir}",
               "--LabApp.expose_app_in_browser=True",
               "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--ServerApp.open_browser=False", *self.extra_args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root_dir, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._groups[self.proc.pid] = _start_time(self.proc.pid) or ""
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        status = f"{self.url}/api/status?token={self.token}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.proc.returncode} while "
                                   f"starting; its log ends:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(status, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"JupyterLab did not answer on {self.url} within "
                           f"{self.startup_timeout:.0f} s; its log ends:\n{self.log_tail()}")

    def remember_kernels(self) -> None:
        """Note the process groups of the kernels started so far (stop() ends them too)."""
        if self.proc is None:
            return
        for pid in _descendants(self.proc.pid):
            try:
                leader = os.getpgid(pid)
            except ProcessLookupError:
                continue
            if leader not in self._groups:
                self._groups[leader] = _start_time(leader) or ""

    def _signal_groups(self, sig: int) -> None:
        """Signal each remembered group that is certainly still ours.

        The server's group is safe while the server is not reaped (its zombie keeps the
        group id); a kernel's group only while its leader is the process it was.
        """
        assert self.proc is not None
        for leader, started in self._groups.items():
            if leader != self.proc.pid and _start_time(leader) != started:
                continue  # gone, and the pid may belong to someone else now
            try:
                os.killpg(leader, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _all_gone(self) -> bool:
        assert self.proc is not None
        try:  # WNOWAIT: leave the server unreaped, so its pid and group id stay ours
            exited = os.waitid(os.P_PID, self.proc.pid,
                               os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            exited = True
        kernels = [p for p, t in self._groups.items()
                   if p != self.proc.pid and t and _start_time(p) == t]
        return exited and not kernels

    def stop(self) -> None:
        """End the server, its kernels and everything they started; idempotent."""
        if self.proc is None:
            return
        self.remember_kernels()
        self._signal_groups(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not self._all_gone() and time.monotonic() < deadline:
            time.sleep(0.1)
        # Whatever is left (a kernel that ignored SIGTERM, something a kernel started).
        self._signal_groups(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
