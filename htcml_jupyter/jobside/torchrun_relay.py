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


def node_address() -> str:
    """The address other nodes reach this one at: the IP address HTCondor itself uses
    for this machine (the machine ad's ``MyAddress``), else the host name's address."""
    sinful = read_ad(os.environ.get("_CONDOR_MACHINE_AD")).get("MyAddress", "")
    host = sinful.strip("<>").split("?", 1)[0].rsplit(":", 1)[0].strip("[]")
    if host:
        return host
    try:
        return str(socket.getaddrinfo(socket.gethostname(), None)[0][4][0])
    except OSError:
        return socket.gethostname()


def endpoint(address: str, port: int) -> str:
    """``address:port``, an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _listener(address: str, port: int) -> tuple[int, int]:
    """A socket listening on ``address:port`` only (a free port for 0); returns its
    descriptor, which the caller owns, and its port."""
    family, kind, proto, _, where = socket.getaddrinfo(address, port,
                                                       type=socket.SOCK_STREAM)[0]
    s = socket.socket(family, kind, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(where)
    s.listen(1024)
    bound = int(s.getsockname()[1])
    return s.detach(), bound


def free_port(address: str = "") -> int:
    """A port free on ``address`` (every interface when empty)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def run_torchrun_bound(address: str, argv: list[str]) -> None:
    """Run torchrun (``torch.distributed.run``) with ``argv`` so that every c10d store
    server it starts (the rendezvous store, the workers' shared store) listens on
    ``address`` alone rather than on every interface, which torch's ``TCPStore`` does
    and torchrun has no option against: each gets a socket already bound there
    (``master_listen_fd``; port 0 is a free port of ``address``)."""
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend
    from torch.distributed.run import main

    original = dist.TCPStore

    class BoundTCPStore(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("is_master") and kwargs.get("master_listen_fd") is None:
                port = int(kwargs.get("port", args[1] if len(args) > 1 else 0) or 0)
                kwargs["master_listen_fd"], port = _listener(address, port)
                if len(args) > 1:
                    args = (args[0], port, *args[2:])
                else:
                    kwargs["port"] = port
            super().__init__(*args, **kwargs)

    dist.TCPStore = BoundTCPStore  # type: ignore[misc]
    c10d_rendezvous_backend.TCPStore = BoundTCPStore  # type: ignore[misc]
    main(argv)


if __name__ == "__main__":  # python torchrun_relay.py ADDRESS [torchrun's arguments]
    import sys

    run_torchrun_bound(sys.argv[1], sys.argv[2:])


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
