"""Environment delivery: packing, the cache, the job-side bootstrap and ``environment=``.

The packing tests pack a small environment (this interpreter's standard library plus a
venv made here with a few tiny packages), so they take seconds, not the torch install.
The bootstrap tests run ``bootstrap.sh`` directly with ``sh`` in a folder laid out like
a job's sandbox: a real check of the archive without HTCondor.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter import cli, devpool, environment
from htcml_jupyter.backends.submit_description import submit_description
from htcml_jupyter.engine.options import OptionError, SubmitOptions
from htcml_jupyter.engine.payload import dump_function, dump_items
from htcml_jupyter.engine.store import MapStore
from htcml_jupyter.environment import (
    Decision,
    EnvSource,
    auto_decision,
    decide,
    launch_for,
    pack_environment,
)
from htcml_jupyter.environment.layout import manifest_digest, plan
from htcml_jupyter.jobside import wire
from htcml_jupyter.jobside.archive import ARCHIVE_NAME, archive_bytes

PY = "python{}.{}".format(*sys.version_info[:2])
#: What every job gets besides its payload: the job side as one archive (a stand-in path).
JOB_FILES = [f"/opt/htcml/{ARCHIVE_NAME}"]


def _make_env(root: Path) -> EnvSource:
    """A venv with a plain package (and a stale cache file), plus an editable install
    whose source lives outside site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")],
                   check=True)
    site = root / "venv" / "lib" / PY / "site-packages"
    (site / "fakepkg").mkdir()
    (site / "fakepkg" / "__init__.py").write_text("VALUE = 42\n")
    (site / "fakepkg" / "__pycache__").mkdir()
    (site / "fakepkg" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"x" * 100)
    project = root / "project"
    (project / "editmod").mkdir(parents=True)
    (project / "editmod" / "__init__.py").write_text("WHERE = 'editable'\n")
    (project / "tests").mkdir()
    (project / "tests" / "__init__.py").write_text("")
    (site / "_editable_impl_editmod.pth").write_text(f"{project}\n")
    dist = site / "editmod-1.0.dist-info"
    dist.mkdir()
    (dist / "direct_url.json").write_text(json.dumps(
        {"dir_info": {"editable": True}, "url": f"file://{project}"}))
    # the other kind of editable install: a finder with a MAPPING, imported by a .pth
    (root / "elsewhere" / "findme").mkdir(parents=True)
    (root / "elsewhere" / "findme" / "__init__.py").write_text("FOUND = True\n")
    (site / "__editable___findme_1_0_finder.py").write_text(
        f"MAPPING = {{'findme': {str(root / 'elsewhere' / 'findme')!r}}}\n")
    (site / "__editable__.findme-1.0.pth").write_text(
        "import __editable___findme_1_0_finder; __editable___findme_1_0_finder.install()\n")
    return EnvSource(prefix=Path(sys.base_prefix),
                     executable=Path(os.path.realpath(sys.executable)),
                     version=sys.version_info[:2], site_dirs=(site,))


@pytest.fixture(scope="module")
def small_env(tmp_path_factory: pytest.TempPathFactory) -> EnvSource:
    return _make_env(tmp_path_factory.mktemp("env"))


@pytest.fixture(scope="module")
def packed(small_env: EnvSource, tmp_path_factory: pytest.TempPathFactory
           ) -> environment.PackedEnvironment:
    calls: list[environment.PackProgress] = []
    result = pack_environment(small_env, cache_dir=tmp_path_factory.mktemp("cache"),
                              progress=calls.append)
    assert calls and calls[-1].files_done == calls[-1].files_total == result.files
    assert calls[-1].bytes_done == calls[-1].bytes_total > 0
    return result


def test_pack_holds_a_relocatable_prefix_without_caches_or_tests(
        packed: environment.PackedEnvironment) -> None:
    assert not packed.cached and packed.path.name == f"{packed.digest}.tar.gz"
    with tarfile.open(packed.path) as tar:
        names = set(tar.getnames())
    assert {f"bin/{PY}", "bin/python3", f"lib/{PY}/os.py", "htcml-env.txt",
            f"lib/{PY}/site-packages/fakepkg/__init__.py",
            f"lib/{PY}/site-packages/editmod/__init__.py"} <= names
    assert f"lib/{PY}/site-packages/findme/__init__.py" in names
    assert not [n for n in names if "__editable__" in n]  # they name this machine's paths
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]
    for gone in ("test", "idlelib", "ensurepip"):
        assert not [n for n in names if n.startswith(f"lib/{PY}/{gone}/")], gone
    assert not [n for n in names if "/tests/" in n or (n.endswith(".pth") and "editmod" in n)]
    side = json.loads(packed.path.with_suffix("").with_suffix(".json").read_text())
    assert side["size"] == packed.size == packed.path.stat().st_size
    assert side["files"] == packed.files and side["python"].startswith(PY[6:])
    assert packed.size < 40e6  # the standard library compresses to a few tens of MB


def test_second_pack_is_a_cache_hit(small_env: EnvSource,
                                    packed: environment.PackedEnvironment) -> None:
    again = pack_environment(small_env, cache_dir=packed.path.parent)
    assert again.cached and again.digest == packed.digest and again.path == packed.path
    assert again.seconds < max(1.0, packed.seconds / 3)
    assert again.pack_seconds == pytest.approx(packed.pack_seconds, abs=0.01)


def test_digest_follows_the_files(small_env: EnvSource) -> None:
    before = manifest_digest(plan(small_env), small_env, 1)
    extra = small_env.site_dirs[0] / "fakepkg" / "new.py"
    extra.write_text("x = 1\n")
    try:
        assert manifest_digest(plan(small_env), small_env, 1) != before
    finally:
        extra.unlink()
    assert manifest_digest(plan(small_env), small_env, 1) == before
    assert manifest_digest(plan(small_env), small_env, 6) != before


def test_exclude_leaves_out_a_package_and_its_metadata(small_env: EnvSource) -> None:
    import dataclasses

    site = f"lib/{PY}/site-packages/"
    full = plan(small_env)
    lean = plan(dataclasses.replace(small_env, exclude=("editmod",)))
    gone = {e.arcname for e in full} - {e.arcname for e in lean}
    assert gone == {f"{site}editmod/__init__.py", f"{site}editmod-1.0.dist-info/direct_url.json"}
    assert manifest_digest(lean, small_env, 1) != manifest_digest(full, small_env, 1)


def _sandbox(tmp_path: Path, archive: Path) -> Path:
    box = tmp_path / "sandbox"
    box.mkdir()
    os.link(archive, box / archive.name)
    # what every launch sends: the job side, with the notebook's cloudpickle in it
    (box / ARCHIVE_NAME).write_bytes(archive_bytes())
    return box


def _bootstrap(box: Path, *args: str, cache: str = "none") -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(box),  # nothing of this process's Python
           "HTCML_ENV_CACHE": cache}
    return subprocess.run(["sh", str(environment.bootstrap_script()), *args], cwd=box,
                          env=env, capture_output=True, text=True, timeout=120)


def where_am_i(x: int) -> tuple[int, str, str, int]:
    import fakepkg  # only in the packed environment

    return x * 2, sys.prefix, sys.executable, fakepkg.VALUE


def test_bootstrap_unpacks_and_runs_the_runner(
        tmp_path: Path, packed: environment.PackedEnvironment) -> None:
    box = _sandbox(tmp_path, packed.path)
    dump_function(where_am_i, {}, box / "function.pkl")
    dump_items([(0, 1), (1, 5)], box / "task-0.pkl")
    proc = _bootstrap(box, packed.path.name, ARCHIVE_NAME, "function.pkl", "task-0.pkl",
                      "outcome.pkl")
    assert proc.returncode == 0, proc.stderr
    records = wire.decode_outcome((box / "outcome.pkl").read_bytes())[1]
    values = [pickle.loads(r["value"]) for r in records]
    prefix = str(box / "htcml_env" / "venv")  # a venv over the packed interpreter
    assert values == [(2, prefix, f"{prefix}/bin/python3", 42),
                      (10, prefix, f"{prefix}/bin/python3", 42)]
    assert not (box / packed.path.name).exists()  # the archive is freed after unpacking
    proc = _bootstrap(box, packed.path.name, "-c",
                      "import editmod, findme; print(editmod.WHERE, findme.FOUND)")
    assert (proc.returncode, proc.stdout) == (0, "editable True\n")  # unpacked once, reused


def test_bootstrap_unpacks_once_per_machine(
        tmp_path: Path, packed: environment.PackedEnvironment) -> None:
    cache = tmp_path / "machine-cache"
    (tmp_path / "job1").mkdir()
    (tmp_path / "job2").mkdir()
    first = _sandbox(tmp_path / "job1", packed.path)
    proc = _bootstrap(first, packed.path.name, "-c", "import fakepkg; print(fakepkg.VALUE)",
                      cache=str(cache))
    assert (proc.returncode, proc.stdout) == (0, "42\n"), proc.stderr
    unpacked = cache / packed.path.name.removesuffix(".tar.gz")
    assert (unpacked / ".complete").is_file()
    assert (first / "htcml_env").resolve() == unpacked.resolve()
    assert oct(cache.stat().st_mode & 0o777) == "0o700"  # this user's alone
    # the next job on the machine links the same folder instead of unpacking again
    marker = unpacked / "lib" / "seen-by-the-second-job"
    marker.write_text("")
    second = _sandbox(tmp_path / "job2", packed.path)
    proc = _bootstrap(second, packed.path.name, "-c",
                      "import os, sys; print(os.path.exists(os.path.join("
                      "sys.base_prefix, 'lib', 'seen-by-the-second-job')))", cache=str(cache))
    assert (proc.returncode, proc.stdout) == (0, "True\n"), proc.stderr
    assert not (second / packed.path.name).exists()


def _one_line_failure(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == wire.EXIT_ENVIRONMENT_FAILED, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.match(r"htcml: the execute side needs .+; it has .+; use environment=.+ or "
                    r"container_image=", lines[0]), lines[0]
    return lines[0]


def test_broken_archive_gives_one_line_and_its_exit_code(
        tmp_path: Path, packed: environment.PackedEnvironment) -> None:
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(packed.path.read_bytes()[:50_000])
    box = _sandbox(tmp_path, broken)
    line = _one_line_failure(_bootstrap(box, broken.name, ARCHIVE_NAME, "a", "b", "c"))
    assert "intact environment archive broken.tar.gz" in line
    assert not (box / "htcml_env").exists()
    line = _one_line_failure(_bootstrap(box, "missing.tar.gz", ARCHIVE_NAME))
    assert "missing.tar.gz" in line and "no such file" in line


def _fake_env_archive(path: Path, python_script: str, machine: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text, mode in (
                ("htcml-env.txt", f"python=3.11\nmachine={machine}\nglibc=2.36\n", 0o644),
                ("bin/python3", python_script, 0o755)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(text), mode
            tar.addfile(info, io.BytesIO(text.encode()))
    return path


@pytest.mark.parametrize("error, expected", [
    ("/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.99' not found (required by python3)",
     "needs GLIBC_2.99 or newer"),
    ("python3: error while loading shared libraries: libssl.so.9: cannot open shared "
     "object file: No such file or directory", "needs the C library libssl.so.9"),
    ("Fatal Python error: init_fs_encoding", "fails: Fatal Python error"),
])
def test_interpreter_that_cannot_start_is_named(tmp_path: Path, error: str,
                                                expected: str) -> None:
    script = f"#!/bin/sh\ncat >&2 <<'END'\n{error}\nEND\nexit 127\n"
    archive = _fake_env_archive(tmp_path / "env.tar.gz", script)
    line = _one_line_failure(_bootstrap(_sandbox(tmp_path, archive), archive.name, "x"))
    assert expected in line and "Python 3.11" in line


def test_other_machine_type_is_named(tmp_path: Path) -> None:
    archive = _fake_env_archive(tmp_path / "env.tar.gz", "#!/bin/sh\nexit 0\n", "riscv128")
    line = _one_line_failure(_bootstrap(_sandbox(tmp_path, archive), archive.name, "x"))
    assert "needs a riscv128 machine" in line and os.uname().machine in line


def test_bootstrap_exit_code_is_the_wire_constant() -> None:
    text = environment.bootstrap_script().read_text()
    assert f"EXIT_ENVIRONMENT_FAILED={wire.EXIT_ENVIRONMENT_FAILED}\n" in text
    assert text.startswith("#!/bin/sh\n")
    assert wire.EXIT_ENVIRONMENT_FAILED not in (wire.EXIT_OK, wire.EXIT_ITEM_FAILED,
                                                wire.EXIT_PAYLOAD_FAILED, wire.EXIT_CHECKPOINT)


def test_auto_follows_the_filesystem_domains() -> None:
    same = auto_decision("submit.htcml", ["submit.htcml", "submit.htcml"])
    assert same.kind == "shared" and "submit.htcml" in same.reason
    other = auto_decision("submit.htcml", ["exec.htcml"])
    assert other == Decision("pack", "the execute machines' filesystem domain exec.htcml "
                                     "differs from the submit side's submit.htcml")
    mixed = auto_decision("a", ["a", "b", "c"])
    assert mixed.kind == "pack" and "b, c differ" in mixed.reason
    assert auto_decision("a", []).kind == "pack"
    assert auto_decision(None, ["a"]).kind == "pack"


def _no_domains() -> tuple[str | None, list[str]]:
    raise AssertionError("the pool is asked only for environment='auto'")


def test_environment_values(tmp_path: Path) -> None:
    def opts(**kw: Any) -> SubmitOptions:
        return SubmitOptions(**kw)

    assert decide(opts(environment="shared"), _no_domains).kind == "shared"
    assert decide(opts(environment="pack"), _no_domains).kind == "pack"
    assert decide(opts(environment="pack", container_image="img:1"),
                  _no_domains).kind == "container"
    assert decide(opts(environment="pack", python="/opt/py/bin/python3"),
                  _no_domains).kind == "shared"
    url = "osdf:///ospool/ap40/data/me/env.tar.gz"
    assert decide(opts(environment=url), _no_domains) == Decision(
        "archive", f"the archive at {url}", archive=url)
    archive = tmp_path / "env.tar.gz"
    archive.write_bytes(b"")
    assert decide(opts(environment=str(archive)), _no_domains).archive == str(archive)
    with pytest.raises(OptionError, match="no such archive"):
        decide(opts(environment=str(tmp_path / "gone.tar.gz")), _no_domains)
    with pytest.raises(OptionError, match="is not 'auto'"):
        decide(opts(environment="conda"), _no_domains)
    assert decide(opts(), lambda: ("s", ["x"])).kind == "pack"
    assert decide(opts(), lambda: ("s", ["s"])).kind == "shared"


def test_launches_ship_cloudpickle_and_the_archive(tmp_path: Path) -> None:
    import cloudpickle

    folder = os.path.dirname(cloudpickle.__file__)
    shared = launch_for("shared", SubmitOptions())
    assert shared.executable == sys.executable and not shared.transfer_executable
    assert folder not in shared.input_files  # the job side's archive carries it
    assert launch_for("container", SubmitOptions(container_image="i")).executable == "python3"
    url = "https://example.org/envs/env-3.11.tar.gz?x=1"
    packed = launch_for("archive", SubmitOptions(), url)
    assert packed.transfer_executable and packed.executable.endswith("bootstrap.sh")
    assert packed.arguments_prefix == ("env-3.11.tar.gz",)
    assert packed.input_files == (url,)
    store = MapStore.create(tmp_path, "m", {})
    commands = submit_description(store, SubmitOptions(), batch_name="b", launch=packed,
                                  job_files=JOB_FILES)
    assert commands["arguments"].startswith(f"env-3.11.tar.gz {ARCHIVE_NAME} function.pkl")
    assert commands["transfer_executable"] == "true"
    assert url in commands["transfer_input_files"]


class _Backend:
    description = "a test pool"

    def __init__(self, domains: Any) -> None:
        self.filesystem_domains = domains

    def schedd_version(self) -> str:
        return "$CondorVersion: 23.9.6 2026-07-12 $"


def test_job_launch_decides_once_per_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         packed: environment.PackedEnvironment,
                                         capsys: pytest.CaptureFixture[str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="htcml_jupyter")
    asked: list[int] = []

    def domains() -> tuple[str, list[str]]:
        asked.append(1)
        return "submit.htcml", ["exec.htcml"]

    monkeypatch.setattr(environment, "pack_environment", lambda *_, **__: packed)
    store = MapStore.create(tmp_path, "m", {"name": "m"})
    backend = _Backend(domains)
    first = environment.job_launch(store, SubmitOptions(), backend)
    again = environment.job_launch(store, SubmitOptions(), backend)
    assert first == again and asked == [1]
    record = store.read_meta()["environment"]
    assert record["kind"] == "pack" and record["size"] == packed.size
    assert Path(record["archive"]).samefile(packed.path)
    assert record["cached"] is False and record["pack_seconds"] >= 0
    assert capsys.readouterr().err == ""  # notes, not warnings: logged, never on stderr
    out = [r.getMessage() for r in caplog.records
           if r.name == "htcml_jupyter.environment"]
    assert out[0] == ("environment: pack (the execute machines' filesystem domain "
                      "exec.htcml differs from the submit side's submit.htcml)")
    assert out[1].startswith("environment: packed Python") and len(out) == 2


def test_cli_env_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      small_env: EnvSource, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HTCML_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(EnvSource, "current", classmethod(lambda cls: small_env))
    output = tmp_path / "out" / "myenv.tar.gz"
    assert cli.main(["env", "pack", "--output", str(output)]) == 0
    text = capsys.readouterr().out
    assert f"archive: {output}" in text and "digest:" in text and "size:" in text
    assert tarfile.is_tarfile(output) and output.with_name("myenv.json").exists()
    assert len(list((tmp_path / "home" / "envs").glob("*.tar.gz"))) == 1
    assert cli.main(["env", "pack"]) == 0
    assert "reused" in capsys.readouterr().out


def twice_with_cloudpickle(x: int) -> tuple[int, str]:
    import cloudpickle

    return 2 * x, cloudpickle.__file__


@pytest.mark.pool
def test_pack_on_the_project_pool(pool_env: str, map_root: Path, small_env: EnvSource,
                                  packed: environment.PackedEnvironment,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The small environment has no cloudpickle: the jobs work because the notebook's
    cloudpickle travels with them."""
    monkeypatch.setattr(environment, "pack_environment", lambda *_, **__: packed)
    m = htc.map(twice_with_cloudpickle, [1, 2, 3], root=map_root, environment="pack",
                request_memory="512MB")
    assert m.wait(timeout=240), (m.status(), m.errors, m.holds)
    results = m.results()
    assert [r[0] for r in results] == [2, 4, 6]
    assert all("/htcml_env/" not in r[1] and "/jobside.pyz/cloudpickle/__init__.py" in r[1]
               for r in results), [r[1] for r in results]
    assert m.store.read_meta()["environment"]["kind"] == "pack"


def on_the_execute_side(x: int) -> tuple[int, str]:
    return x * x, sys.prefix


@pytest.mark.pool
@pytest.mark.isolated
def test_auto_packs_for_the_isolated_pool(tmp_path_factory: pytest.TempPathFactory,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The real environment (torch included) is packed, sent and run on execute nodes
    that share no files with this machine."""
    if devpool.running_state(isolated=True) is None:
        pytest.skip("the isolated pool is not up (start it with `htcml pool up --isolated`)")
    root = Path("/tmp") / f"htcml-isolated-{os.getpid()}-{int(time.time())}"
    root.mkdir(mode=0o755)
    monkeypatch.setenv("HTCML_HOME", str(root / "home"))
    try:
        m = htc.map(on_the_execute_side, [1, 2, 3], pool="isolated", root=root / "maps",
                    environment="auto", request_memory="2GB")
        assert m.wait(timeout=500), (m.status(), m.errors, m.holds)
        assert [r[0] for r in m.results()] == [1, 4, 9]
        assert all(r[1].endswith("/htcml_env/venv") for r in m.results())
        record = m.store.read_meta()["environment"]
        assert record["kind"] == "pack"
        assert "differs from the submit side's" in record["reason"]
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the archive alone is some 500 MB
