"""A lean packed environment, the archive as a job's input file, and the trust rules of
the execute node's cache.

The lean selection is checked on a site-packages folder built here with real
``.dist-info`` metadata; the cache rules run ``bootstrap.sh`` with ``sh`` in a folder laid
out like a job's sandbox (a planted tree must never run); the map-level checks run on
the isolated pool, whose jobs get HTCondor's private ``/tmp``.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import cloudpickle
import pytest

import htcml_jupyter as htc
from htcml_jupyter import environment
from htcml_jupyter.backends.submit_description import submit_description
from htcml_jupyter.engine.costs import sent_bytes, warn_if_costly
from htcml_jupyter.engine.options import OptionError, SubmitOptions
from htcml_jupyter.engine.store import MapStore
from htcml_jupyter.environment import EnvSource, launch_for, pack_environment
from htcml_jupyter.environment.launch import supports_common_files
from htcml_jupyter.environment.layout import plan
from htcml_jupyter.environment.lean import (
    choose,
    installed,
    pickle_names,
)

from .test_environment import JOB_FILES, _bootstrap, _make_env, _sandbox

PY = "python{}.{}".format(*sys.version_info[:2])


def _dist(site: Path, name: str, requires: tuple[str, ...] = (), files: tuple[str, ...] = (),
          requested: bool = False) -> None:
    """A distribution as pip installs it: its files and a ``.dist-info`` with METADATA,
    RECORD (and REQUESTED when it was installed by name)."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0",
             *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    for rel in files:
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("X = 1\n")
    (info / "RECORD").write_text("".join(f"{rel},,\n" for rel in
                                         (*files, f"{info.name}/METADATA")))
    if requested:
        (info / "REQUESTED").write_text("")


@pytest.fixture(scope="module")
def lean_env(tmp_path_factory: pytest.TempPathFactory) -> EnvSource:
    """A venv whose site-packages holds a notebook front end and a job's library."""
    root = tmp_path_factory.mktemp("lean")
    base = _make_env(root)
    site = base.site_dirs[0]
    _dist(site, "jupyterlab", ("frontdep>=1", "shareddep"), ("jupyterlab/__init__.py",))
    _dist(site, "frontdep", (), ("frontdep/__init__.py",))
    _dist(site, "shareddep", (), ("shareddep/__init__.py",))
    _dist(site, "mylib", ("shareddep", "optdep; extra == 'plots'"),
          ("mylib/__init__.py", "mylib/core.pyi", "mylib/tests/test_core.py"))
    _dist(site, "optdep", (), ("optdep/__init__.py",))
    _dist(site, "pandaslike", (), ("pandaslike/__init__.py",), requested=True)
    _dist(site, "bqplot", ("pandaslike",), ("bqplot/__init__.py",))
    return base


def _names(source: EnvSource) -> set[str]:
    return {e.arcname.split("/site-packages/", 1)[1] for e in plan(source)
            if "/site-packages/" in e.arcname}


def test_lean_leaves_out_the_notebook_side_from_metadata(lean_env: EnvSource) -> None:
    choice = choose(installed(lean_env.site_dirs))
    # the front end and what only it needs go; what a kept package needs, or what was
    # installed by name, stays; an extra's requirement does not keep anything
    assert {"jupyterlab", "frontdep", "bqplot"} <= choice.excluded
    assert not {"shareddep", "mylib", "pandaslike"} & choice.excluded
    assert "optdep" not in choice.excluded  # no one requires it: installed for itself
    names = _names(lean_env)
    assert "mylib/__init__.py" in names and "shareddep/__init__.py" in names
    assert not any(n.startswith(("jupyterlab", "frontdep", "bqplot")) for n in names)
    assert "mylib/core.pyi" not in names and "mylib/tests/test_core.py" not in names
    everything = _names(lean_env.with_choice(lean=False))
    assert {"jupyterlab/__init__.py", "mylib/core.pyi", "mylib/tests/test_core.py"} <= everything
    kept = _names(lean_env.with_choice(include=("jupyterlab",)))
    assert {"jupyterlab/__init__.py", "frontdep/__init__.py"} <= kept
    dropped = _names(lean_env.with_choice(exclude=("mylib",)))
    assert not any(n.startswith("mylib/") for n in dropped)


def test_a_function_keeps_what_it_imports(lean_env: EnvSource) -> None:
    def uses_the_front_end(x: int) -> int:
        import jupyterlab  # a name inside the function

        return int(jupyterlab.X) + x

    names = pickle_names(cloudpickle.dumps(uses_the_front_end))
    assert "jupyterlab" in names
    from htcml_jupyter.environment.needs import needed_distributions

    needs = needed_distributions(names, lean_env.site_dirs)
    assert needs >= {"jupyterlab", "frontdep", "shareddep"}  # with what it requires
    assert not needs & {"mylib", "bqplot", "pandaslike"}
    assert pickle_names(b"\x80\x05garbage") == set()  # damaged: nothing, no exception


def test_lean_pack_is_smaller_and_named_by_its_bytes(
        lean_env: EnvSource, tmp_path: Path) -> None:
    import hashlib

    lean = pack_environment(lean_env, cache_dir=tmp_path)
    full = pack_environment(lean_env.with_choice(lean=False), cache_dir=tmp_path)
    assert lean.files < full.files and lean.size < full.size
    digest = hashlib.sha256(lean.path.read_bytes()).hexdigest()
    assert lean.sha256 == digest and lean.path.name == f"{digest[:32]}.tar.gz"
    assert pack_environment(lean_env, cache_dir=tmp_path).cached  # found by its manifest
    with tarfile.open(lean.path) as tar:
        assert not any("jupyterlab" in n for n in tar.getnames())


def test_options_for_the_pack_are_checked() -> None:
    opts = SubmitOptions.from_kwargs({"pack_include": ["ipython", "torch/include"],
                                      "pack_exclude": "sympy"})
    assert opts.pack_include == ("ipython", "torch/include")
    assert opts.pack_exclude == ("sympy",)
    assert SubmitOptions.from_record(opts.asdict()) == opts
    with pytest.raises(OptionError, match="list of distribution names"):
        SubmitOptions.from_kwargs({"pack_include": ["two words"]})


# ------------------------------------------------------------------ the machine cache


@pytest.fixture(scope="module")
def lean_packed(lean_env: EnvSource, tmp_path_factory: pytest.TempPathFactory
                ) -> environment.PackedEnvironment:
    return pack_environment(lean_env, cache_dir=tmp_path_factory.mktemp("cache"))


def _planted_tree(tree: Path, marker: Path, sha256: str) -> None:
    """A tree that looks like an unpacked environment whose interpreter, if ever run,
    leaves ``marker`` behind."""
    (tree / "bin").mkdir(parents=True)
    python = tree / "bin" / "python3"
    python.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    python.chmod(0o755)
    (tree / "htcml-env.txt").write_text("python=3.11\nmachine=\nglibc=\n")
    (tree / ".complete").write_text(sha256)
    tree.chmod(0o700)


CHECK = "import fakepkg, sys; print(fakepkg.VALUE, sys.prefix)"


def test_a_planted_tree_with_a_wrong_digest_never_runs(
        tmp_path: Path, lean_packed: environment.PackedEnvironment) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    key = lean_packed.path.name.removesuffix(".tar.gz")
    marker = tmp_path / "planted-python-ran"
    _planted_tree(cache / key, marker, "0" * 64)  # the right name, another digest
    box = _sandbox(tmp_path, lean_packed.path)
    proc = _bootstrap(box, lean_packed.path.name, "-c", CHECK, cache=str(cache))
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert proc.stdout.startswith("42 ")  # the job's own, verified copy ran
    assert (cache / key / ".complete").read_text() == lean_packed.sha256  # replaced


def test_a_tree_of_another_user_never_runs(
        tmp_path: Path, lean_packed: environment.PackedEnvironment) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a folder owned by another user needs root")
    other = pwd.getpwnam("nobody")
    cache = tmp_path / "cache"
    key = lean_packed.path.name.removesuffix(".tar.gz")
    marker = tmp_path / "planted-python-ran"
    _planted_tree(cache / key, marker, lean_packed.sha256)
    cache.chmod(0o700)
    for path in (cache, cache / key, cache / key / "bin", cache / key / "bin" / "python3"):
        os.chown(path, other.pw_uid, other.pw_gid)
    tmp_path.chmod(0o755)
    box = _sandbox(tmp_path, lean_packed.path)
    proc = _bootstrap(box, lean_packed.path.name, "-c", CHECK, cache=str(cache))
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists() and proc.stdout.startswith("42 ")
    assert (box / "htcml_env").is_dir() and not (box / "htcml_env").is_symlink()


def test_an_archive_that_does_not_match_its_name_is_refused(
        tmp_path: Path, lean_packed: environment.PackedEnvironment) -> None:
    forged = tmp_path / lean_packed.path.name
    data = bytearray(lean_packed.path.read_bytes())
    data[-100] ^= 0xFF
    forged.write_bytes(bytes(data))
    (tmp_path / "job").mkdir()
    box = _sandbox(tmp_path / "job", forged)
    proc = _bootstrap(box, forged.name, "-c", CHECK, cache=str(tmp_path / "cache"))
    assert proc.returncode == 5 and "whose bytes match its name" in proc.stderr


def test_jobs_of_another_owner_do_not_share_the_cache(
        tmp_path: Path, lean_packed: environment.PackedEnvironment) -> None:
    ad = tmp_path / "job.ad"
    ad.write_text('Owner = "somebody-else"\nClusterId = 1\n')
    box = _sandbox(tmp_path, lean_packed.path)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(box), "_CONDOR_JOB_AD": str(ad),
           "HTCML_ENV_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["sh", str(environment.bootstrap_script()), lean_packed.path.name,
                           "-c", CHECK], cwd=box, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "cache").exists()  # a pilot's uid: nothing shared
    assert "ready in" in proc.stderr and "(unpacked)" in proc.stderr


# ------------------------------------------------------------------ the archive's route


def test_the_archive_is_an_input_file_or_a_common_one(tmp_path: Path) -> None:
    archive = tmp_path / f"{'ab' * 16}.tar.gz"
    archive.write_bytes(b"x")
    store = MapStore.create(tmp_path, "m", {})
    each = launch_for("pack", SubmitOptions(), str(archive))
    assert str(archive) in each.input_files and not each.common_input_files
    commands = submit_description(store, SubmitOptions(), batch_name="b", launch=each,
                                  job_files=JOB_FILES)
    assert str(archive) in commands["transfer_input_files"]
    assert "transfer_common_input_files" not in commands
    once = launch_for("pack", SubmitOptions(), str(archive), common_files=True)
    commands = submit_description(store, SubmitOptions(), batch_name="b", launch=once,
                                  job_files=JOB_FILES)
    assert commands["transfer_common_input_files"] == str(archive)
    assert str(archive) not in commands["transfer_input_files"]
    assert commands["arguments"].startswith(f"{archive.name} jobside.pyz")
    assert supports_common_files("$CondorVersion: 25.14.1 2026-01-01 $")
    assert not supports_common_files("$CondorVersion: 23.9.6 2024-07-01 BuildID: Debian $")


def test_costs_and_the_warning_for_large_archives() -> None:
    record = {"size": 2_000_000_000, "route": "transfer"}
    assert sent_bytes(record, 100) == 200_000_000_000
    assert sent_bytes({**record, "route": "common"}, 100, machines=4) == 8_000_000_000
    assert sent_bytes({**record, "route": "url"}, 100) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = warn_if_costly(record, 100)
        assert warn_if_costly({**record, "size": 300_000_000}, 100) is None
    assert message and "htcml env image" in message and "osdf://" in message
    assert len(caught) == 1


def _prefix(x: int) -> tuple[int, str]:
    return x + 1, sys.prefix


@pytest.mark.pool
def test_a_packed_map_on_private_tmp_reports_its_costs(
        iso_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTCML_HOME", str(iso_root / "home"))  # seen by the submit side
    m = htc.map(_prefix, range(4), chunksize=1, pool="isolated", environment="pack",
                root=iso_root / "maps")
    try:
        results = m.results(timeout=600)
    finally:
        m.cancel()
    assert [r[0] for r in results] == [1, 2, 3, 4]
    assert all(r[1].endswith("htcml_env/venv") for r in results)
    env = m.environment
    assert env["kind"] == "pack" and env["route"] == "transfer"
    assert env["bytes_sent"] == env["size"] * 4
    assert env["files"] > 0 and env["job_start_seconds"] > 0 and env["job_start_samples"] == 4
    assert "jupyterlab" in env["left_out"]
    # HTCondor's private /tmp is seen: no checksum and copy into a cache that dies with
    # the job
    err = (m.store.path / "logs" / "task-0.err").read_text()
    assert "no machine cache: /tmp is this job's own" in err, err


@pytest.mark.pool
def test_the_pool_a_user_started_is_the_pool_maps_use(
        isolated_pool: object, pool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from htcml_jupyter.backends import pools

    for name in ("HTCML_POOL", "CONDOR_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pools, "SYSTEM_CONFIG", "/nonexistent/condor_config")
    both = pools.resolve_backend()
    assert both.description.startswith("the project's pool (the isolated pool is up too")
    monkeypatch.setattr(pools, "project_backend", lambda: None)  # only --isolated is up
    only = pools.resolve_backend(fallback=False)
    assert only.description == "the project's isolated pool"
    assert only.kind == "condor"


def test_the_panel_says_what_the_environment_costs() -> None:
    from htcml_jupyter.views.progress import environment_text

    record = {"kind": "pack", "size": 382_000_000, "files": 12508, "pack_seconds": 15.84,
              "cached": False, "route": "transfer", "bytes_sent": 3_056_000_000, "jobs": 8,
              "job_start_seconds": 9.81}
    assert environment_text(record) == ("packed environment, 382 MB, 12508 files, packed in "
                                        "15.8 s; 3.1 GB sent to 8 jobs, each ready in 9.8 s")
    assert environment_text({**record, "route": "common", "cached": True}) == (
        "reused packed environment, 382 MB, 12508 files; sent once per execute point, "
        "each ready in 9.8 s")
    assert environment_text({"kind": "archive", "size": 5_000_000, "route": "url"}) == (
        "staged archive, 5 MB; fetched by the execute points from its URL")
    assert environment_text({"kind": "shared"}) == "shared interpreter"


def test_the_size_cap_removes_old_trees_but_never_one_in_use(
        tmp_path: Path, lean_env: EnvSource, lean_packed: environment.PackedEnvironment
) -> None:
    import fcntl

    other = pack_environment(lean_env.with_choice(lean=False), cache_dir=tmp_path / "packs")
    old_key = lean_packed.path.name.removesuffix(".tar.gz")

    def run(cache: Path, archive: Path, job: str) -> None:
        (tmp_path / job).mkdir()
        box = _sandbox(tmp_path / job, archive)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(box), "HTCML_ENV_CACHE": str(cache),
               "HTCML_ENV_CACHE_MAX_MB": "0"}
        proc = subprocess.run(["sh", str(environment.bootstrap_script()), archive.name,
                               "-c", CHECK], cwd=box, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr

    held = tmp_path / "held"
    run(held, lean_packed.path, "a1")
    with open(held / old_key / ".complete") as f:  # a job still running on that tree
        fcntl.flock(f, fcntl.LOCK_SH)
        run(held, other.path, "a2")
        assert (held / old_key / ".complete").exists()
    free = tmp_path / "free"
    run(free, lean_packed.path, "b1")
    run(free, other.path, "b2")
    assert not (free / old_key).exists()  # over the cap and unused: removed
    assert (free / other.path.name.removesuffix(".tar.gz") / ".complete").exists()


@pytest.mark.pool
def test_a_staged_archive_comes_from_its_url(iso_root: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`htcml env pack --output FOLDER/` names the archive by its digest; served over
    HTTP (as OSDF or a web server would), the jobs fetch it themselves: nothing is sent
    from the notebook's machine."""
    import functools
    import http.server
    import threading

    from htcml_jupyter import cli

    monkeypatch.setenv("HTCML_HOME", str(iso_root / "home"))  # shares the earlier pack
    web = tmp_path / "web"
    web.mkdir()
    assert cli.main(["env", "pack", "--output", f"{web}/"]) == 0
    [staged] = web.glob("env-*.tar.gz")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(web))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{staged.name}"
    try:
        m = htc.map(_prefix, range(2), chunksize=1, pool="isolated", environment=url,
                    root=iso_root / "staged")
        assert [r[0] for r in m.results(timeout=600)] == [1, 2]
        env = m.environment
        assert env["kind"] == "archive" and env["route"] == "url"
        assert env["bytes_sent"] == 0 and env["job_start_seconds"] > 0
    finally:
        server.shutdown()
        thread.join(5)


def test_a_function_needs_what_it_names_and_what_that_requires(lean_env: EnvSource) -> None:
    from htcml_jupyter.environment.needs import needed_distributions

    needs = needed_distributions({"mylib", "x", "encode"}, lean_env.site_dirs)
    # mylib, what it requires, and its extra's package (installed, not a notebook tool)
    assert needs == {"mylib", "shareddep", "optdep"}
    assert needed_distributions({"x"}, lean_env.site_dirs) == set()  # the stdlib alone
    assert "frontdep" in needed_distributions({"x"}, lean_env.site_dirs,
                                              include=["jupyterlab"])
    names = _names(lean_env.with_choice(needs=("mylib", "shareddep")))
    assert "mylib/__init__.py" in names and "shareddep/__init__.py" in names
    assert not any(n.startswith(("optdep", "pandaslike", "jupyterlab")) for n in names)


def _imports_by_name(letters: list[str]) -> str:
    import importlib

    # a name built at run time: neither the function's pickle nor its input shows it
    return str(importlib.import_module("".join(letters)).__name__)


@pytest.mark.pool
def test_a_module_the_pack_left_out_is_named_with_the_fix(
        iso_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTCML_HOME", str(iso_root / "home"))
    m = htc.map(_imports_by_name, [list("six")], pool="isolated", environment="pack",
                root=iso_root / "left-out")
    [error] = m.results(timeout=600, errors="return")
    assert isinstance(error, htc.RemoteError), error
    assert error.short_type == "ModuleNotFoundError"
    assert "pack_include=['six']" in str(error)
    assert m.environment["files"] < 2000  # the interpreter and the standard library
    fixed = htc.map(_imports_by_name, [list("six")], pool="isolated", environment="pack",
                    pack_include=["six"], root=iso_root / "left-out")
    assert fixed.results(timeout=600) == ["six"]
