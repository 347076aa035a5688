"""Functions the fault tests map (pickled by value, as this folder is not installed), and
the tools that disturb the project's pool from outside: daemons, starters, mounts."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from htcml_jupyter import devpool

EPOCHS = 6


# ----------------------------------------------------------------------------- job side


def sleep_fn(x: int, t: float = 0.0) -> int:
    """Sleep ``t`` seconds, then give ``x * x``."""
    import time

    time.sleep(t)
    return x * x


def blob_of(x: int, size: int = 400_000) -> tuple[int, bytes]:
    """``(x, size incompressible bytes that depend only on x)``."""
    import random

    return x, random.Random(x).randbytes(size)


def slow_blob_of(x: int, size: int = 400_000, slow_from: int = 0, t: float = 0.0
                 ) -> tuple[int, bytes]:
    """:func:`blob_of`, after ``t`` seconds for the items from ``slow_from`` on."""
    import time

    if x >= slow_from:
        time.sleep(t)
    return blob_of(x, size)


def expected_blob(x: int, size: int = 400_000) -> tuple[int, bytes]:
    import random

    return x, random.Random(x).randbytes(size)


def train_epochs(x: int, epochs: int = EPOCHS, pause: float = 1.0) -> dict[str, Any]:
    """``epochs`` epochs of ``pause`` seconds each, saving a checkpoint after every epoch.

    The state records the item it belongs to, every epoch it holds (in order) and how
    many times the item was started; ``total`` is ``x * (1 + 2 + ... + epochs)``."""
    import time

    import htcml_jupyter as htc

    ckpt = htc.checkpoint(every=1000)
    state = ckpt.restore()
    if state is None:
        state = {"input": x, "epochs": [], "total": 0, "starts": 1}
    elif state["input"] != x:
        raise RuntimeError(f"item {x} restored the state of item {state['input']}")
    else:
        state["starts"] += 1
    for epoch in range(len(state["epochs"]), epochs):
        htc.report(step=epoch, item=float(x))
        time.sleep(pause)
        state["epochs"].append(epoch)
        state["total"] += x * (epoch + 1)
        ckpt.save(state, step=epoch)
    return dict(state)


def expected_total(x: int, epochs: int = EPOCHS) -> int:
    return x * sum(range(1, epochs + 1))


#: The module a result of :func:`result_only_the_job_can_read` names; it exists only in
#: the job's process.
JOB_ONLY_MODULE = "htcml_module_only_in_the_job"


def result_only_the_job_can_read(x: int, bad: int = 2) -> object:
    """``x * 10``, except for item ``bad``: an object of a class that pickles by reference
    to a module made in the job (so the notebook cannot unpickle it)."""
    if x != bad:
        return x * 10
    import sys
    import types

    module = types.ModuleType(JOB_ONLY_MODULE)

    class OnlyInTheJob:
        def __init__(self, value: int):
            self.value = value

    OnlyInTheJob.__module__ = module.__name__
    OnlyInTheJob.__qualname__ = "OnlyInTheJob"
    module.OnlyInTheJob = OnlyInTheJob  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    return OnlyInTheJob(x)


# ----------------------------------------------------------------------------- pool side


def rootfs() -> str:
    """The Debian root the project's pool runs in."""
    state = devpool.running_state()
    assert state is not None and state.rootfs, "the project's pool (rootfs mode) is not up"
    return state.rootfs


def in_root(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run an HTCondor tool inside the pool's root (no client configuration leaks in)."""
    return subprocess.run(["chroot", rootfs(), *command], capture_output=True, text=True,
                          env=devpool.chroot_env(), timeout=timeout)


def root_pids(comm: str) -> list[int]:
    """Processes named ``comm`` that run inside the pool's root."""
    target = os.path.realpath(rootfs())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if (Path(f"/proc/{pid}/comm").read_text().strip() == comm
                    and os.readlink(f"/proc/{pid}/root") == target):
                found.append(int(pid))
        except OSError:
            continue
    return found


def _children(pid: int) -> list[int]:
    out = []
    for child in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(child))
    return out


def starters_of(map_name: str) -> dict[int, str]:
    """``{pid: job id}`` of the ``condor_starter`` processes in the root that run a job of
    ``map_name`` (its runner has started; the job ad in the sandbox names the map)."""
    found = {}
    for starter in root_pids("condor_starter"):
        for child in _children(starter):
            try:
                if b"jobside.pyz" not in Path(f"/proc/{child}/cmdline").read_bytes():
                    continue  # still transferring files, or not a job of ours
                sandbox = os.readlink(f"/proc/{child}/cwd")  # a path on this host
                ad = Path(sandbox, ".job.ad").read_text()
            except OSError:
                continue
            if f'HtcmlMap = "{map_name}"' in ad:
                cluster = re.search(r"^ClusterId = (\d+)$", ad, re.M)
                proc = re.search(r"^ProcId = (\d+)$", ad, re.M)
                if cluster and proc:
                    found[starter] = f"{cluster.group(1)}.{proc.group(1)}"
    return found


def wait_for_schedd(old_pids: set[int], timeout: float = 90) -> None:
    """Wait until a schedd other than ``old_pids`` runs in the root and answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = set(root_pids("condor_schedd"))
        if pids and not pids & old_pids and in_root("condor_q", "-totals").returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"the schedd did not come back within {timeout} s")


def wait_for_collector(timeout: float = 90) -> None:
    """Wait until the collector answers and the startd and the schedd have advertised
    themselves again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        startds = in_root("condor_status", "-af", "Name")
        schedds = in_root("condor_status", "-schedd", "-af", "Name")
        if all(out.returncode == 0 and out.stdout.strip() for out in (startds, schedds)):
            return
        time.sleep(0.5)
    raise AssertionError(f"the collector did not come back within {timeout} s")


def mount_small_tmpfs(path: Path, size: str) -> None:
    """Mount a tmpfs of ``size`` at ``path``, and the same one at ``path`` inside the
    pool's root (mounts do not propagate into the root's bind of /tmp)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(path)], check=True)
    inside = Path(rootfs() + str(path))
    subprocess.run(["mount", "--bind", str(path), str(inside)], check=True)


def fill_up(path: Path) -> int:
    """Write zeros to ``path`` until its file system has no space left (in blocks of
    64 KB, then of one page); returns how many bytes that took."""
    written = 0
    with path.open("wb", buffering=0) as f:
        for block in (bytes(64 * 1024), bytes(4096)):
            while True:
                try:
                    written += f.write(block) or 0
                except OSError:
                    break
    return written


def unmount_small_tmpfs(path: Path) -> None:
    """Undo :func:`mount_small_tmpfs` (lazily when something still holds a file open)."""
    for target in (rootfs() + str(path), str(path)):
        if subprocess.run(["umount", target], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", target], capture_output=True)
