"""Execute-side launcher of one node of ``htc.torchrun``: standard library only.

Usage (what the submit description runs, in front of the runner's own arguments)::

    python torchrun_launch.py --nodes N --procs P --join-timeout T -- \\
        jobside.pyz FUNCTION_FILE INPUT_FILE OUTCOME_FILE

Every node of a run is one job of one cluster; its input file holds the items of its
processes (``node * P + local_rank``).  Node 0 picks a free port and publishes
``host:port`` through HTCondor: chirp ``put`` of a contact file into the job's Iwd (the
run's folder on the submit side).  The other nodes poll for that file with chirp
``fetch`` every 0.25 s.  Each node then starts ``torchrun`` (c10d rendezvous,
``--max-restarts 0``), which starts this file again once per process (``--worker``):
each process runs the runner on its one item and writes its own outcome file, and the
node merges them into ``OUTCOME_FILE`` when torchrun ends.  Nothing connects to the
notebook.

Files in the Iwd's ``torchrun/`` folder, all written through chirp:

* ``contact-C.json``: node 0's ``host``, ``port`` and a ``nonce`` per rendezvous;
* ``node-C-K.json``: node K's host, slot, GPUs and ``{item: global rank}``;
* ``abort-C.json``: a node whose ranks failed: every other node stops its torchrun;
* ``restart-C-NONCE.json``: a node evicted (or spooling a checkpoint) ends rendezvous
  NONCE: the others start torchrun again with node 0's next contact, and every process
  restores from its last ``htc.checkpoint()`` save.

Exit status: 0 every rank succeeded; 3 a rank failed or the node stopped because
another failed (the outcome says which); 4 torch is missing; 85 a rank spooled a
checkpoint (HTCondor restarts this node).
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
from typing import Any

if __package__:  # imported from the installed package
    from . import runner, wire
    from .torchrun_relay import (
        POLL,
        Relay,
        abort_name,
        contact_name,
        endpoint,
        free_port,
        gpu_info,
        node_address,
        node_name,
        read_ad,
        restart_name,
    )
else:  # run as a script in the job's folder, next to the job side's archive
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "jobside.pyz"))
    import runner  # type: ignore[no-redef]
    import wire  # type: ignore[no-redef]
    from torchrun_relay import (  # type: ignore[no-redef]
        POLL,
        Relay,
        abort_name,
        contact_name,
        endpoint,
        free_port,
        gpu_info,
        node_address,
        node_name,
        read_ad,
        restart_name,
    )

#: Seconds a node whose torchrun failed waits for a restart note before it calls the
#: failure its own.
RESTART_GRACE = 1.5
#: Error type of the ranks of a node stopped because another node failed.
RANK_STOPPED = "htcml_jupyter.RankStopped"
#: Error type of every rank of a node whose Python has no torch.
TORCH_MISSING = "htcml_jupyter.TorchMissing"


class RankCall:
    """What the runner calls in each process: the user's function, without the item
    argument a map would pass (the rank comes from ``torch.distributed``)."""

    def __init__(self, function: Any):
        self.function = function
        self.__name__ = getattr(function, "__name__", "train")
        self.__module__ = getattr(function, "__module__", __name__)

    def __call__(self, rank: int, **kwargs: Any) -> Any:
        return self.function(**kwargs)


class Stopped(Exception):
    """SIGTERM: the job is evicted or removed."""


def _on_term(signum: int, frame: Any) -> None:
    raise Stopped()


class Node:
    """One node of a run: rendezvous through the relay, torchrun, merged outcome."""

    def __init__(self, nodes: int, procs: int, join_timeout: float, input_file: str,
                 outcome_file: str, function_file: str):
        self.nodes, self.procs, self.join_timeout = nodes, procs, join_timeout
        self.function_file, self.input_file, self.outcome_file = (
            function_file, input_file, outcome_file)
        with open(input_file, "rb") as f:
            header = runner.read_header(f)
        span = header.get("span")  # [first, count], or the list of items
        self.items: list[int] = (list(range(int(span[0]), int(span[0]) + int(span[1])))
                                 if span is not None else list(header.get("items", [])))
        self.node = self.items[0] // procs
        self.cluster = int(read_ad(os.environ.get("_CONDOR_JOB_AD")).get("ClusterId", "0"))
        self.host = socket.gethostname()
        self.address = node_address()  # where this node's c10d stores listen, alone
        self.relay = Relay()
        self.nonce = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.ranks: dict[int, int] = {}

    # outcome -----------------------------------------------------------------------
    def local_outcome(self, local: int) -> str:
        return f"outcome-local-{local}.pkl"

    def records(self, note: str, stopped: bool = False) -> list[dict[str, Any]]:
        """One record per item: what each process wrote, else a lost record (``note``;
        of type :data:`RANK_STOPPED` when another node's failure stopped this one)."""
        out = []
        for local, item in enumerate(self.items):
            record = None
            try:
                with open(self.local_outcome(local), "rb") as f:
                    found = [r for r in wire.decode_outcome(f.read())[1]
                             if r.get("index") == item]
                record = found[0] if found and not found[0].get("lost") else None
            except (OSError, ValueError, TypeError, KeyError):
                pass
            if record is None:
                record = wire.lost_record(item, note, self.host, runner.python_version())
                if stopped:
                    record["error"]["type"] = RANK_STOPPED
            record["rank"] = self.ranks.get(item)
            out.append(record)
        return out

    def write_outcome(self, records: list[dict[str, Any]]) -> None:
        header = {"python": runner.python_version(), "host": self.host}
        runner.write_atomically(self.outcome_file, wire.encode_outcome(header, records))

    def clear_generation(self) -> None:
        for local in range(self.procs):
            for path in (self.local_outcome(local), f"torchrun-local-{local}.json",
                         "torchrun-spool"):
                if os.path.exists(path):
                    os.unlink(path)
        self.ranks = {}

    def append_output(self) -> None:
        """What each process printed, into the job's stdout and stderr, in item order
        (each part starts with the runner's item marker)."""
        for local in range(self.procs):
            for suffix, stream in (("out", sys.stdout), ("err", sys.stderr)):
                try:
                    with open(f"torchrun-rank-{local}.{suffix}", errors="replace") as f:
                        stream.write(f.read())
                except OSError:
                    continue
            stream.flush()

    # relay -------------------------------------------------------------------------
    def publish_node(self, state: str) -> None:
        try:
            self.relay.put(node_name(self.cluster, self.node), {
                "node": self.node, "host": self.host, "state": state, "nonce": self.nonce,
                "ranks": {str(k): v for k, v in self.ranks.items()}, "time": time.time(),
                **gpu_info()})
        except Exception as exc:  # the panel misses a line; the run goes on
            print(f"htcml: could not publish node {self.node}'s state: {exc}", file=sys.stderr)

    def contact(self, used: set[str]) -> dict[str, Any]:
        """Node 0 publishes a new contact; the others wait for one not used before."""
        if self.node == 0:
            mine: dict[str, Any] = {"host": self.address, "port": free_port(self.address),
                                    "nonce": secrets.token_hex(4), "time": time.time()}
            self.relay.put(contact_name(self.cluster), mine)
            return mine
        deadline = time.monotonic() + self.join_timeout
        while time.monotonic() < deadline:
            self.check_abort()
            found = self.relay.get(contact_name(self.cluster))
            if found and found.get("nonce") not in used and \
                    self.relay.get(restart_name(self.cluster, str(found["nonce"]))) is None:
                return found
            time.sleep(POLL)
        raise TimeoutError(f"node 0 published no rendezvous address within "
                           f"{self.join_timeout:.0f} s (is it still waiting for a slot?)")

    def check_abort(self) -> None:
        found = self.relay.get(abort_name(self.cluster))
        if found is not None and found.get("node") != self.node:
            raise Aborted(found)

    # torchrun ----------------------------------------------------------------------
    def torchrun(self, found: dict[str, Any]) -> int:
        relay = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchrun_relay.py")
        command = [
            sys.executable, relay, self.address, f"--nnodes={self.nodes}",
            f"--nproc-per-node={self.procs}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint(str(found['host']), int(found['port']))}",
            f"--rdzv-id={self.cluster}-{found['nonce']}",
            f"--rdzv-conf=is_host={1 if self.node == 0 else 0},"
            f"join_timeout={int(self.join_timeout)}",
            f"--local-addr={self.address}", "--max-restarts=0",
            os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchrun_worker.py"),
            str(self.node), str(self.procs), self.function_file, self.input_file]
        self.proc = subprocess.Popen(command, start_new_session=True)
        published = False
        last_abort_check = 0.0
        while self.proc.poll() is None:
            time.sleep(POLL)
            if not published and self.read_ranks():
                self.publish_node("running")
                published = True
            if time.monotonic() - last_abort_check >= 1.0:
                last_abort_check = time.monotonic()
                self.check_abort()
        self.read_ranks()
        return self.proc.returncode

    def read_ranks(self) -> bool:
        for local, item in enumerate(self.items):
            try:
                with open(f"torchrun-local-{local}.json") as f:
                    self.ranks[item] = int(json.load(f)["rank"])
            except (OSError, ValueError, KeyError):
                pass
        return len(self.ranks) == len(self.items)

    def stop_torchrun(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    # the node ----------------------------------------------------------------------
    def run(self) -> int:
        self.write_outcome(self.records("the node ended before this rank finished"))
        os.makedirs(wire.CHECKPOINT_DIR, exist_ok=True)  # HTCondor sends both back
        os.makedirs(wire.OUTPUTS_DIR, exist_ok=True)
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return self.torch_missing()
        self.publish_node("waiting for the rendezvous")
        used: set[str] = set()
        while True:
            self.clear_generation()
            found = self.contact(used)
            self.nonce = str(found["nonce"])
            used.add(self.nonce)
            code = self.torchrun(found)
            self.append_output()
            if code == 0:
                records = self.records("the rank wrote no outcome")
                self.write_outcome(records)
                runner.clear_saved_checkpoints()
                self.publish_node("done")
                return wire.EXIT_OK if all(r.get("ok") for r in records) else \
                    wire.EXIT_ITEM_FAILED
            if os.path.exists("torchrun-spool"):  # a rank saved a checkpoint to spool
                self.relay.put(restart_name(self.cluster, self.nonce), {"node": self.node})
                self.write_outcome(self.records("spooling a checkpoint"))
                return wire.EXIT_CHECKPOINT
            if self.restart_noted():
                print(f"htcml: rendezvous {self.nonce} ended by another node's restart; "
                      f"joining the next one", file=sys.stderr, flush=True)
                continue
            self.check_abort()
            records = self.records(f"torchrun on node {self.node} exited with {code} "
                                   f"before this rank finished")
            self.relay.put(abort_name(self.cluster), {"node": self.node, "code": code})
            self.write_outcome(records)
            self.publish_node("failed")
            return wire.EXIT_ITEM_FAILED

    def restart_noted(self) -> bool:
        deadline = time.monotonic() + RESTART_GRACE
        while True:
            if self.relay.get(restart_name(self.cluster, self.nonce)) is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)

    def stopped(self, note: str, state: str, by_other: bool = False) -> None:
        self.stop_torchrun()
        self.append_output()
        self.write_outcome(self.records(note, stopped=by_other))
        self.publish_node(state)

    def torch_missing(self) -> int:
        message = (f"torch is not installed for {sys.executable} on this execute node; "
                   f"install it in the environment the jobs use (environment=, python= or "
                   f"container_image=)")
        error = {"type": TORCH_MISSING, "message": message, "traceback": message,
                 "host": self.host, "python": runner.python_version(), "exception": None}
        self.write_outcome([{"index": i, "ok": False, "started": None, "seconds": None,
                             "error": error, "payload": True} for i in self.items])
        print(f"htcml: {message}", file=sys.stderr)
        try:
            self.relay.put(abort_name(self.cluster), {"node": self.node, "code": 4})
        except Exception:
            pass
        return wire.EXIT_PAYLOAD_FAILED


class Aborted(Exception):
    """Another node's ranks failed."""

    def __init__(self, note: dict[str, Any]):
        super().__init__(note)
        self.node = note.get("node")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        split = args.index("--")
        options = dict(zip(args[:split:2], args[1:split:2], strict=True))
        _script, function_file, input_file, outcome_file = args[split + 1:]
        node = Node(int(options["--nodes"]), int(options["--procs"]),
                    float(options["--join-timeout"]), input_file, outcome_file,
                    function_file)
    except (ValueError, KeyError):
        print(__doc__, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_term)
    try:
        return node.run()
    except Stopped:
        if node.nonce:  # the others start again once this node is back
            try:
                Relay().put(restart_name(node.cluster, node.nonce), {"node": node.node})
            except Exception:
                pass
        node.stopped("the node was evicted or removed before this rank finished", "stopped")
        return 143
    except Aborted as exc:
        node.stopped(f"stopped because a rank on node {exc.node} failed", "stopped",
                     by_other=True)
        return wire.EXIT_ITEM_FAILED
    except TimeoutError as exc:
        node.stopped(str(exc), "failed")
        return wire.EXIT_ITEM_FAILED


if __name__ == "__main__":
    sys.exit(main())
