"""Functions the tests map; pickled by value because this folder is not installed."""

from __future__ import annotations

import os
import time


def square(x: int) -> int:
    return x * x


def scale(x: int, factor: int = 2) -> int:
    return x * factor


def fail_on_multiples_of_three(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"no multiples of three, got {x}")
    return x + 100


def echo(x: object) -> object:
    print(f"echo {x!r}")
    return x


def noisy(x: int) -> int:
    print(f"stdout of {x}")
    import sys

    print(f"stderr of {x}", file=sys.stderr)
    return x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail_until_flag(x: int, flag: str = "") -> int:
    if not os.path.exists(flag):
        raise RuntimeError(f"flag {flag} is missing")
    return x


def read_input_file(x: int, filename: str = "") -> str:
    with open(filename) as f:
        return f"{x}:{f.read().strip()}"


def size_of(blob: bytes) -> int:
    return len(blob)


def make_blob(n: int) -> bytes:
    return os.urandom(n)
