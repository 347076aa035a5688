"""A container image of the job environment, written without a registry or an engine.

``htcml env image NAME`` lays the packed environment (:func:`.pack_environment`) over a
small base root with glibc and writes one tarball that is both a *docker-archive*
(``manifest.json``) and an *OCI image layout* (``oci-layout``, ``index.json``,
``blobs/sha256/``), the way ``docker save`` writes it since Docker 25.  ``podman load``
and ``docker load`` read it, and ``apptainer build NAME.sif docker-archive://FILE`` turns
it into the ``.sif`` file that CHTC and the OSPool want (on OSDF).

The image's layers:

1. the base: a Debian minbase root made once with ``debootstrap`` (with the C libraries
   the packed interpreter's standard library links to) and kept under
   ``$HTCML_HOME/images``; or the layers of an image the user names (``--base``,
   a docker-archive such as ``podman save`` writes), or a root filesystem tarball;
2. the environment, unpacked under :data:`ENV_PREFIX`, and ``/usr/local/bin/python3``
   (and ``python``), small scripts that start the packed interpreter with its shared
   library.  ``python3`` in the image is therefore the notebook's own version, which
   the runner checks before it unpickles anything.

Layers are plain (uncompressed) tars: loading needs no decompression and the outer
tarball is written in one pass (each layer's header is written after its bytes, when
its size and digest are known).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import marshal
import os
import shutil
import string
import sys
import tarfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..paths import htcml_home
from .oci import LAYER, Blob, ImageArchive, copy_saved_layers, is_saved_image, write_metadata
from .packing import PackedEnvironment, pack_environment

#: Bumped whenever what an image holds changes (caches of built images name it).
IMAGE_VERSION = 4
#: Where the packed environment lies in the image.
ENV_PREFIX = "opt/htcml-env"
#: The Debian release of the default base (glibc 2.36, as on Debian 12 hosts).
BASE_SUITE = "bookworm"
#: What the packed interpreter's standard library links to, beyond ``minbase``.
BASE_PACKAGES = ("ca-certificates", "libssl3", "libffi8", "libsqlite3-0", "libbz2-1.0",
                 "liblzma5", "zlib1g", "libncursesw6", "libreadline8", "libuuid1",
                 "libnsl2", "libtirpc3", "libexpat1", "libcrypt1")
_SKIP_BASE = ("proc/", "sys/", "dev/", "run/", "tmp/", "var/cache/apt/",
              "var/lib/apt/lists/", "var/log/", "usr/share/doc/", "usr/share/man/",
              "usr/share/locale/", "usr/share/info/")
_LAUNCHER = """\
#!/bin/sh
# The packed Python of htcml_jupyter (made by `htcml env image`).
LD_LIBRARY_PATH=/{prefix}/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}
export LD_LIBRARY_PATH
exec /{prefix}/venv/bin/python3 "$@"
"""


class ImageError(RuntimeError):
    """An image could not be built (its error names what to do instead)."""


@dataclass(frozen=True)
class BuiltImage:
    """An image archive made by :func:`build_image`.

    Attributes
    ----------
    path
        The tarball (docker-archive and OCI layout in one).
    reference
        The name it loads as, ``localhost/NAME:TAG``.
    python
        The version of its ``python3``, the packed interpreter (``""`` for an image
        built without the environment).
    size
        The tarball's size in bytes.
    layers
        How many layers it has.
    base
        What the environment was laid over, in words.
    seconds
        How long building took.
    """

    path: Path
    reference: str
    python: str
    size: int
    layers: int
    base: str
    seconds: float

    @property
    def container_image(self) -> str:
        """The value for ``htc.map(..., container_image=...)`` once it is loaded."""
        return f"docker://{self.reference}"

    def apptainer_command(self) -> str:
        """The command that makes a ``.sif`` file of it (on an access point)."""
        sif = self.reference.rsplit("/", 1)[-1].replace(":", "_") + ".sif"
        return f"apptainer build {sif} docker-archive://{self.path}"


def image_reference(name: str) -> str:
    """``NAME[:TAG]`` as the image's full local name, ``localhost/NAME:TAG``.

    Raises
    ------
    ImageError
        When the name is not a valid lower-case image name.
    """
    repo, colon, tag = name.partition(":")
    repo = repo.removeprefix("localhost/")
    tag = tag or ("" if colon else "latest")
    lower = string.ascii_lowercase + string.digits
    ok_repo = repo and all(c in lower or c in "._-/" for c in repo)
    ok_tag = len(tag) <= 128 and all(c in string.ascii_letters + string.digits + "._-"
                                     for c in tag)
    if not ok_repo or not ok_tag or not tag or repo[0] in "._-/" or tag[0] in ".-":
        raise ImageError(f"{name!r} is not an image name: use lower-case letters, digits, "
                         f"'.', '_', '-' and '/', with an optional ':TAG' "
                         f"(e.g. 'my-env:v1')")
    return f"localhost/{repo}:{tag}"


def default_image_dir() -> Path:
    """``$HTCML_HOME/images``: base roots and built images."""
    return htcml_home() / "images"


def base_root(suite: str = BASE_SUITE, include: tuple[str, ...] = BASE_PACKAGES,
              cache_dir: Path | None = None) -> Path:
    """A Debian minbase root made with ``debootstrap`` (as root), once, and kept.

    Parameters
    ----------
    suite
        The Debian release (``bookworm``, ``trixie``).
    include
        Packages to install besides ``minbase``.
    cache_dir
        Where roots are kept (default :func:`default_image_dir`).

    Returns
    -------
    Path
        The root's folder (a ``.htcml-ready`` file in it marks it finished).
    """
    tag = hashlib.sha256(" ".join(sorted(include)).encode()).hexdigest()[:8]
    root = (cache_dir or default_image_dir()) / f"base-{suite}-{tag}"
    if (root / ".htcml-ready").exists():
        return root
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise ImageError(f"making a Debian {suite} base root needs root and debootstrap "
                         f"(apt-get install debootstrap); or name a base image with --base "
                         f"(a `podman save` / `docker save` archive, or a root filesystem "
                         f"tarball with glibc)")
    import subprocess

    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", "--variant=minbase", *([f"--include={','.join(include)}"]
                                                 if include else []), suite, str(partial)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"{' '.join(cmd)} failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    (partial / ".htcml-ready").write_text("ok\n")
    partial.rename(root)
    return root


def _write_root_layer(root: Path, out: IO[bytes]) -> None:
    """A layer of every file under ``root`` except the folders a runtime mounts and
    package caches (their folders stay, empty)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirs, files in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            rel = "" if rel == "." else rel + "/"
            descend = []
            for name in [*sorted(dirs), *sorted(files)]:
                arc = rel + name
                if arc == ".htcml-ready" or any(arc.startswith(s) for s in _SKIP_BASE):
                    continue
                path = os.path.join(dirpath, name)
                info = tar.gettarinfo(path, arc)
                if info is None:
                    continue  # a socket or a pipe
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
                if info.isdir() and arc + "/" not in _SKIP_BASE:
                    descend.append(name)
            dirs[:] = descend


def _compiled(source: bytes, path: str) -> bytes | None:
    """``source`` as an unchecked hash-based ``.pyc`` (PEP 552): the image never changes,
    so its interpreter loads it without looking at the source again.  None when it does
    not compile (templates, files for another Python)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = compile(source, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None
    return (importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def _write_env_layer(packed: PackedEnvironment, out: IO[bytes]) -> None:
    """The packed environment under :data:`ENV_PREFIX`, its modules compiled (the pack
    has no ``.pyc`` files, and a job would otherwise compile every module it imports,
    every time), and the ``python3`` launchers."""
    made: set[str] = set()
    same_python = packed.python.split(".")[:2] == [str(v) for v in sys.version_info[:2]]
    tag = sys.implementation.cache_tag

    def folder(tar: tarfile.TarFile, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub and sub not in made:
                made.add(sub)
                info = tarfile.TarInfo(sub)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
                tar.addfile(info)

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar, \
            tarfile.open(packed.path, mode="r:gz") as source:  # gzip members: not r|gz
        for member in source:
            name = f"{ENV_PREFIX}/{member.name.lstrip('./')}".rstrip("/")
            folder(tar, name.rsplit("/", 1)[0])
            member.name = name
            member.uid = member.gid = 0
            member.uname = member.gname = "root"
            if member.isdir():
                made.add(name)
            if not member.isreg():
                tar.addfile(member)
                continue
            data = source.extractfile(member)
            if not (same_python and name.endswith(".py") and tag):
                tar.addfile(member, data)
                continue
            text = data.read() if data is not None else b""
            tar.addfile(member, io.BytesIO(text))
            pyc = _compiled(text, "/" + name)
            if pyc is not None:
                folder_name, module = name.rsplit("/", 1)
                cache = f"{folder_name}/__pycache__"
                folder(tar, cache)
                info = tarfile.TarInfo(f"{cache}/{module[:-3]}.{tag}.pyc")
                info.size, info.mode, info.mtime = len(pyc), 0o644, member.mtime
                tar.addfile(info, io.BytesIO(pyc))
        # a venv over the packed interpreter, as bootstrap.sh makes in a job: Debian's
        # python3 finds its site-packages only as a venv
        pyname = "python" + ".".join(packed.python.split(".")[:2])
        folder(tar, f"{ENV_PREFIX}/venv/bin")
        folder(tar, f"{ENV_PREFIX}/venv/lib/{pyname}")
        for link, target in ((f"{ENV_PREFIX}/venv/bin/python3", f"/{ENV_PREFIX}/bin/python3"),
                             (f"{ENV_PREFIX}/venv/lib/{pyname}/site-packages",
                              f"/{ENV_PREFIX}/lib/{pyname}/site-packages")):
            info = tarfile.TarInfo(link)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, int(time.time())
            tar.addfile(info)
        cfg = f"home = /{ENV_PREFIX}/bin\ninclude-system-site-packages = false\n".encode()
        info = tarfile.TarInfo(f"{ENV_PREFIX}/venv/pyvenv.cfg")
        info.size, info.mode, info.mtime = len(cfg), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(cfg))
        folder(tar, "usr/local/bin")
        script = _LAUNCHER.format(prefix=ENV_PREFIX).encode()
        for name in ("python3", "python"):
            info = tarfile.TarInfo(f"usr/local/bin/{name}")
            info.size, info.mode, info.mtime = len(script), 0o755, int(time.time())
            tar.addfile(info, io.BytesIO(script))


def _saved_image(path: Path) -> bool:
    try:
        return is_saved_image(path)
    except ValueError as exc:
        raise ImageError(f"--base {exc}") from exc


def _saved_layers(path: Path, archive: ImageArchive) -> tuple[list[Blob], dict[str, Any]]:
    try:
        return copy_saved_layers(path, archive)
    except (ValueError, KeyError, tarfile.TarError) as exc:
        raise ImageError(f"--base {path}: not an image saved by podman or docker "
                         f"(docker-archive): {exc}") from exc


def _layer_from(archive: ImageArchive, write: Callable[[IO[bytes]], None]) -> Blob:
    digest, size = archive.stream_blob(write)
    return Blob(digest, size, digest, LAYER)


def build_image(name: str, *, base: Path | None = None, output: Path | None = None,
                packed: PackedEnvironment | None = None, environment: bool = True,
                say: Callable[[str], None] | None = None) -> BuiltImage:
    """Build an image of the job environment: the packed environment over a base.

    Parameters
    ----------
    name
        ``NAME[:TAG]``; it loads as ``localhost/NAME:TAG``.
    base
        A docker-archive (``podman save``), a root filesystem tarball with glibc, or a
        root folder; default: a Debian :data:`BASE_SUITE` minbase root made here (needs
        root).
    output
        The tarball to write (default ``$HTCML_HOME/images/NAME_TAG.tar``).
    packed
        The packed environment (default: :func:`.pack_environment` of this Python).
    environment
        False: the base alone, with whatever ``python3`` it has (to try another
        interpreter, or to make a base image).
    say
        Called with a line about each step.

    Returns
    -------
    BuiltImage
        The tarball and how to use it.
    """
    started = time.monotonic()
    note = say or (lambda _text: None)
    reference = image_reference(name)
    short = reference.removeprefix("localhost/").replace("/", "_").replace(":", "_")
    output = output or default_image_dir() / f"{short}.tar"
    if packed is None and environment:
        note("packing this Python and its packages")
        packed = pack_environment()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}")
    config: dict[str, Any] = {}
    try:
        with open(tmp, "wb+") as out:
            archive = ImageArchive(out)
            if base is None or base.is_dir():
                root = base or base_root()
                described = (f"the root folder {root}" if base else
                             f"Debian {BASE_SUITE} minbase ({root})")
                note(f"writing the base layer from {root}")
                layers = [_layer_from(archive, lambda f: _write_root_layer(root, f))]
            elif _saved_image(base):
                described = f"the image {base}"
                note(f"copying the layers of {base}")
                layers, config = _saved_layers(base, archive)
            else:
                described = f"the root filesystem {base}"
                note(f"copying the root filesystem {base}")
                rootfs = base

                def plain(f: IO[bytes]) -> None:  # uncompressed, whatever it came as
                    with tarfile.open(rootfs) as src, \
                            tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as dst:
                        for m in src:
                            dst.addfile(m, src.extractfile(m) if m.isreg() else None)

                layers = [_layer_from(archive, plain)]
            labels, python = {}, ""
            if packed is not None and environment:
                env = packed
                note(f"writing the environment layer ({env.files} files, Python {env.python})")
                layers.append(_layer_from(archive, lambda f: _write_env_layer(env, f)))
                python = env.python
                labels = {"org.htcml.python": python, "org.htcml.environment": env.digest}
            write_metadata(archive, reference, layers, base_config=config, labels=labels,
                           created_by=f"htcml env image (over {described})",
                           comment=f"Python {python} at /{ENV_PREFIX}" if python else "")
            archive.close()
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return BuiltImage(output, reference, python, output.stat().st_size, len(layers),
                      described, time.monotonic() - started)
