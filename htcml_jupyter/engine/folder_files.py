"""Files inside a map folder, read and written without following links.

When root submits for the pool's job user (the project's pool does), that user owns
the map folder: a job, or anything running as that user, can put a symbolic link, a
FIFO or a huge file in place of any entry.  Every file the store reads or writes goes
through here.  Each folder on the way is opened relative to the one before with
``O_NOFOLLOW | O_DIRECTORY``, the file itself with ``O_NOFOLLOW`` (and ``O_NONBLOCK``,
so a FIFO cannot hang the reader), and it must be a regular file.  A new file is
created under a fresh name with ``O_EXCL`` and its final mode from the first byte, then
renamed into place.  A link met on the way is an :class:`UnsafeEntry` that names it;
nothing is read or written through it.

:func:`read_own` also refuses a file written by a user other than this process's or
root: root loads a pickle from a map folder (a sweep's policy, a job's inputs for a
retry) only when it is root's own file, never one the job user put there.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import HTCMLError

#: The most a map folder's record files (``map.json``, ``*.jsonl``) are read to; a
#: bigger one was not written by this package and is refused rather than read.
RECORD_LIMIT = 512 * 1024 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeEntry(HTCMLError, OSError):
    """An entry of a map folder is a link, not a regular file or folder, or was written
    by another user: it is neither followed, read nor written."""


def _unsafe(folder: Path, rel: str, what: str) -> UnsafeEntry:
    return UnsafeEntry(f"{folder / rel} {what}; htcml_jupyter does not follow links or "
                       f"load other users' files inside a map folder (the pool's job user "
                       f"can write there): remove it, or attach to the map as the user "
                       f"who owns it")


@contextmanager
def parent_fd(folder: Path, rel: str, create: bool = False) -> Iterator[tuple[int, str]]:
    """``(fd of the folder that holds rel, rel's last name)``; no link is followed on
    the way, from ``folder`` itself down.  With ``create``, missing folders are made
    (mode 0700)."""
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"{rel!r} is not a path inside a map folder")
    try:
        fd = os.open(folder, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _unsafe(folder.parent, folder.name, "is a link, not a folder") from None
        raise
    try:
        for i, part in enumerate(parts[:-1]):
            if create:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _unsafe(folder, "/".join(parts[:i + 1]),
                                  "is a link or a file, not a folder") from None
                raise
            os.close(fd)
            fd = inner
        yield fd, parts[-1]
    finally:
        os.close(fd)


def _open(dir_fd: int, name: str, flags: int, mode: int, folder: Path, rel: str) -> int:
    try:
        fd = os.open(name, flags | _FILE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe(folder, rel, "is a symbolic link") from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads
            raise _unsafe(folder, rel, "is not a regular file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _unsafe(folder, rel, "is not a regular file")
    return fd


def read_bytes(folder: Path, rel: str, limit: int | None = RECORD_LIMIT,
               own: bool = False) -> bytes:
    """The bytes of ``folder/rel``; refuses links, non-regular files, files over
    ``limit`` bytes and, with ``own``, files not written by this process's user."""
    with parent_fd(folder, rel) as (dir_fd, name):
        fd = _open(dir_fd, name, os.O_RDONLY, 0, folder, rel)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if own and (st.st_uid not in (os.geteuid(), 0) or st.st_nlink != 1):
            raise _unsafe(folder, rel, f"belongs to uid {st.st_uid}, neither this process's "
                                       f"user (uid {os.geteuid()}) nor root, so it is not "
                                       f"loaded")
        if limit is not None and st.st_size > limit:
            raise ValueError(f"{folder / rel} holds {st.st_size} bytes, more than any "
                             f"htcml_jupyter record ({limit}); it is not read")
        return f.read()


def read_own(folder: Path, rel: str) -> bytes:
    """The bytes of ``folder/rel`` when this process's user wrote it (see the module)."""
    return read_bytes(folder, rel, limit=None, own=True)


def write_atomic(folder: Path, rel: str, data: bytes, mode: int = 0o644,
                 create: bool = False) -> None:
    """Replace ``folder/rel`` with ``data``: a new file (``mode`` from its first byte)
    renamed over the old entry, whatever that was; a link there is replaced, not
    followed."""
    with parent_fd(folder, rel, create=create) as (dir_fd, name):
        tmp = f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        fd = _open(dir_fd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode, folder, rel)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise


def append(folder: Path, rel: str, data: bytes, mode: int = 0o644) -> None:
    """Append ``data`` to ``folder/rel`` (created when missing), synced to disk."""
    with parent_fd(folder, rel) as (dir_fd, name):
        fd = _open(dir_fd, name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode, folder, rel)
    with os.fdopen(fd, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def make_folder(folder: Path, rel: str) -> None:
    """Make the folder ``folder/rel`` and those above it, mode 0700 (no link is
    followed; one that exists is kept)."""
    with parent_fd(folder, rel + "/x", create=True):
        pass


def check_folder(folder: Path, rel: str) -> Path:
    """``folder/rel`` when it and every folder above it (up to ``folder``) is a real
    folder, not a link; raises :class:`UnsafeEntry` otherwise."""
    with parent_fd(folder, rel + "/x"):
        return folder / rel


def inside(folder: Path, *names: str) -> Path:
    """``folder`` joined with ``names`` (file names a job reported), when the result
    stays inside ``folder``: no absolute name, no ``..``, and no link on the way that
    leads out.  Raises :class:`UnsafeEntry` otherwise."""
    rel = "/".join(str(n) for n in names)
    parts = rel.split("/")
    if any(str(n).startswith("/") or not str(n) for n in names) or "\0" in rel \
            or ".." in parts:
        raise _unsafe(folder, rel, "leads outside its folder (a job reported that name)")
    path = folder.joinpath(*[p for p in parts if p not in ("", ".")])
    real = os.path.realpath(path)
    top = os.path.realpath(folder)
    if os.path.commonpath([real, top]) != top:
        raise _unsafe(folder, rel, "leads outside its folder through a link")
    return path
