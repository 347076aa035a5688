"""W1 on a pool that shares nothing, against the same map on a pool that shares files.

100 trivial items with ``chunksize="auto"``: on the project's pool (``environment``
resolves to ``shared``: jobs run this interpreter by its path) and on the isolated pool
(``auto`` resolves to ``pack``: the environment travels with every job and is unpacked
on the execute machine, once per machine while its cache lasts).  The pack is made
once before timing (a cached pack, as every map after the first one has).  Runs
alternate (shared, isolated, isolated, shared, ...) and the figures are medians.

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

import htcml_jupyter as htc
from htcml_jupyter import devpool


def trivial(x: int) -> int:
    return x + 1


def timed_map(pool: str, root: Path) -> tuple[float, str]:
    started = time.perf_counter()
    m = htc.map(trivial, range(100), root=root, pool=pool)
    assert m.results(timeout=1800) == [x + 1 for x in range(100)]
    return time.perf_counter() - started, str(m.environment.get("kind", "?"))


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
    print("warming up: packing the environment once and filling the execute cache")
    timed_map("isolated", root)
    shared: list[float] = []
    isolated: list[float] = []
    for r in range(args.rounds):
        order = ("project", "isolated") if r % 2 == 0 else ("isolated", "project")
        for pool in order:
            seconds, kind = timed_map(pool, root)
            (shared if pool == "project" else isolated).append(seconds)
            print(f"  {pool:<9} environment={kind:<7} {seconds:6.2f} s")
    s, i = statistics.median(shared), statistics.median(isolated)
    print(f"W1 shared pool (environment=shared):  {s:6.2f} s")
    print(f"W1 isolated pool (cached pack):       {i:6.2f} s")
    print(f"ratio isolated / shared:              {i / s:6.2f}  (target <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
