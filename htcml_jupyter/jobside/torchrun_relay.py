"""What the nodes of an ``htc.torchrun`` run share through HTCondor: standard library only.

Small JSON files in the ``torchrun/`` folder of the run's folder (the jobs' Iwd),
written with chirp ``put`` and read with chirp ``fetch`` (HTCondor's pure-Python chirp
client travels with every job).  The notebook reads the same files from disk.
Shipped with every node next to ``torchrun_launch.py``.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

#: The folder, inside the run's folder (the jobs' Iwd), where the nodes meet.
RELAY_DIR = "torchrun"
#: The mode of every relay file in the run's folder: the job user's own.
RELAY_FILE_MODE = 0o600
#: Seconds between two looks for node 0's contact (and between abort checks).
POLL = 0.25


def contact_name(cluster: int) -> str:
    return f"{RELAY_DIR}/contact-{cluster}.json"


def node_name(cluster: int, node: int) -> str:
    return f"{RELAY_DIR}/node-{cluster}-{node}.json"


def abort_name(cluster: int) -> str:
    return f"{RELAY_DIR}/abort-{cluster}.json"


def restart_name(cluster: int, nonce: str) -> str:
    return f"{RELAY_DIR}/restart-{cluster}-{nonce}.json"


def read_ad(path: str | None) -> dict[str, str]:
    """``{attribute: value text}`` of a ClassAd file (the job's or the machine's)."""
    ad: dict[str, str] = {}
    try:
        with open(path or "", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(" = ")
                if sep:
                    ad[key.strip()] = value.strip().strip('"')
    except OSError:
        pass
    return ad


class Relay:
    """Small JSON files in the run's folder, read and written through chirp."""

    def __init__(self) -> None:
        self._client: Any = None

    def _chirp(self) -> Any:
        if self._client is None:
            try:
                from htcondor2.htchirp import HTChirp
            except ImportError:
                from htchirp import HTChirp  # shipped with the job
            client = HTChirp()
            client.connect()
            self._client = client
        return self._client

    def _call(self, action: str, *args: Any) -> Any:
        for attempt in (1, 2):
            try:
                return getattr(self._chirp(), action)(*args)
            except (OSError, EOFError):
                self._client = None
                if attempt == 2:
                    raise
        return None

    def put(self, remote: str, data: dict[str, Any]) -> None:
        """Write ``data`` as JSON to ``remote`` in the run's folder, mode 0600 there (the
        chirp default is 0777) and here."""
        local = f".htcml-relay-{os.getpid()}-{id(self)}.json"
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        try:
            self._call("put", local, remote, "wct", RELAY_FILE_MODE)
        finally:
            os.unlink(local)

    def get(self, remote: str) -> dict[str, Any] | None:
        """The file's JSON, or None while it does not exist (or is half written)."""
        local = f".htcml-relay-{os.getpid()}-{id(self)}-in.json"
        try:
            self._call("fetch", remote, local)
            with open(local) as f:
                found: dict[str, Any] = json.load(f)
            return found
        except (OSError, EOFError):
            raise
        except Exception:  # chirp's DoesntExist, or JSON cut short by a writer
            return None
        finally:
            if os.path.exists(local):
                os.unlink(local)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        port: int = s.getsockname()[1]
        return port


def gpu_info() -> dict[str, Any]:
    """The GPUs HTCondor gave this job, and the slot it runs in."""
    machine = read_ad(os.environ.get("_CONDOR_MACHINE_AD"))
    requested = read_ad(os.environ.get("_CONDOR_JOB_AD")).get("RequestGPUs", "0")
    # a job that asked for no GPU sees them hidden (an id like 10000), not assigned
    assigned = None if requested in ("0", "") else os.environ.get("_CONDOR_AssignedGPUs")
    return {"slot": machine.get("Name"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "assigned_gpus": assigned,
            "gpu_names": machine.get("GPUs_DeviceName") or machine.get("DeviceName"),
            "gpu_memory_mb": machine.get("GPUs_GlobalMemoryMb")}
