"""Maps on a pool that shares nothing, against the same maps on a pool that shares files.

Two maps: W1, 100 trivial items with ``chunksize="auto"``, and 8 jobs of one item each
(``chunksize=1``).  Each runs on the project's pool (``environment`` resolves to
``shared``: jobs run this interpreter by its path) and on the isolated pool, whose jobs
get HTCondor's private ``/tmp`` (``auto`` resolves to ``pack``: the lean environment is
an input file of every job and every job unpacks it).  The pack is made once before
timing (a cached pack, as every map after the first one has).  Runs alternate (shared,
isolated, isolated, shared, ...) and the figures are medians; the bytes the submit side
sends for a 100-job map are printed per route.

    .venv/bin/python bench/bench_isolated.py [--rounds 2]

Needs both pools: ``htcml pool up`` and ``htcml pool up --isolated``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import htcml_jupyter as htc
from htcml_jupyter import devpool


def trivial(x: int) -> int:
    return x + 1


MAPS: dict[str, tuple[int, int | Literal["auto"]]] = {
    "W1 (100 items, auto)": (100, "auto"), "8 jobs x 1 item": (8, 1)}


def timed_map(pool: str, root: Path, items: int, chunksize: int | Literal["auto"]
              ) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    m = htc.map(trivial, range(items), root=root, pool=pool, chunksize=chunksize)
    assert m.results(timeout=1800) == [x + 1 for x in range(items)]
    return time.perf_counter() - started, m.environment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if devpool.running_state() is None or devpool.running_state(isolated=True) is None:
        print("start both pools first: htcml pool up; htcml pool up --isolated",
              file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="htcml-bench-isolated-", dir="/tmp"))
    root.chmod(0o755)
    print("warming up: packing the environment once")
    _, env = timed_map("isolated", root, 8, 1)
    packed = env
    print(f"  lean pack: {env.get('size', 0) / 1e6:.0f} MB, {env.get('files')} files, "
          f"job start {env.get('job_start_seconds')} s (median of the first jobs)")
    for label, (items, chunksize) in MAPS.items():
        shared: list[float] = []
        isolated: list[float] = []
        for r in range(args.rounds):
            order = ("project", "isolated") if r % 2 == 0 else ("isolated", "project")
            for pool in order:
                seconds, env = timed_map(pool, root, items, chunksize)
                (shared if pool == "project" else isolated).append(seconds)
                if pool == "isolated":
                    packed = env
                print(f"  {label:<22} {pool:<9} environment={env.get('kind', '?'):<7} "
                      f"{seconds:6.2f} s")
        s, i = statistics.median(shared), statistics.median(isolated)
        print(f"{label}: shared pool {s:6.2f} s, isolated pool (private /tmp, lean pack) "
              f"{i:6.2f} s, ratio {i / s:5.2f}")
    size = int(packed.get("size") or 0)
    print(f"the map's pack: {size / 1e6:.0f} MB, {packed.get('files')} files, each job ready "
          f"in {packed.get('job_start_seconds')} s (median of the first jobs)")
    print("bytes the submit side sends for a 100-job map, per route:")
    print(f"  input file of every job:            {size * 100 / 1e9:8.2f} GB")
    print(f"  common input file (25.14+), 1 EP:    {size / 1e9:8.2f} GB per execute point")
    print("  staged URL (osdf://, https://):         0.00 GB (the cache or server sends it)")
    print("  container image:                        0.00 GB (the image comes from its "
          "registry or OSDF)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
