"""A sweep's early-abort watcher as a process of its own: ``python -m
htcml_jupyter.workflows.watch <map folder>``.

HTCondor runs it as a local-universe job on the submit host (:mod:`.watcher_job`), so a
sweep's policy is applied, and an adaptive sweep's ask/tell loop
(:meth:`~htcml_jupyter.training.adaptive.AdaptiveSweep.watch_step`) goes on, while no
notebook is attached.  It rebuilds the sweep from its
folder and calls the same :meth:`~htcml_jupyter.training.sweeps.Sweep.check_policy` as
the kernel's watcher: the same policies remove the same jobs and record the same aborts.
Each look renews its record (:data:`~.watcher_job.WATCHER_FILE`), and
the kernel's watcher stands aside while the record is fresh.  It exits when every trial
is settled (a cancelled sweep included) or its map folder is gone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ..backends.condor import CondorBackend
from ..engine.store import MapStore
from ..training.adaptive import open_sweep
from .watcher_job import watcher_record, write_record

#: Exit status when the watcher cannot start (no sweep, no policy, no schedd).
EXIT_CANNOT_WATCH = 2


def own_job_id() -> str | None:
    """This process's HTCondor job id, read from the job ad the starter wrote."""
    path = os.environ.get("_CONDOR_JOB_AD")
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    ids: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("ClusterId", "ProcId"):
            ids[key.strip()] = value.strip()
    return f"{ids['ClusterId']}.{ids['ProcId']}" if len(ids) == 2 else None


def pool_backend(pool: dict[str, Any]) -> CondorBackend:
    """The sweep's pool as seen from the submit host: the notebook's configuration file
    when this host can read it, otherwise the host's own (the schedd's)."""
    config = pool.get("config")
    if config is not None and not os.access(str(config), os.R_OK):
        config = None
    return CondorBackend(config, description=str(pool.get("description", "")),
                         shared_paths=pool.get("shared_paths"))


#: Seconds between two renewals of the watcher's record while nothing else changes.
HEARTBEAT_EVERY = 2.0


class SweepWatcher:
    """Applies one sweep's policy (or runs its ask/tell loop) until it is settled."""

    def __init__(self, folder: Path, interval: float | None = None):
        self.store = MapStore(folder)
        self.job = own_job_id()
        record = self.store.read_record()
        if record.sweep is None:
            raise ValueError(f"{folder} is a {record.kind}, not a sweep: there is no policy "
                             f"to apply")
        self.backend = pool_backend(record.backend)
        self.sweep = open_sweep(self.store, self.backend, watch=False)
        self.adaptive = record.sweep.adaptive is not None
        if not self.adaptive and self.sweep.policy is None:
            raise ValueError(f"the sweep in {folder} has no early-abort policy")
        self.interval = self.sweep.watch_interval if interval is None else interval
        self.aborted: list[int] = []
        self.errors: list[str] = []
        self._recorded = 0.0

    def record(self, state: str, **extra: Any) -> None:
        self._recorded = time.time()
        before = watcher_record(self.store)
        write_record(self.store, {"state": state, "job": self.job,
                                  "submitted": before.get("submitted"),
                                  "heartbeat": time.time(), "aborted": self.aborted,
                                  "errors": self.errors[-5:], **extra})

    def run(self) -> int:
        """Watch until the sweep is settled; returns the exit status."""
        try:
            self.backend.check_reachable()  # fail now, not at the first abort
        except Exception as exc:
            self.record("failed", error=f"cannot reach the schedd: {exc}")
            print(f"htcml watcher: cannot reach the schedd: {exc}", file=sys.stderr)
            return EXIT_CANNOT_WATCH
        self.record("watching")
        while self.store.path.is_dir():
            changed = False
            try:
                stopped = self.sweep.watch_step()
                self.aborted += stopped
                changed = bool(stopped)
                if self.sweep.finished:
                    self.record("finished")
                    return 0
            except Exception as exc:  # a transient error must not end the watch
                self.errors.append(f"{type(exc).__name__}: {exc}")
                print(f"htcml watcher: {self.errors[-1]}", file=sys.stderr)
                changed = True
            if changed or time.time() - self._recorded >= HEARTBEAT_EVERY:
                self.record("watching")
            time.sleep(self.interval)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m htcml_jupyter.workflows.watch",
        description="Apply a sweep's early-abort policy until the sweep is settled.")
    parser.add_argument("folder", type=Path, help="the sweep's map folder")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds between two looks at the reports (default: the "
                             "sweep's own, 1 s; 0.2 s for an adaptive sweep)")
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    try:
        try:
            watcher = SweepWatcher(folder, args.interval)
        except (OSError, ValueError) as exc:
            print(f"htcml watcher: {exc}", file=sys.stderr)
            return EXIT_CANNOT_WATCH
        return watcher.run()
    finally:  # tokens handed over for this watcher (watcher_job.hand_over_tokens)
        shutil.rmtree(folder / "tokens.d", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
