"""Pack the running interpreter and its packages into one cached ``.tar.gz``.

Why not an existing tool: ``venv-pack`` packs a venv's own files but not the base
interpreter it points to (``bin/python`` stays a link to the submit side's Python), so
the archive does not run where that Python is missing; ``conda-pack`` only packs conda
environments.  Here the base prefix and the venv's site-packages are merged into one
relocatable prefix (see :mod:`.layout`).

The archive is a plain tar compressed as a series of gzip members, each compressed on
its own thread (zlib releases the GIL), so both cores of a small notebook machine work;
``tar xzf`` and ``gzip -d`` read such a file as one stream.  Archives are cached as
``$HTCML_HOME/envs/<digest>.tar.gz``, named by the SHA-256 of their bytes (so a copy
staged on OSDF, which caches by name, is never confused with another, and an execute
node can check what it received), with a JSON sidecar ``<digest>.json`` (size, file
count, python version, seconds it took, the full SHA-256).  An index file
``manifest-<manifest digest>.json`` finds the archive of an unchanged environment: a
later pack only lists and stats its files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from ..paths import htcml_home
from .layout import (
    INFO_FILE,
    Entry,
    EnvSource,
    info_text,
    manifest_digest,
    plan,
)
from .lean import left_out

#: gzip level: 1 is about 3 times faster than 6 for 10% more bytes on a torch install.
DEFAULT_LEVEL = 1
_CHUNK = 8 << 20


@dataclass(frozen=True)
class PackProgress:
    """How far a pack has got (passed to the ``progress`` callback)."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True)
class PackedEnvironment:
    """An archive made by :func:`pack_environment`.

    Attributes
    ----------
    path
        The archive.
    digest
        The start of its bytes' SHA-256, naming it (``<digest>.tar.gz``).
    size
        Its size in bytes.
    files
        How many files it holds.
    python
        The packed interpreter's version, ``"3.11.7"``.
    pack_seconds
        How long packing took when it was made.
    seconds
        How long this call took (listing the files only, when ``cached``).
    cached
        Whether an archive made earlier was reused.
    sha256
        The SHA-256 of the archive's bytes.
    """

    path: Path
    digest: str
    size: int
    files: int
    python: str
    pack_seconds: float
    seconds: float
    cached: bool
    sha256: str = ""


def default_cache_dir() -> Path:
    """``$HTCML_HOME/envs``: where packed environments are kept."""
    return htcml_home() / "envs"


class _Hashing(io.RawIOBase):
    """A write-only stream that passes what it gets to ``out`` and hashes it."""

    def __init__(self, out: BinaryIO):
        super().__init__()
        self._out = out
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        self._out.write(data)
        return len(data)


class _GzipMembers(io.RawIOBase):
    """A write-only stream that gzips what it gets in independent members, compressed
    on ``workers`` threads and written to ``out`` in order."""

    def __init__(self, out: BinaryIO, level: int, workers: int):
        super().__init__()
        self._out = out
        self._level = level
        self._buf = bytearray()
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._pending: deque[Future[bytes]] = deque()
        self._limit = 2 * workers

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buf += data
        if len(self._buf) >= _CHUNK:
            self._submit()
        return len(data)

    def _compress(self, chunk: bytes) -> bytes:
        packer = zlib.compressobj(self._level, zlib.DEFLATED, 31)  # 31: a gzip member
        return packer.compress(chunk) + packer.flush()

    def _submit(self) -> None:
        chunk, self._buf = bytes(self._buf), bytearray()
        self._pending.append(self._pool.submit(self._compress, chunk))
        while len(self._pending) > self._limit:
            self._out.write(self._pending.popleft().result())

    def close(self) -> None:
        if self.closed:
            return
        if self._buf:
            self._submit()
        while self._pending:
            self._out.write(self._pending.popleft().result())
        self._pool.shutdown()
        super().close()


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.arcname)
    info.mode = entry.mode
    info.mtime = entry.mtime
    if entry.link is not None:
        info.type = tarfile.SYMTYPE
        info.linkname = entry.link
    else:
        info.size = entry.size
    return info


def write_archive(entries: list[Entry], info: str, out: BinaryIO, *, level: int = DEFAULT_LEVEL,
                  progress: Callable[[PackProgress], None] | None = None) -> int:
    """Write ``entries`` (and the ``htcml-env.txt`` holding ``info``) as a gzipped tar
    to ``out``; returns the number of files written."""
    files_total = sum(1 for e in entries if e.link is None)
    bytes_total = sum(e.size for e in entries)
    files_done = bytes_done = 0
    last = 0.0
    stream = _GzipMembers(out, level, workers=max(1, min(4, os.cpu_count() or 1)))
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        data = info.encode()
        header = tarfile.TarInfo(INFO_FILE)
        header.size, header.mtime = len(data), int(time.time())
        tar.addfile(header, io.BytesIO(data))
        for entry in entries:
            tarinfo = _tarinfo(entry)
            if entry.source is None:
                tar.addfile(tarinfo)
                continue
            with open(entry.source, "rb") as f:
                tarinfo.size = os.fstat(f.fileno()).st_size  # grown or shrunk since listed
                tar.addfile(tarinfo, f)
            files_done += 1
            bytes_done += entry.size
            now = time.monotonic()
            if progress is not None and now - last > 0.25:
                last = now
                progress(PackProgress(files_done, files_total, bytes_done, bytes_total))
    stream.close()
    if progress is not None:
        progress(PackProgress(files_done, files_total, bytes_total, bytes_total))
    return files_done


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name[:-len(".tar.gz")] + ".json")


def read_sidecar(archive: Path) -> dict[str, Any] | None:
    """The JSON written next to an archive when it was made, or ``None``."""
    try:
        data: dict[str, Any] = json.loads(_sidecar(archive).read_text())
    except (OSError, ValueError):
        return None
    return data


#: Hex digits of the SHA-256 that name an archive.
DIGEST_CHARS = 32


def _index(cache: Path, manifest: str) -> Path:
    return cache / f"manifest-{manifest}.json"


def _cached(cache: Path, manifest: str, started: float) -> PackedEnvironment | None:
    """The archive an earlier pack of the same manifest made, if it is still there."""
    try:
        name = json.loads(_index(cache, manifest).read_text())["archive"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = cache / str(name)
    meta = read_sidecar(path)
    if meta is None or not path.is_file():
        return None
    return PackedEnvironment(path, path.name[:-len(".tar.gz")], path.stat().st_size,
                             int(meta["files"]), str(meta["python"]),
                             float(meta["pack_seconds"]), time.monotonic() - started,
                             cached=True, sha256=str(meta.get("sha256", "")))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def pack_environment(source: EnvSource | None = None, *, cache_dir: Path | None = None,
                     level: int = DEFAULT_LEVEL,
                     progress: Callable[[PackProgress], None] | None = None,
                     ) -> PackedEnvironment:
    """Pack ``source`` (default: the running interpreter and its packages, lean: see
    :mod:`.lean`), or reuse the archive of an identical earlier pack.

    Parameters
    ----------
    source
        What to pack; :meth:`EnvSource.current` when ``None``.
    cache_dir
        Where archives are kept; :func:`default_cache_dir` when ``None``.
    level
        gzip compression level (1 fastest).
    progress
        Called with a :class:`PackProgress` a few times a second while packing.

    Returns
    -------
    PackedEnvironment
        The archive ``<cache_dir>/<digest>.tar.gz`` and what it holds.
    """
    started = time.monotonic()
    source = source or EnvSource.current()
    cache = cache_dir or default_cache_dir()
    entries = plan(source)
    manifest = manifest_digest(entries, source, level)
    found = _cached(cache, manifest, started)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{manifest}.tar.gz.{os.getpid()}"
    try:
        with open(tmp, "wb") as out:
            hashing = _Hashing(out)
            files = write_archive(entries, info_text(source), cast(BinaryIO, hashing),
                                  level=level, progress=progress)
        sha256 = hashing.sha256.hexdigest()
        path = cache / f"{sha256[:DIGEST_CHARS]}.tar.gz"
        os.chmod(tmp, 0o644)  # the pool's file transfer may read it as another user
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    python = "{}.{}.{}".format(*sys.version_info[:3]) if source.executable == Path(
        os.path.realpath(sys.executable)) else "{}.{}".format(*source.version)
    meta: dict[str, Any] = {"digest": sha256[:DIGEST_CHARS], "sha256": sha256,
            "manifest": manifest,
            "size": path.stat().st_size, "files": files, "python": python,
            "pack_seconds": round(seconds, 2), "level": level, "created": time.time(),
            "unpacked_bytes": sum(e.size for e in entries),
            "left_out": left_out(source),
            "lean": source.lean, "include": list(source.include),
            "exclude": list(source.exclude),
            "source": {"prefix": str(source.prefix),
                       "site_dirs": [str(p) for p in source.site_dirs]}}
    _write_json(_sidecar(path), meta)
    _write_json(_index(cache, manifest), {"archive": path.name})
    return PackedEnvironment(path, sha256[:DIGEST_CHARS], int(meta["size"]), files, python,
                             seconds, seconds, cached=False, sha256=sha256)


def export_archive(packed: PackedEnvironment, output: Path) -> Path:
    """Put a copy of ``packed``'s archive (a hard link when possible) and its sidecar at
    ``output``, which must end in ``.tar.gz``."""
    if not output.name.endswith(".tar.gz"):
        raise ValueError(f"the archive's name must end in .tar.gz: {output}")
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.resolve() != packed.path.resolve():
        output.unlink(missing_ok=True)
        try:
            os.link(packed.path, output)
        except OSError:
            shutil.copyfile(packed.path, output)
        shutil.copyfile(_sidecar(packed.path), _sidecar(output))
    return output


def describe(packed: PackedEnvironment) -> dict[str, Any]:
    """``packed`` as plain data (for JSON)."""
    out = asdict(packed)
    out["path"] = str(packed.path)
    return out
