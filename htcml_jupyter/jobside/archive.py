"""The job side as one file: a zip application every job runs as ``python jobside.pyz``.

Built on the submit side (standard library only, like the modules it holds) and written
into each map's folder, so a job's input is one job-side file instead of the runner,
its modules, HTCondor's chirp client and the cloudpickle package as separate transfers.
The archive holds ``runner.py``, ``job.py``, ``wire.py``, ``calls.py``, ``htchirp.py``
and the notebook's ``cloudpickle`` package (the runner's archive comes first on the
job's ``sys.path``, so the function is unpickled by the cloudpickle that pickled it),
each with its bytecode for this interpreter as an unchecked hash-based ``.pyc``: zipimport
loads them without compiling anything; another Python falls back to the sources (and
the runner then reports the version mismatch).

``__main__.py`` first makes the files HTCondor sends back (the outcome placeholder, the
checkpoint and output-files folders), so they exist from the job's first moment, then
runs :func:`runner.main`.  The bytes are built once per package version and Python
(kept in ``~/.cache/htcml``, or ``$XDG_CACHE_HOME/htcml``) and read once per process.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import marshal
import os
import zipfile
from pathlib import Path

from . import wire

#: The archive's name in the map's folder and in the job's.
ARCHIVE_NAME = "jobside.pyz"
#: The job-side modules it holds (from this folder).
MODULES = ("runner", "job", "wire", "calls")

MAIN = f'''\
"""Entry point of the job side: python {ARCHIVE_NAME} FUNCTION_FILE INPUT_FILE OUTCOME_FILE"""
import os
import sys

# HTCondor sends these back on exit and on an eviction: they exist from the start.
os.makedirs({wire.CHECKPOINT_DIR!r}, exist_ok=True)
os.makedirs({wire.OUTPUTS_DIR!r}, exist_ok=True)
if len(sys.argv) == 4 and not os.path.exists(sys.argv[3]):
    open(sys.argv[3], "ab").close()

import runner

sys.exit(runner.main())
'''

#: A fixed time stamp for every entry: the same sources give the same bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _package_files(name: str) -> list[tuple[str, Path]]:
    """``(name in the archive, path)`` of a pure-Python package's modules, found without
    importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the package {name!r} is not installed; the job side needs it")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return [(f"{name}/{p.name}", p) for p in sorted(folder.glob("*.py"))]


def chirp_client() -> Path:
    """HTCondor's pure-Python chirp client, from the htcondor2 package (not imported)."""
    spec = importlib.util.find_spec("htcondor2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the htcondor2 package is not installed; the job side needs its "
                          "chirp client (pip install htcondor)")
    return Path(next(iter(spec.submodule_search_locations))) / "htchirp" / "htchirp.py"


def sources() -> list[tuple[str, Path]]:
    """Every ``(name in the archive, path)`` the archive holds besides ``__main__.py``."""
    here = Path(__file__).resolve().parent
    return [*((f"{m}.py", here / f"{m}.py") for m in MODULES),
            ("htchirp.py", chirp_client()), *_package_files("cloudpickle")]


def _pyc(source: bytes, filename: str) -> bytes:
    """Bytecode of ``source`` as an unchecked hash-based ``.pyc`` (PEP 552)."""
    code = compile(source, filename, "exec", dont_inherit=True)
    return (importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def _signature(files: list[tuple[str, Path]]) -> tuple[tuple[str, int, int], ...]:
    stats = [(str(p), p.stat()) for _, p in files]
    return tuple((path, st.st_mtime_ns, st.st_size) for path, st in stats)


def _make() -> bytes:
    buffer = io.BytesIO()
    entries = [("__main__.py", MAIN.encode())]
    entries += [(name, path.read_bytes()) for name, path in sources()]
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            for arcname, payload in ((name, data), (name + "c", _pyc(data, name))):
                info = zipfile.ZipInfo(arcname, _EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, payload)
    return buffer.getvalue()


def cache_folder() -> Path:
    """Where built archives are kept: ``$XDG_CACHE_HOME/htcml`` or ``~/.cache/htcml``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "htcml"


@functools.lru_cache(maxsize=4)
def _build(signature: tuple[tuple[str, int, int], ...]) -> bytes:
    """The archive for sources of ``signature`` (their paths, times and sizes): from the
    cache folder, or made and put there (a cache that cannot be written is skipped)."""
    key = hashlib.sha256(repr((signature, importlib.util.MAGIC_NUMBER, MAIN)).encode())
    cached = cache_folder() / f"jobside-{key.hexdigest()[:20]}.pyz"
    try:
        return cached.read_bytes()
    except OSError:
        pass
    data = _make()
    try:
        cached.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        wire.write_atomically(str(cached), data)
    except OSError:
        pass
    return data


def archive_bytes() -> bytes:
    """The archive's bytes (made once per package version, read once per process)."""
    return _build(_signature(sources()))
