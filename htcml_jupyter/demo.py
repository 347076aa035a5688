"""``htcml demo``: the main job in one command -- a function fanned out on a pool."""

from __future__ import annotations

import sys
import time


def estimate_pi(seed: int, samples: int = 200_000) -> float:
    """One Monte Carlo estimate of pi from ``samples`` random points."""
    import random

    rng = random.Random(seed)
    inside = sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(samples))
    return 4.0 * inside / samples


def run_demo(root: str | None = None, items: int = 40) -> int:
    import htcml_jupyter as htc

    started = time.time()
    m = htc.map(estimate_pi, range(items), kwargs={"samples": 200_000}, root=root,
                request_memory="256MB")
    print(f"map {m.name}: {items} items on {m.backend.description}")

    def show(counts: dict[str, int]) -> None:
        line = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        print(f"  {time.time() - started:5.1f} s  {line}", flush=True)

    m.wait(progress=show)
    estimates = m.results()
    mean = sum(estimates) / len(estimates)
    print(f"done in {time.time() - started:.1f} s: mean of {items} estimates of pi = "
          f"{mean:.5f}")
    return 0 if abs(mean - 3.14159) < 0.01 else 1


if __name__ == "__main__":
    sys.exit(run_demo())
