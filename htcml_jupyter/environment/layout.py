"""Which files make up a packed environment, and the digest that names the archive.

A packed environment is a self-contained Python prefix::

    bin/python3.X                    the base interpreter (python3, python: links to it)
    lib/libpython3.X.so*             the shared interpreter library, when there is one
    lib/python3.X/                   the standard library, without its tests, idlelib,
                                     ensurepip, the static build files and caches
    lib/python3.X/site-packages/     the packages of the running environment (a venv's
                                     site-packages, merged in ``sys.path`` order)
    htcml-env.txt                    python, machine and glibc the interpreter needs

The interpreter finds its standard library next to itself (``lib/python3.X/os.py``), so
the prefix works wherever it is unpacked.  Editable installs point outside
site-packages; their packages are copied in (see :func:`editable_packages`) and the
``.pth`` files and finders that name the submit side's paths are left out.  This
package itself is left out too: each job gets the job-side modules it needs with its
runner, and leaving it out keeps the digest (and the cached archive) unchanged while its
source is edited.

The digest is a hash of the manifest -- relative path, size and modification time of
every file -- not of the contents: reading 1.5 GB to hash it would cost as much as
packing it, and a changed package changes its files' sizes or times.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import site
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlparse

from .lean import (
    SKIPPED_FOLDERS,
    SKIPPED_PATHS,
    SKIPPED_SUFFIXES,
    choose,
    choose_needed,
    installed,
)

#: Bumped whenever the archive's layout changes, so old cache entries are not reused.
LAYOUT_VERSION = 2
#: The file in the archive's top folder that the job's bootstrap script reads.
INFO_FILE = "htcml-env.txt"

_STDLIB_SKIP_TOP = {"test", "idlelib", "ensurepip", "site-packages", "dist-packages",
                    "turtledemo"}
_STDLIB_SKIP_ANY = {"test", "tests", "__pycache__"}
_SELF = __name__.split(".")[0]
_PROJECT_SKIP = {"test", "tests", "docs", "doc", "bench", "benchmarks", "examples",
                 "scripts", "build", "dist", "notebooks"}


@dataclass(frozen=True)
class Entry:
    """One member of the archive: a file copied from ``source``, or a symbolic link."""

    arcname: str
    source: str | None
    size: int = 0
    mtime: int = 0
    mode: int = 0o644
    link: str | None = None


@dataclass(frozen=True)
class EnvSource:
    """What to pack: a base interpreter and the site-packages folders to merge.

    Parameters
    ----------
    prefix
        The base interpreter's installation prefix (``sys.base_prefix``).
    executable
        The interpreter binary itself (symbolic links resolved).
    version
        ``(major, minor)`` of that interpreter.
    site_dirs
        site-packages folders, first one winning when two hold the same file.
    exclude
        Distributions (or top-level names in site-packages) to leave out, for tools the
        jobs never use: ``("playwright", "jupyterlab")``.
    include
        Distributions to keep even where the lean rules would leave them out.
    lean
        Leave out what only the notebook uses (see :mod:`.lean`); ``False`` packs every
        installed distribution.
    needs
        When given, the only distributions packed (what a map's function needs, see
        :mod:`.needs`); the standard library and the interpreter always are.
    """

    prefix: Path
    executable: Path
    version: tuple[int, int]
    site_dirs: tuple[Path, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    lean: bool = True
    needs: tuple[str, ...] | None = None

    def with_choice(self, *, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                    lean: bool | None = None,
                    needs: tuple[str, ...] | None = None) -> EnvSource:
        """The same source with more names kept or left out (``needs``: only these
        distributions, see :mod:`.needs`)."""
        return replace(self, include=tuple(sorted({*self.include, *include})),
                       exclude=tuple(sorted({*self.exclude, *exclude})),
                       lean=self.lean if lean is None else lean,
                       needs=tuple(sorted(needs)) if needs is not None else self.needs)

    @classmethod
    def current(cls) -> EnvSource:
        """The running interpreter and its environment's site-packages (the user's own
        site-packages too when it is on ``sys.path``), in ``sys.path`` order."""
        dirs = list(site.getsitepackages())
        if site.ENABLE_USER_SITE:
            dirs.append(site.getusersitepackages())
        order = {p: i for i, p in reversed(list(enumerate(sys.path)))}
        dirs = sorted((p for p in dirs if os.path.isdir(p)),
                      key=lambda p: order.get(p, len(sys.path)))
        return cls(prefix=Path(sys.base_prefix),
                   executable=Path(os.path.realpath(sys.executable)),
                   version=(sys.version_info[0], sys.version_info[1]),
                   site_dirs=tuple(Path(p) for p in dirs))

    @property
    def pyname(self) -> str:
        return "python{}.{}".format(*self.version)


def _file_entry(arcname: str, path: str, st: os.stat_result) -> Entry:
    return Entry(arcname, path, st.st_size, int(st.st_mtime), stat.S_IMODE(st.st_mode))


def _walk(root: str, arcroot: str, skip_top: set[str], skip_any: set[str],
          skip_top_prefix: tuple[str, ...] = (),
          skip_suffixes: tuple[str, ...] = (".pyc", ".pyo"),
          skip_paths: frozenset[str] = frozenset()) -> Iterator[Entry]:
    """Files under ``root`` (none ending in ``skip_suffixes``); links to files are
    followed unless they are relative links to a neighbour, which stay links."""
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        top = rel == "."
        dirs[:] = sorted(d for d in dirs if d not in skip_any and not (top and (
            d in skip_top or d.startswith(skip_top_prefix or ("\0",))))
            and (d if top else f"{rel}/{d}") not in skip_paths)
        for name in sorted(files):
            if name.endswith(skip_suffixes):
                continue
            path = os.path.join(dirpath, name)
            arcname = f"{arcroot}/{name}" if top else f"{arcroot}/{rel}/{name}"
            target = os.readlink(path) if os.path.islink(path) else None
            if target is not None and "/" not in target and os.path.isfile(path):
                yield Entry(arcname, None, mode=0o777, link=target)
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue  # a dangling link
            if stat.S_ISREG(st.st_mode):
                yield _file_entry(arcname, path, st)


def _pth_paths(pth: Path, site_dir: Path) -> list[str]:
    """The folders a ``.pth`` file adds to ``sys.path`` (its ``import`` lines aside)."""
    out = []
    for line in pth.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "import ", "import\t")):
            continue
        path = line if os.path.isabs(line) else os.path.join(site_dir, line)
        if os.path.isdir(path):
            out.append(os.path.realpath(path))
    return out


def _editable_dists(site_dir: Path) -> dict[str, str]:
    """``{source folder: distribution name}`` of the editable installs in ``site_dir``."""
    out = {}
    for info in site_dir.glob("*.dist-info/direct_url.json"):
        try:
            data = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        url = str(data.get("url", ""))
        if data.get("dir_info", {}).get("editable") and url.startswith("file://"):
            name = info.parent.name.split("-")[0]
            out[os.path.realpath(unquote(urlparse(url).path))] = name
    return out


def _finder_mapping(finder: Path) -> dict[str, str]:
    """The ``MAPPING`` of a setuptools ``__editable___*_finder.py``: package -> folder."""
    try:
        tree = ast.parse(finder.read_text())
    except (OSError, SyntaxError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "MAPPING" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return {}
            return {str(k): str(v) for k, v in dict(value).items()}
    return {}


def editable_packages(root: str, dist: str | None) -> dict[str, str]:
    """The top-level packages and modules an editable install at ``root`` provides:
    the one named after the distribution when there is one (in ``root`` or
    ``root/src``), otherwise every package and module there except tests, docs,
    benchmarks and build folders.  Returns ``{name: path}``."""
    for base in (root, os.path.join(root, "src")):
        if dist:
            candidate = os.path.join(base, dist.replace("-", "_"))
            if os.path.isfile(os.path.join(candidate, "__init__.py")):
                return {os.path.basename(candidate): candidate}
    out = {}
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        stem = name[:-3] if name.endswith(".py") else name
        if stem in _PROJECT_SKIP or stem in ("setup", "conftest") or name.startswith("."):
            continue
        if name.endswith(".py") and os.path.isfile(path):
            out[stem] = path
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            out[name] = path
    return out


def _top_name(name: str) -> str:
    """``torch`` for ``torch``, ``torch-2.1.dist-info``, ``torch.libs`` or ``torch.py``."""
    stem = name.split("-")[0] if name.endswith((".dist-info", ".egg-info")) else name
    for suffix in (".py", ".libs", ".pth"):
        stem = stem.removesuffix(suffix)
    return stem.lower().replace("-", "_")


def _site_entries(site_dir: Path, arcroot: str, exclude: frozenset[str] = frozenset(),
                  lean: bool = False, kept_paths: tuple[str, ...] = ()) -> Iterator[Entry]:
    """site-packages without caches (and, when ``lean``, without test suites and type
    stubs), with editable installs copied in."""
    skip_any = set(SKIPPED_FOLDERS) if lean else {"__pycache__"}
    suffixes = SKIPPED_SUFFIXES if lean else (".pyc", ".pyo")
    skip_paths = frozenset(SKIPPED_PATHS - set(kept_paths)) if lean else frozenset()
    editable = _editable_dists(site_dir)
    dropped: set[str] = set()
    extra: dict[str, str] = {}
    for pth in site_dir.glob("*.pth"):
        outside = [p for p in _pth_paths(pth, site_dir)
                   if not p.startswith(os.path.realpath(site_dir) + os.sep)]
        for path in outside:
            extra.update(editable_packages(path, editable.get(path)))
        if pth.name.startswith("__editable__") or (outside and not any(
                line.startswith("import") for line in pth.read_text().splitlines())):
            dropped.add(pth.name)
    for finder in site_dir.glob("__editable___*finder.py"):
        extra.update({k: v for k, v in _finder_mapping(finder).items() if os.path.exists(v)})
        dropped.add(finder.name)
    skip_top = {n for n in os.listdir(site_dir) if _top_name(n) in exclude}
    for entry in _walk(str(site_dir), arcroot, skip_top, skip_any, skip_suffixes=suffixes,
                       skip_paths=skip_paths):
        rel = entry.arcname[len(arcroot) + 1:]
        if rel not in dropped and _top_name(rel.split("/")[0]) not in exclude:
            yield entry
    for name, path in sorted(extra.items()):
        if name == _SELF or _top_name(name) in exclude:
            continue
        if os.path.isdir(path):
            yield from _walk(path, f"{arcroot}/{name}", set(), _STDLIB_SKIP_ANY,
                             skip_suffixes=suffixes)
        else:
            yield _file_entry(f"{arcroot}/{os.path.basename(path)}", path, os.stat(path))


def _glibc() -> str:
    lib, version = platform.libc_ver()
    return version if lib == "glibc" else ""


def info_text(source: EnvSource) -> str:
    """The ``htcml-env.txt`` of an archive: what its interpreter needs to start."""
    return (f"python={source.version[0]}.{source.version[1]}\n"
            f"machine={platform.machine()}\nglibc={_glibc()}\n")


def plan(source: EnvSource) -> list[Entry]:
    """Every member of the archive of ``source``, in the order they are written."""
    py = source.pyname
    entries = [Entry(f"bin/{py}", str(source.executable),
                     *_size_time(source.executable), mode=0o755),
               Entry("bin/python3", None, mode=0o777, link=py),
               Entry("bin/python", None, mode=0o777, link=py)]
    lib = source.prefix / "lib"
    for path in sorted(lib.glob(f"lib{py}.so*")):
        if path.is_symlink() and "/" not in os.readlink(path):
            entries.append(Entry(f"lib/{path.name}", None, mode=0o777,
                                 link=os.readlink(path)))
        elif path.is_file():
            entries.append(_file_entry(f"lib/{path.name}", str(path), path.stat()))
    entries.extend(_walk(str(lib / py), f"lib/{py}", _STDLIB_SKIP_TOP, _STDLIB_SKIP_ANY,
                         ("config-",)))  # config-3.X-*: the static library, for builds
    seen = {e.arcname for e in entries}
    skip = left_out_names(source)
    for site_dir in source.site_dirs:
        for entry in _site_entries(site_dir, f"lib/{py}/site-packages", skip, source.lean,
                                   tuple(p.strip("/") for p in source.include if "/" in p)):
            if entry.arcname not in seen:
                seen.add(entry.arcname)
                entries.append(entry)
    return entries


def left_out_names(source: EnvSource) -> frozenset[str]:
    """The top-level names in site-packages that ``source`` leaves out (normalized as
    :func:`_top_name` does)."""
    named = {_top_name(n) for n in source.exclude}
    if not source.lean:
        return frozenset(named)
    if source.needs is not None:
        choice = choose_needed(installed(source.site_dirs), source.needs)
        return frozenset(named | {_top_name(n) for n in choice.top_names})
    choice = choose(installed(source.site_dirs), include=source.include,
                    exclude=source.exclude)
    return frozenset(named | {_top_name(n) for n in choice.top_names})


def plan_summary(source: EnvSource) -> tuple[int, int]:
    """``(files, bytes)`` the archive of ``source`` holds, unpacked."""
    files = [e for e in plan(source) if e.link is None]
    return len(files), sum(e.size for e in files)


def _size_time(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, int(st.st_mtime)


def manifest_digest(entries: list[Entry], source: EnvSource, level: int) -> str:
    """A short hash naming the archive: the layout version, the compression level, the
    interpreter's requirements and every entry's relative path, size and time (or link
    target).  Contents are not read."""
    h = hashlib.sha256(f"{LAYOUT_VERSION} {level}\n{info_text(source)}".encode())
    for e in entries:
        h.update(f"{e.arcname}\0{e.size}\0{e.mtime}\0{e.mode:o}\0{e.link or ''}\n".encode())
    return h.hexdigest()[:20]
