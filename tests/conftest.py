"""Shared fixtures: the project's real HTCondor pool and a map root its jobs can see.

Tests that need the pool (they use the ``pool``, ``pool_env`` or ``lab`` fixtures) are
marked ``@pytest.mark.pool``; ``pytest -m "not pool"`` runs the others without one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from htcml_jupyter import devpool
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.backends.pools import isolated_backend, project_backend
from htcml_jupyter.devpool import PoolState

#: CONDOR_CONFIG as the session found it (before any test module imported the bindings).
_CONDOR_CONFIG_AT_START = os.environ.get("CONDOR_CONFIG")


@pytest.fixture(scope="session", autouse=True)
def _session_environment() -> Iterator[None]:
    """The session's settings, all undone when it ends: a map that finds no pool fails
    instead of running in local processes (unless the environment or a test says
    otherwise); and the ``htcondor2`` bindings are loaded once up front, as their first
    import may set CONDOR_CONFIG=/dev/null when there is no configuration."""
    with pytest.MonkeyPatch.context() as mp:
        if "HTCML_LOCAL_FALLBACK" not in os.environ:
            mp.setenv("HTCML_LOCAL_FALLBACK", "0")
        import htcondor2  # noqa: F401

        loaded = os.environ.get("CONDOR_CONFIG")
        if loaded != _CONDOR_CONFIG_AT_START:  # hand it to mp, so it is put back
            if _CONDOR_CONFIG_AT_START is None:
                del os.environ["CONDOR_CONFIG"]
            else:
                os.environ["CONDOR_CONFIG"] = _CONDOR_CONFIG_AT_START
            if loaded is None:
                mp.delenv("CONDOR_CONFIG")
            else:
                mp.setenv("CONDOR_CONFIG", loaded)
        yield


@pytest.fixture(autouse=True)
def _environment_is_left_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """No test may leave CONDOR_CONFIG changed (it would redirect every later map), and a
    test that needs the pool must say so with ``@pytest.mark.pool``."""
    uses_pool = {"pool", "pool_env", "lab", "isolated_pool", "iso_root"} & set(
        request.fixturenames)
    if uses_pool and request.node.get_closest_marker("pool") is None:
        pytest.fail(f"{request.node.nodeid} uses the pool ({', '.join(sorted(uses_pool))}) "
                    f"but is not marked @pytest.mark.pool", pytrace=False)
    before = os.environ.get("CONDOR_CONFIG")
    yield
    after = os.environ.get("CONDOR_CONFIG")
    if after != before:
        if before is None:
            os.environ.pop("CONDOR_CONFIG", None)
        else:
            os.environ["CONDOR_CONFIG"] = before
        pytest.fail(f"{request.node.nodeid} left CONDOR_CONFIG={after!r} (it was {before!r})",
                    pytrace=False)


@pytest.fixture(scope="session")
def pool() -> str:
    """The project's pool, started if it is not up; returns its client configuration."""
    state = devpool.running_state()
    if state is None:
        state = devpool.up()
    backend = project_backend()
    assert backend is not None
    backend.check_reachable()
    return state.client_config


@pytest.fixture(scope="session")
def session_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="htcml-tests-", dir="/tmp"))
    root.chmod(0o755)
    _FOLDERS.update({str(root), os.path.realpath(root)})
    yield root
    _remove_jobs_under(root)
    shutil.rmtree(root, ignore_errors=True)


def _remove_jobs_under(root: Path) -> None:
    """Leave the pools' queues as the tests found them: remove every job of ``root``."""
    for config in _pools():
        _act(config, "Remove", _under([str(root)]))


# ------------------------------------------------------------------ jobs left behind
# A test that queues jobs removes them when it ends, held ones included.  A job is this
# session's when its Iwd (a map's folder, a workflow's folder, a watcher's map) lies in a
# folder this session made: its /tmp roots, pytest's temporary folders and any
# HTCML_HOME a test pointed at one.  Other sessions on the same pools have their own
# folders, so their jobs are never touched.  After each test that uses a pool, and after
# each module, the jobs of ours it queued are removed; at the end, any left are listed.

#: The folders of this session (job Iwd prefixes), added as fixtures make them.
_FOLDERS: set[str] = set()
_HOME_AT_END = pytest.StashKey[str | None]()
_LEFT_BEHIND: list[str] = []


def _pools() -> list[str]:
    """The client configurations of the project's pools that are up."""
    out = []
    for isolated in (False, True):
        try:
            state = devpool.running_state(isolated=isolated)
        except Exception:
            state = None
        if state is not None:
            out.append(state.client_config)
    return out


def _under(folders: list[str]) -> str:
    """A constraint: the job's Iwd is one of ``folders`` or inside one."""
    import classad2

    return " || ".join(
        f"(Iwd =?= {classad2.quote(f)} || substr(Iwd, 0, {len(f) + 1}) =?= "
        f"{classad2.quote(f + '/')})" for f in sorted(folders)) or "false"


def _act(config: str, action: str, constraint: str | list[str]) -> None:
    try:
        with pool_config(config) as htcondor2:
            htcondor2.Schedd().act(getattr(htcondor2.JobAction, action), constraint,
                                   "the test that queued it ended")
    except Exception:
        pass  # a pool being restarted by a fault test: the session's end looks again


def _jobs(config: str, constraint: str) -> list[Any]:
    with pool_config(config) as htcondor2:
        return list(htcondor2.Schedd().query(
            constraint=constraint,
            projection=["ClusterId", "ProcId", "JobStatus", "Iwd", "HoldReason",
                        "DAGManJobId", "HtcmlMap", "JobUniverse"]))


def _our_clusters(configs: list[str]) -> dict[str, set[int] | None]:
    """``{pool: clusters}`` of this session's jobs in each queue now (None: no answer)."""
    constraint = _under(list(_FOLDERS))
    out: dict[str, set[int] | None] = {}
    for config in configs:
        try:
            out[config] = {int(ad["ClusterId"]) for ad in _jobs(config, constraint)}
        except Exception:
            out[config] = None
    return out


def _remove_new(before: dict[str, set[int] | None]) -> None:
    """Remove this session's clusters queued since ``before`` (a pool that was down then
    had none; one that did not answer is left to the session's end)."""
    for config, clusters in _our_clusters(_pools()).items():
        if not clusters or (config in before and before[config] is None):
            continue
        new = sorted(clusters - (before.get(config) or set()))
        if new:  # the Iwd check again: a cluster id is only ever this session's job
            _act(config, "Remove", f"({_under(list(_FOLDERS))}) && ("
                                   + " || ".join(f"ClusterId == {i}" for i in new) + ")")


def _uses_pool(item: pytest.Item) -> bool:
    return item.get_closest_marker("pool") is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Note the HTCML_HOME the test ran with (its monkeypatch is undone before the jobs
    are looked at): maps made with no root go there."""
    try:
        return (yield)
    finally:
        item.stash[_HOME_AT_END] = os.environ.get("HTCML_HOME")


def _note_home(home: str | None) -> None:
    if not home:
        return
    path = os.path.realpath(home)
    shared = {os.path.realpath(Path.home() / ".htcml"), os.path.realpath(Path.home()), "/"}
    if path not in shared and path != os.path.realpath(_HOME_AT_START or "/"):
        _FOLDERS.update({home, path})


_HOME_AT_START = os.environ.get("HTCML_HOME")


@pytest.fixture(scope="module", autouse=True)
def _module_leaves_no_jobs(request: pytest.FixtureRequest,
                           tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Jobs of this session queued while the module ran (by module fixtures too) are
    removed when it ends."""
    base = tmp_path_factory.getbasetemp()
    _FOLDERS.update({str(base), os.path.realpath(base)})
    module = request.node
    if not any(_uses_pool(i) for i in request.session.items
               if i.getparent(pytest.Module) is module):
        yield
        return
    before = _our_clusters(_pools())
    yield
    _remove_new(before)


@pytest.fixture(autouse=True)
def _test_leaves_no_jobs(request: pytest.FixtureRequest) -> Iterator[None]:
    """The jobs of this session that a pool test queued are removed when it ends."""
    if not _uses_pool(request.node):
        yield
        return
    before = _our_clusters(_pools())
    yield
    _note_home(request.node.stash.get(_HOME_AT_END, None))
    _remove_new(before)


def _check_queues() -> list[str]:
    """Remove what is left of this session's jobs; those that stay, one line each."""
    constraint = _under(list(_FOLDERS))
    lines: list[str] = []
    for config in _pools():
        _act(config, "Remove", constraint)
        deadline = time.time() + 15
        try:
            while (left := _jobs(config, constraint)) and time.time() < deadline:
                time.sleep(0.5)
            if left:  # removed, but the shadow is gone (a pool restarted under it)
                _act(config, "RemoveX", f"({constraint}) && JobStatus == 3")
                time.sleep(1)
                left = _jobs(config, constraint)
        except Exception as exc:
            lines.append(f"{config}: could not look at the queue ({exc})")
            continue
        lines += [f"{config}: job {ad['ClusterId']}.{ad['ProcId']} status "
                  f"{ad.get('JobStatus')} in {ad.get('Iwd')} "
                  f"{ad.get('HoldReason', '') or ''}".rstrip() for ad in left]
    return lines


#: The roots test sessions make (session_root, iso_root): a job under one that no longer
#: exists is left over from a session that ended without removing it.
_SESSION_ROOTS = re.compile(r"^/tmp/htcml-(?:tests|isolated)-[^/]+")


def _remove_orphans() -> list[str]:
    """Remove the jobs of test sessions whose folders are gone (killed before their end):
    no running session can own them.  Returns their job ids."""
    removed: list[str] = []
    for config in _pools():
        try:
            ads = _jobs(config, 'regexp("^/tmp/htcml-(tests|isolated)-", Iwd)')
        except Exception:
            continue
        gone = sorted({f"{ad['ClusterId']}.{ad['ProcId']}" for ad in ads
                       if (m := _SESSION_ROOTS.match(str(ad.get("Iwd", ""))))
                       and not os.path.exists(m.group())})
        if gone:
            _act(config, "Remove", gone)
            removed += gone
    return removed


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(_uses_pool(i) for i in session.items):
        _remove_orphans()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _FOLDERS and any(_uses_pool(i) for i in session.items):
        _LEFT_BEHIND.extend(_check_queues())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _LEFT_BEHIND:
        terminalreporter.section("jobs this session left in the queue")
        for line in _LEFT_BEHIND:
            terminalreporter.write_line(line)


@pytest.fixture
def map_root(session_root: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh folder for this test's maps, under /tmp (which the pool's jobs see)."""
    root = session_root / request.node.name.replace("[", "-").replace("]", "")[:80]
    root.mkdir()
    root.chmod(0o755)
    return root


@pytest.fixture
def pool_env(pool: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Maps made in this test use the project's pool explicitly."""
    monkeypatch.setenv("HTCML_POOL", pool)
    return pool


@pytest.fixture
def shared_tmp(session_root: Path, request: pytest.FixtureRequest) -> Path:
    """A folder both this process and the pool's jobs can read and write."""
    path = session_root / ("shared-" + request.node.name[:60].replace("[", "-").replace("]", ""))
    path.mkdir()
    path.chmod(0o777)
    return path


@pytest.fixture(scope="session")
def ip() -> InteractiveShell:
    """One real IPython InteractiveShell for the session, with the extension loaded."""
    from IPython.testing.globalipapp import get_ipython, start_ipython

    shell = start_ipython() or get_ipython()
    assert shell is not None
    shell.run_line_magic("load_ext", "htcml_jupyter")
    return shell


@pytest.fixture(scope="session")
def isolated_pool() -> PoolState:
    """The project's isolated pool (execute side shares nothing), started when not up."""
    if os.geteuid() != 0:
        pytest.skip("the isolated pool needs root")
    state = devpool.running_state(isolated=True)
    if state is None:
        state = devpool.up(isolated=True)
    assert state.mode == "isolated"
    backend = isolated_backend()
    assert backend is not None
    backend.check_reachable()
    return state


@pytest.fixture(scope="session")
def iso_root(isolated_pool: PoolState) -> Iterator[Path]:
    """A folder under /tmp (seen by the submit side only) for maps on the isolated pool."""
    root = Path(tempfile.mkdtemp(prefix="htcml-isolated-", dir="/tmp"))
    root.chmod(0o755)
    _FOLDERS.update({str(root), os.path.realpath(root)})
    yield root
    _act(isolated_pool.client_config, "Remove", _under([str(root)]))
    shutil.rmtree(root, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fault injection (daemons restarted, the pool taken down and up) runs last, so no
    other test meets a pool that is recovering."""
    items.sort(key=lambda item: item.get_closest_marker("faults") is not None)
