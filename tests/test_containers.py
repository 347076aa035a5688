"""Container images of the job environment (``htcml env image``), and maps that run in
them on the isolated pool, where podman is HTCondor's docker runtime.

The first tests read the image tarball itself (no root, no pool); the rest build the
real image, load it into the isolated pool's execute nodes and run maps in it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import sys
import tarfile
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.devpool import PoolState
from htcml_jupyter.devpool.execroot import ensure_image, has_image, podman_ready, prune_images
from htcml_jupyter.environment.image import (
    ENV_PREFIX,
    IMAGE_VERSION,
    BuiltImage,
    ImageError,
    base_root,
    build_image,
    image_reference,
)
from htcml_jupyter.environment.oci import layer_names
from htcml_jupyter.environment.packing import PackedEnvironment


def _fake_packed(folder: Path, python: str = "3.99.1") -> PackedEnvironment:
    """A tiny archive shaped like a packed environment, in two gzip members (as
    ``pack_environment`` writes them)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in [("htcml-env.txt", b"python=3.99.1\n"),
                           ("bin/python3.99", b"#!/bin/sh\necho fake\n"),
                           ("lib/python3.99/os.py", b"# os\n")]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, "python3.99"
        tar.addfile(link)
    data = raw.getvalue()
    half = len(data) // 2
    path = folder / "fake-env.tar.gz"
    with open(path, "wb") as f:
        for chunk in (data[:half], data[half:]):
            packer = zlib.compressobj(1, zlib.DEFLATED, 31)
            f.write(packer.compress(chunk) + packer.flush())
    return PackedEnvironment(path, "f" * 16, path.stat().st_size, 3, python, 0.1, 0.1, False)


def _fake_root(folder: Path) -> Path:
    root = folder / "root"
    for rel in ("bin", "etc", "proc", "var/cache/apt/archives", "usr/lib"):
        (root / rel).mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=fake\n")
    (root / "var/cache/apt/archives/big.deb").write_bytes(b"x" * 1000)
    (root / "bin/sh").write_text("#!fake\n")
    (root / "bin/sh").chmod(0o755)
    (root / "usr/lib/libc.so.6").write_bytes(b"\x7fELF")
    return root


def _read_archive(path: Path) -> tuple[dict[str, bytes], list[str]]:
    with tarfile.open(path) as tar:
        names = tar.getnames()
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]
    return files, names


def _check_image(path: Path, reference: str) -> dict[str, Any]:
    """Every blob is named by its digest and the two manifests agree; returns the config."""
    files, _ = _read_archive(path)
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1], name
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    docker = json.loads(files["manifest.json"])
    assert len(docker) == 1 and docker[0]["RepoTags"] == [reference]
    config = json.loads(files[docker[0]["Config"]])
    index = json.loads(files["index.json"])
    [entry] = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == reference
    manifest = json.loads(files["blobs/sha256/" + entry["digest"].split(":")[1]])
    assert [layer["digest"].split(":")[1] for layer in manifest["layers"]] == \
        [layer.rsplit("/", 1)[1] for layer in docker[0]["Layers"]]
    assert manifest["config"]["digest"].split(":")[1] == docker[0]["Config"].rsplit("/", 1)[1]
    diff_ids = []
    for layer in docker[0]["Layers"]:
        blob = files[layer]
        plain = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
        diff_ids.append("sha256:" + hashlib.sha256(plain).hexdigest())
    assert config["rootfs"]["diff_ids"] == diff_ids
    return dict(config)


def test_image_tarball_is_a_docker_archive_and_an_oci_layout(tmp_path: Path) -> None:
    mine = "{}.{}.{}".format(*sys.version_info[:3])
    packed = _fake_packed(tmp_path, mine)
    built = build_image("team/my-env:v1", base=_fake_root(tmp_path), packed=packed,
                        output=tmp_path / "img.tar")
    assert built.reference == "localhost/team/my-env:v1"
    assert built.container_image == "docker://localhost/team/my-env:v1"
    assert built.python == mine and built.layers == 2
    assert built.apptainer_command() == \
        f"apptainer build my-env_v1.sif docker-archive://{tmp_path / 'img.tar'}"
    config = _check_image(built.path, built.reference)
    assert config["config"]["Labels"]["org.htcml.python"] == mine
    assert "HOME=/tmp" in config["config"]["Env"]  # writable for any uid a site uses
    names = list(layer_names(built.path))
    assert "etc/os-release" in names and "proc" in names
    assert "var/cache/apt/archives/big.deb" not in names  # package caches stay out
    for name in ("bin/python3.99", "bin/python3", "htcml-env.txt", "lib/python3.99/os.py"):
        assert f"{ENV_PREFIX}/{name}" in names, name  # both gzip members were read
    with tarfile.open(built.path) as tar:
        top = json.load(tar.extractfile("manifest.json"))[0]["Layers"][-1]  # type: ignore[arg-type]
        with tarfile.open(fileobj=tar.extractfile(top)) as layer:
            launcher = layer.extractfile("usr/local/bin/python3").read().decode()  # type: ignore[union-attr]
            assert layer.getmember("usr/local/bin/python3").mode == 0o755
            tag = sys.implementation.cache_tag
            pyc = layer.extractfile(  # type: ignore[union-attr]
                f"{ENV_PREFIX}/lib/python3.99/__pycache__/os.{tag}.pyc").read()
    assert f"LD_LIBRARY_PATH=/{ENV_PREFIX}/lib" in launcher
    assert f'exec /{ENV_PREFIX}/venv/bin/python3 "$@"' in launcher  # a venv over it
    # compiled once into the image, loaded without checking the source (PEP 552)
    assert pyc[:4] == importlib.util.MAGIC_NUMBER and pyc[4:8] == (1).to_bytes(4, "little")
    assert pyc[8:16] == importlib.util.source_hash(b"# os\n")


def test_image_over_a_saved_image_keeps_its_layers(tmp_path: Path) -> None:
    packed = _fake_packed(tmp_path)
    first = build_image("base:1", base=_fake_root(tmp_path), packed=packed,
                        output=tmp_path / "base.tar", environment=False)
    assert first.layers == 1 and first.python == ""
    second = build_image("derived:2", base=first.path, packed=packed,
                         output=tmp_path / "derived.tar")
    base_config = _check_image(first.path, "localhost/base:1")
    config = _check_image(second.path, "localhost/derived:2")
    assert config["rootfs"]["diff_ids"][:1] == base_config["rootfs"]["diff_ids"]
    assert len(config["rootfs"]["diff_ids"]) == 2
    # a root filesystem tarball (as `podman export` writes) is a base too
    rootfs = tmp_path / "rootfs.tar.gz"
    with tarfile.open(rootfs, "w:gz") as tar:
        tar.add(_fake_root(tmp_path / "other"), arcname=".")
    third = build_image("from-rootfs", base=rootfs, packed=packed, output=tmp_path / "r.tar")
    _check_image(third.path, "localhost/from-rootfs:latest")
    assert "./etc/os-release" in list(layer_names(third.path))


@pytest.mark.parametrize("name", ["My-Env", "env:", "-env", "env:-x", "env:a b", "énv"])
def test_bad_image_names_are_refused(name: str) -> None:
    with pytest.raises(ImageError, match="is not an image name"):
        image_reference(name)


def test_env_image_command_says_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    from htcml_jupyter.cli import main

    assert main(["env", "image"]) == 2
    assert "name the image" in capsys.readouterr().err
    assert main(["env", "image", "Not-Lower"]) == 2
    assert "is not an image name" in capsys.readouterr().err


# ----------------------------------------------------------------- on the isolated pool
def _exec_roots(state: PoolState) -> list[str]:
    return [r for n, r in state.roots.items() if n != "submit"]


def _loaded(state: PoolState, built: BuiltImage) -> BuiltImage:
    """``built``, loaded into every execute root that does not hold it yet."""
    ensure_image(built.path, built.reference, _exec_roots(state))
    for root in _exec_roots(state):
        assert has_image(root, built.reference), root
    return built


@pytest.fixture(scope="module")
def env_image(isolated_pool: PoolState) -> BuiltImage:
    """This environment's image, built with ``htcml env image`` (once per packed
    environment) and loaded into the execute nodes."""
    from htcml_jupyter.cli import main
    from htcml_jupyter.environment import pack_environment
    from htcml_jupyter.environment.image import default_image_dir

    packed = pack_environment()
    tag = f"{packed.digest[:12]}-{IMAGE_VERSION}"
    name = f"htcml-test-env:{tag}"
    output = default_image_dir() / f"htcml-test-env_{tag}.tar"
    if not output.exists():
        assert main(["env", "image", name, "--output", str(output)]) == 0
    built = BuiltImage(output, image_reference(name), packed.python, output.stat().st_size,
                       2, "", 0.0)
    _forget_other_versions(isolated_pool, built)
    return _loaded(isolated_pool, built)


def _forget_other_versions(state: PoolState, built: BuiltImage) -> None:
    """Remove the test images of earlier environments (each is over a gigabyte)."""
    repo = built.reference.rsplit(":", 1)[0]
    for old in built.path.parent.glob(built.path.name.split("_")[0] + "_*.tar"):
        if old != built.path:
            old.unlink()
    prune_images(_exec_roots(state), repo, built.reference)


def _where(x: int) -> tuple[int, str, str, bool]:
    import os
    import sys

    with open(os.path.expanduser("~/.written-by-a-job"), "w") as f:  # a writable home
        f.write("ok")
    return (x * x, sys.executable, "{}.{}.{}".format(*sys.version_info[:3]),
            os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"))


@pytest.mark.pool
@pytest.mark.isolated
@pytest.mark.skipif(os.geteuid() != 0, reason="the isolated pool needs root")
def test_execute_nodes_advertise_podman_as_docker(isolated_pool: PoolState) -> None:
    for root in _exec_roots(isolated_pool):
        assert podman_ready(Path(root)), root
    with pool_config(isolated_pool.client_config) as htcondor2:
        ads = htcondor2.Collector().query(htcondor2.AdType.Startd,
                                          projection=["Name", "HasDocker", "DockerVersion"])
    assert ads and all(ad.get("HasDocker") is True for ad in ads), ads
    assert all("podman" in str(ad.get("DockerVersion")) for ad in ads), ads


@pytest.mark.pool
@pytest.mark.isolated
@pytest.mark.skipif(os.geteuid() != 0, reason="the isolated pool needs root")
def test_map_runs_in_the_environment_image(env_image: BuiltImage, iso_root: Path) -> None:
    root = iso_root / "container-maps"
    root.mkdir()
    started = time.monotonic()
    m = htc.map(_where, range(8), chunksize=1, container_image=env_image.container_image,
                pool="isolated", root=root)
    assert m.wait(timeout=300), m.status()
    elapsed = time.monotonic() - started
    assert m.holds == {} and m.errors == {}, (m.holds, m.errors)
    results = m.results()
    assert [r[0] for r in results] == [x * x for x in range(8)]
    mine = "{}.{}.{}".format(*sys.version_info[:3])
    for _, executable, version, in_container in results:
        assert executable == f"/{ENV_PREFIX}/venv/bin/python3"  # the venv over it
        assert version == mine
        assert in_container
    assert m.environment["kind"] == "container", m.environment
    print(f"8 one-item jobs in {env_image.reference}: {elapsed:.1f} s")


@pytest.mark.pool
@pytest.mark.isolated
@pytest.mark.skipif(os.geteuid() != 0, reason="the isolated pool needs root")
def test_image_with_another_python_fails_naming_both(isolated_pool: PoolState,
                                                    iso_root: Path) -> None:
    from htcml_jupyter.environment.image import default_image_dir

    trixie = base_root("trixie", ("python3",))  # Debian 13: Python 3.13
    output = default_image_dir() / "htcml-test-py313_v1.tar"
    if not output.exists():
        build_image("htcml-test-py313:v1", base=trixie, output=output, environment=False)
    built = _loaded(isolated_pool, BuiltImage(output, "localhost/htcml-test-py313:v1", "",
                                              0, 1, "", 0.0))
    root = iso_root / "container-mismatch"
    root.mkdir()
    m = htc.map(_where, [1, 2], chunksize=1, container_image=built.container_image,
                pool="isolated", root=root)
    assert m.wait(timeout=300), m.status()
    assert m.holds == {}, m.holds
    assert sorted(m.errors) == [0, 1], m.status()
    mine = "{}.{}".format(*sys.version_info[:2])
    for err in m.errors.values():
        assert "VersionMismatch" in err.short_type, err
        assert f"Python {mine}" in err.message and "Python 3.13" in err.message, err.message
