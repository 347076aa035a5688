"""One tarball that is a docker-archive and an OCI image layout at once.

``docker save`` writes this since Docker 25: the layers and the image configuration as
``blobs/sha256/<digest>``, named both by the OCI ``index.json`` (with ``oci-layout``) and
by docker's ``manifest.json``.  ``podman load``, ``docker load``, ``skopeo`` and
``apptainer build X.sif docker-archive://FILE`` all read it.  Blobs go straight into the
tarball: a layer whose size and digest are known only once it is written gets its tar
header written back over a placeholder block.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


class _Digesting(io.RawIOBase):
    """Writes through to ``out`` and keeps the SHA-256 and length of what went by."""

    def __init__(self, out: IO[bytes]):
        super().__init__()
        self._out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._out.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


@dataclass(frozen=True)
class Blob:
    digest: str  # "sha256:<hex>" of the bytes stored
    size: int
    diff_id: str  # "sha256:<hex>" of the uncompressed layer
    media_type: str


class ImageArchive:
    """The outer tarball: blobs written straight into it, each named by its digest."""

    def __init__(self, out: BinaryIO):
        self._out = out
        self._names: set[str] = set()

    def _header(self, name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        return info.tobuf(tarfile.USTAR_FORMAT)

    def add_bytes(self, name: str, data: bytes) -> None:
        self._out.write(self._header(name, len(data)))
        self._out.write(data)
        self._out.write(b"\0" * (-len(data) % 512))

    def add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._add_named(digest, lambda: self._out.write(data), len(data))
        return digest

    def stream_blob(self, write: Callable[[IO[bytes]], None]) -> tuple[str, int]:
        """Write a blob whose size and digest are known only after ``write`` ran: a
        header goes back over the placeholder block once they are."""
        start = self._out.tell()
        self._out.write(b"\0" * 512)
        sink = _Digesting(self._out)
        write(sink)  # type: ignore[arg-type]
        digest = "sha256:" + sink.sha.hexdigest()
        self._out.write(b"\0" * (-sink.size % 512))
        end = self._out.tell()
        self._out.seek(start)
        self._out.write(self._header(blob_name(digest), sink.size))
        self._out.seek(end)
        if digest in self._names:  # the same layer twice: drop the second copy
            self._out.seek(start)
            self._out.truncate()
        self._names.add(digest)
        return digest, sink.size

    def _add_named(self, digest: str, write: Callable[[], object], size: int) -> None:
        if digest in self._names:
            return
        self._names.add(digest)
        self._out.write(self._header(blob_name(digest), size))
        write()
        self._out.write(b"\0" * (-size % 512))

    def close(self) -> None:
        self._out.write(b"\0" * 1024)


def blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]



def _copy(source: IO[bytes], out: IO[bytes]) -> None:
    shutil.copyfileobj(source, out, 8 << 20)


def is_saved_image(path: Path) -> bool:
    """Whether ``path`` is a saved image (a docker-archive), not a root filesystem tarball."""
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.lstrip("./") == "manifest.json":
                    return True
                if member.name.lstrip("./").startswith(("usr/", "etc/", "bin")):
                    return False
    except (OSError, tarfile.TarError) as exc:
        raise ValueError(f"{path}: not a tarball ({exc})") from exc
    return False


def copy_saved_layers(path: Path, archive: ImageArchive) -> tuple[list[Blob], dict[str, Any]]:
    """Copy the layers of a docker-archive (``podman save``) into ``archive``; returns
    them and the saved image's configuration (``ValueError`` when it is not one image)."""
    with tarfile.open(path) as tar:
        def read(name: str) -> bytes:
            f = tar.extractfile(name.lstrip("./"))
            if f is None:
                raise ValueError(f"{path}: {name} is missing from the archive")
            return f.read()

        manifest = json.loads(read("manifest.json"))
        if len(manifest) != 1:
            raise ValueError(f"{path} holds {len(manifest)} images; save one")
        config = json.loads(read(manifest[0]["Config"]))
        diff_ids = config.get("rootfs", {}).get("diff_ids", [])
        blobs = []
        for layer, diff_id in zip(manifest[0]["Layers"], diff_ids, strict=True):
            member = tar.extractfile(layer.lstrip("./"))
            if member is None:
                raise ValueError(f"{path}: layer {layer} is missing")
            head = member.read(2)
            gz = head == b"\x1f\x8b"

            def write(out: IO[bytes], m: IO[bytes] = member, h: bytes = head) -> None:
                out.write(h)
                _copy(m, out)

            digest, size = archive.stream_blob(write)
            blobs.append(Blob(digest, size, diff_id, LAYER_GZIP if gz else LAYER))
    return blobs, config


def write_metadata(archive: ImageArchive, reference: str, layers: list[Blob], *,
                   base_config: dict[str, Any], labels: dict[str, str], created_by: str,
                   comment: str) -> None:
    """Write the image configuration, the OCI manifest and index, and docker's manifest.

    Parameters
    ----------
    archive
        The tarball, its layers written.
    reference
        The image's name, ``localhost/NAME:TAG``.
    layers
        Its layers, lowest first.
    base_config
        The configuration of the image it was built on (``{}`` for none): its
        environment, labels and history are kept; ``PATH`` and the command are set, and
        ``HOME`` is ``/tmp`` unless the base sets it.
    labels
        Labels to add.
    created_by, comment
        The history entry of the layer added last.
    """
    inherited = base_config.get("config") or {}
    env = [e for e in inherited.get("Env", []) if not e.startswith(("PATH=", "LANG="))]
    if not any(e.startswith("HOME=") for e in env):
        # Sites run images as the job's own uid, which has no home in the image (podman
        # gives it "/", read-only to it): caches under ~ go to the job's scratch /tmp.
        env.append("HOME=/tmp")
    labels = {**(inherited.get("Labels") or {}), **labels}
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config = {
        "created": created, "architecture": base_config.get("architecture", "amd64"),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           "LANG=C.UTF-8", *env],
                   "Cmd": ["python3"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in layers]},
        "history": [*base_config.get("history", []),
                    {"created": created, "created_by": created_by, "comment": comment}],
    }
    config_bytes = json.dumps(config, indent=1).encode()
    config_digest = archive.add_blob(config_bytes)
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size}
                   for b in layers],
    }
    manifest_bytes = json.dumps(manifest).encode()
    manifest_digest = archive.add_blob(manifest_bytes)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": manifest["mediaType"], "digest": manifest_digest,
                            "size": len(manifest_bytes),
                            "annotations": {"io.containerd.image.name": reference,
                                            "org.opencontainers.image.ref.name": reference}}]}
    archive.add_bytes("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    archive.add_bytes("index.json", json.dumps(index).encode())
    docker = [{"Config": blob_name(config_digest), "RepoTags": [reference],
               "Layers": [blob_name(b.digest) for b in layers]}]
    archive.add_bytes("manifest.json", json.dumps(docker).encode())


def layer_names(path: Path) -> Iterator[str]:
    """The member names of every layer of an image archive, lowest layer first."""
    with tarfile.open(path) as tar:
        f = tar.extractfile("manifest.json")
        if f is None:
            return
        for layer in json.load(f)[0]["Layers"]:
            blob = tar.extractfile(layer)
            if blob is None:
                continue
            with tarfile.open(fileobj=blob, mode="r|*") as inner:
                for member in inner:
                    yield member.name
