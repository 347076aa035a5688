"""Benchmark: packing the notebook's environment and starting a job from the archive.

The real development environment (torch included) is packed lean (the default) into a
fresh cache folder, then packed again (a cache hit); the pack of every installed
distribution (``--everything``, what every pack held before the lean selection) is
measured too, and the lean one's files and bytes are printed as shares of it.  The
unpack rate (files/s, MB/s of the unpacked tree) is measured for the gzip archive and
for the same tar uncompressed.  The job side is measured by running
``bootstrap.sh`` directly in a fresh temporary folder, as a job's sandbox (median of
3): unpack and start the packed interpreter, and unpack, start and ``import torch``.

Baselines, measured in the same run: reading every file of the environment once (the
floor for any packer), starting this machine's interpreter (``python -c "import sys"``),
a plain ``tar xzf`` of the archive, and ``import torch`` from the venv itself.  Figures
are printed as ratios against them.

Run:  .venv/bin/python bench/bench_environment.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from htcml_jupyter.environment import EnvSource, bootstrap_script, pack_environment, size_text
from htcml_jupyter.environment.layout import plan

RUNS = 3


def _read_all(paths: list[str]) -> float:
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    return time.perf_counter() - started


def _median(action: Callable[[], float]) -> float:
    return statistics.median(action() for _ in range(RUNS))


def _timed(cmd: list[str], cwd: str | None = None, cache: str = "none") -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True,
                   env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "HTCML_ENV_CACHE": cache}
                   if cwd else None)
    return time.perf_counter() - started


def _bootstrap_run(archive: Path, code: str, cache: str = "none") -> float:
    """Unpack ``archive`` in a fresh sandbox and run ``code`` with the packed Python (as a
    job with its own ``/tmp`` does: no machine cache, unless ``cache`` names one)."""
    box = Path(tempfile.mkdtemp(prefix="htcml-bench-sandbox-", dir="/tmp"))
    try:
        os.link(archive, box / archive.name)
        return _timed(["sh", str(bootstrap_script()), archive.name, "-c", code], str(box),
                      cache)
    finally:
        shutil.rmtree(box, ignore_errors=True)


def _untar(archive: Path) -> float:
    """Plain ``tar xzf`` of ``archive`` into a fresh folder."""
    box = Path(tempfile.mkdtemp(prefix="htcml-bench-untar-", dir="/tmp"))
    try:
        return _timed(["tar", "xzf", str(archive), "-C", str(box)], str(box))
    finally:
        shutil.rmtree(box, ignore_errors=True)


def _untar_plain(archive: Path) -> float:
    """``tar xf`` of the same tar, uncompressed, into a fresh folder."""
    box = Path(tempfile.mkdtemp(prefix="htcml-bench-untar-", dir="/tmp"))
    plain = box.with_name(box.name + ".tar")
    try:
        subprocess.run(f"gzip -dc {archive} > {plain}", shell=True, check=True)
        return _timed(["tar", "xf", str(plain), "-C", str(box)], str(box))
    finally:
        shutil.rmtree(box, ignore_errors=True)
        plain.unlink(missing_ok=True)


def main() -> int:
    cache = Path(tempfile.mkdtemp(prefix="htcml-bench-envs-", dir="/tmp"))
    try:
        everything = EnvSource.current().with_choice(lean=False)
        full = pack_environment(everything, cache_dir=cache)
        full_files = sum(1 for e in plan(everything) if e.link is None)
        full_raw = sum(e.size for e in plan(everything))
        source = EnvSource.current()
        entries = plan(source)
        raw = sum(e.size for e in entries)
        files = [e.source for e in entries if e.source]
        print(f"environment: {len(files)} files, {size_text(raw)} "
              f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
        read = _read_all([f for f in files if f])
        first = pack_environment(source, cache_dir=cache)
        second = pack_environment(source, cache_dir=cache)
        assert second.cached and second.digest == first.digest
        plain = _median(lambda: _timed([sys.executable, "-c", "import sys"]))
        untar = _median(lambda: _untar(first.path))
        untar_plain = _median(lambda: _untar_plain(first.path))
        unpack = _median(lambda: _bootstrap_run(first.path, "import sys"))
        torch_venv = _median(lambda: _timed([sys.executable, "-c", "import torch"]))
        torch_packed = _median(lambda: _bootstrap_run(first.path, "import torch"))
        machine_cache = str(cache / "machine-cache")
        _bootstrap_run(first.path, "import sys", machine_cache)  # fills it
        cached = _median(lambda: _bootstrap_run(first.path, "import sys", machine_cache))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    lean_files = sum(1 for e in entries if e.link is None)
    print(f"baseline: everything installed          {full_files:7d} files, "
          f"{size_text(full_raw)} unpacked, archive {size_text(full.size)}")
    print(f"lean pack                               {lean_files:7d} files "
          f"= {lean_files / full_files:.0%} of them, {size_text(raw)} unpacked "
          f"= {raw / full_raw:.0%}, archive {size_text(first.size)} "
          f"= {first.size / full.size:.0%}  (target <= 40 %)")
    print(f"unpack, gzip archive (tar xzf)          {lean_files / untar:7.0f} files/s, "
          f"{raw / 1e6 / untar:5.0f} MB/s")
    print(f"unpack, same tar uncompressed (tar xf)  {lean_files / untar_plain:7.0f} files/s, "
          f"{raw / 1e6 / untar_plain:5.0f} MB/s  = {untar / untar_plain:.2f}x faster, "
          f"{raw / first.size:.1f}x the bytes to send")
    print(f"baseline: read every file once          {read:7.2f} s")
    print(f"first pack                              {first.seconds:7.2f} s  "
          f"= {first.seconds / read:.1f}x reading the files")
    print(f"archive size                            {size_text(first.size):>9}  "
          f"= {first.size / raw:.2f}x the files' size")
    print(f"second pack (cache hit)                 {second.seconds:7.2f} s  "
          f"= {second.seconds / first.seconds:.3f}x the first pack")
    print(f"baseline: start this interpreter        {plain:7.2f} s  (median of {RUNS})")
    print(f"baseline: plain tar xzf of the archive  {untar:7.2f} s  (median of {RUNS})")
    print(f"job start: unpack + start packed Python {unpack:7.2f} s  "
          f"= {unpack / plain:.0f}x starting the interpreter, "
          f"{unpack / untar:.2f}x plain tar xzf")
    print(f"job start, machine cache (shared /tmp)  {cached:7.2f} s  "
          f"= {cached / unpack:.2f}x unpacking (checks the archive's SHA-256, links)")
    print(f"baseline: import torch in the venv      {torch_venv:7.2f} s")
    print(f"job start: unpack + import torch        {torch_packed:7.2f} s  "
          f"= {torch_packed / torch_venv:.1f}x importing it in the venv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
