"""Maps in a container image on the isolated pool, against the same maps on the shared
pool, measured in one run.

The isolated pool keeps HTCondor's defaults (every job has its own ``/tmp``), so a
packed environment would be fetched and unpacked by every job; an image of the same
environment (``htcml env image``), loaded once into each execute node's podman, is
started by HTCondor's docker runtime instead.  Two maps, each timed from ``htc.map``
to the last result:

* W1: 100 trivial items, ``chunksize="auto"``;
* 8 jobs of one item each (``chunksize=1``).

On the shared pool the jobs run this interpreter by its path (``environment="shared"``
resolves there).  Runs alternate between the pools; figures are medians (and the
fastest runs, less sensitive to other work on the machine); the ratio target is <= 2.

    .venv/bin/python bench/bench_containers.py [--rounds 3] [--image NAME:TAG]

Needs root and both pools: ``htcml pool up`` and ``htcml pool up --isolated``.  Without
``--image`` it builds this environment's image once (``htcml env image``) and loads it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import htcml_jupyter as htc
from htcml_jupyter import devpool
from htcml_jupyter.devpool.execroot import ensure_image, has_image, prune_images
from htcml_jupyter.environment import pack_environment
from htcml_jupyter.environment.image import (
    IMAGE_VERSION,
    build_image,
    default_image_dir,
    image_reference,
)


def trivial(x: int) -> int:
    return x + 1


def timed_map(n: int, chunksize: int | str, root: Path, **where: str) -> float:
    started = time.perf_counter()
    m = htc.map(trivial, range(n), chunksize=chunksize, root=root, **where)
    assert m.results(timeout=1800) == [x + 1 for x in range(n)], m.status()
    return time.perf_counter() - started


def the_image(name: str | None, roots: list[str]) -> str:
    """The image's ``docker://`` name, built and loaded when needed."""
    if name:
        reference = image_reference(name)
        missing = [r for r in roots if not has_image(r, reference)]
        if missing:
            raise SystemExit(f"{reference} is not loaded in {', '.join(missing)}: "
                             f"htcml env image {name} --load")
        return f"docker://{reference}"
    packed = pack_environment()
    tag = f"{packed.digest[:12]}-{IMAGE_VERSION}"
    output = default_image_dir() / f"htcml-bench-env_{tag}.tar"
    reference = image_reference(f"htcml-bench-env:{tag}")
    for old in output.parent.glob("htcml-bench-env_*.tar"):  # earlier environments
        if old != output:
            old.unlink()
    prune_images(roots, "localhost/htcml-bench-env", reference)
    if not output.exists():
        started = time.perf_counter()
        built = build_image(reference, output=output, packed=packed)
        print(f"built {reference} ({built.size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    if ensure_image(output, reference, roots):
        print(f"loaded it into the execute nodes in {time.perf_counter() - started:.1f} s")
    return f"docker://{reference}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", default=None,
                        help="an image already loaded (default: this environment's)")
    args = parser.parse_args()
    isolated = devpool.running_state(isolated=True)
    if os.geteuid() != 0 or devpool.running_state() is None or isolated is None:
        print("needs root and both pools: htcml pool up; htcml pool up --isolated",
              file=sys.stderr)
        return 2
    roots = [r for n, r in isolated.roots.items() if n != "submit"]
    image = the_image(args.image, roots)
    root = Path(tempfile.mkdtemp(prefix="htcml-bench-containers-", dir="/tmp"))
    root.chmod(0o755)
    container = {"pool": "isolated", "container_image": image}
    shared = {"pool": "project"}
    print(f"warming up (one map on each pool); image {image}")
    timed_map(8, 1, root, **container)
    timed_map(8, 1, root, **shared)
    maps = {"W1 (100 items, auto)": (100, "auto"), "8 jobs x 1 item": (8, 1)}
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for label, (n, chunksize) in maps.items():
            order = [("shared", shared), ("container", container)]
            for kind, where in order if r % 2 == 0 else order[::-1]:
                seconds = timed_map(n, chunksize, root, **where)
                times.setdefault((label, kind), []).append(seconds)
                print(f"  {label:<22} {kind:<9} {seconds:6.2f} s")
    print()
    for label in maps:
        s = statistics.median(times[(label, "shared")])
        c = statistics.median(times[(label, "container")])
        best_s, best_c = min(times[(label, "shared")]), min(times[(label, "container")])
        print(f"{label:<22} shared pool {s:6.2f} s, isolated pool in the image {c:6.2f} s, "
              f"ratio {c / s:5.2f} (target <= 2); fastest runs {best_s:.2f} s and "
              f"{best_c:.2f} s, ratio {best_c / best_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
