"""Functions the tests map (pickled by value, as this folder is not installed), and
:func:`wait_until` for tests that watch something happen."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


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


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.1,
               message: str = "condition not met") -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something true, and
    return that; after ``timeout`` seconds raise AssertionError with ``message`` and the
    last value it returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:g} s; last value: {value!r})")
        time.sleep(interval)
