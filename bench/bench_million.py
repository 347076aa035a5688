"""Benchmark: one million trivial items through ``htc.map`` on the project's pool.

Measured in a fresh client process each (so its peak memory is the client's own):

* how long ``htc.map`` takes to return (inputs read one job at a time, one input file
  per job, ``chunksize="auto"``);
* submit to every result back in the notebook (``m.results()``);
* the client's peak resident memory and how many files the map's folder holds;
* time to the first result of a 100-item map, the latency a person feels.

Baselines measured in the same run: the same function over the same inputs in one
Python process, and pickling the inputs alone (the least a map must do before it can
return).  Targets: ``map()`` <= 10 s, all results <= 90 s, peak RSS < 1 GB, < 1,000
files.

Run:  .venv/bin/python bench/bench_million.py [--items N]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle


def trivial(x: int) -> int:
    return x + 1


def _client(items: int, generator: bool) -> dict[str, float]:
    import htcml_jupyter as htc

    inputs = (i for i in range(items)) if generator else range(items)
    started = time.perf_counter()
    m = htc.map(trivial, inputs)
    returned = time.perf_counter() - started
    results = m.results(timeout=900)
    done = time.perf_counter() - started
    assert len(results) == items and results[0] == 1 and results[-1] == items, \
        "wrong results"
    checked = all(r == i + 1 for i, r in enumerate(results))
    files = sum(len(f) + len(d) for _, d, f in os.walk(m.store.path))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"map_returned_s": returned, "all_results_s": done, "peak_rss_mb": peak_kb / 1024,
            "files": files, "jobs": len(m.tasks()), "correct": float(checked)}


def _first_result(items: int) -> dict[str, float]:
    import htcml_jupyter as htc

    started = time.perf_counter()
    m = htc.map(trivial, range(items))
    first = None
    for _ in m.as_completed(timeout=300):
        first = time.perf_counter() - started if first is None else first
    return {"first_result_s": first or 0.0, "all_s": time.perf_counter() - started}


def _in_process(items: int) -> dict[str, float]:
    started = time.perf_counter()
    out = [trivial(x) for x in range(items)]
    loop = time.perf_counter() - started
    started = time.perf_counter()
    cloudpickle.dumps(list(enumerate(range(items))), protocol=pickle.HIGHEST_PROTOCOL)
    pickled = time.perf_counter() - started
    assert out[-1] == items
    return {"loop_s": loop, "pickle_inputs_s": pickled}


def _child(kind: str, items: int) -> dict[str, float]:
    """Run one measurement in a fresh interpreter and read its JSON line."""
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--items", str(items)],
                          capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", choices=["range", "generator", "first", "inprocess"])
    args = parser.parse_args()
    if args.child:
        run = {"range": lambda: _client(args.items, False),
               "generator": lambda: _client(args.items, True),
               "first": lambda: _first_result(args.items),
               "inprocess": lambda: _in_process(args.items)}[args.child]
        print(json.dumps(run()))
        return

    base = _child("inprocess", args.items)
    print(f"baseline, one process: {args.items:,} calls in {base['loop_s']:.2f} s; "
          f"pickling the inputs alone {base['pickle_inputs_s']:.2f} s")
    for kind in ("range", "generator"):
        runs = [_child(kind, args.items) for _ in range(args.repeat)]

        def median(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(f"\nhtc.map over a {kind} of {args.items:,} items "
              f"({int(median('jobs'))} jobs, median of {len(runs)}):")
        print(f"  map() returned   {median('map_returned_s'):7.2f} s   "
              f"({median('map_returned_s') / base['pickle_inputs_s']:.1f}x pickling the "
              f"inputs; target <= 10 s)")
        print(f"  all results back {median('all_results_s'):7.2f} s   "
              f"({median('all_results_s') / base['loop_s']:.0f}x the in-process loop; "
              f"target <= 90 s)")
        print(f"  client peak RSS  {median('peak_rss_mb'):7.0f} MB  (target < 1,000 MB)")
        print(f"  files in folder  {median('files'):7.0f}     (target < 1,000)")
        print(f"  results correct  {all(r['correct'] for r in runs)}")
    firsts = [_child("first", 100) for _ in range(3)]
    first = statistics.median(r["first_result_s"] for r in firsts)
    whole = statistics.median(r["all_s"] for r in firsts)
    print(f"\n100 trivial items: first result after {first:.2f} s, all after {whole:.2f} s "
          f"(median of 3; first/all = {first / whole:.2f})")


if __name__ == "__main__":
    main()
