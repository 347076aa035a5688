"""Shared fixtures: the project's real HTCondor pool and a map root its jobs can see.

Tests that need the pool (they use the ``pool``, ``pool_env`` or ``lab`` fixtures) are
marked ``@pytest.mark.pool``; ``pytest -m "not pool"`` runs the others without one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
    yield root
    _remove_jobs_under(root)
    shutil.rmtree(root, ignore_errors=True)


def _remove_jobs_under(root: Path) -> None:
    """Leave the pool's queue as the tests found it."""
    state = devpool.running_state()
    if state is None:
        return
    try:
        with pool_config(state.client_config) as htcondor2:
            htcondor2.Schedd().act(htcondor2.JobAction.Remove, f'regexp("^{root}/", Iwd)')
    except Exception:
        pass


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
    yield root
    try:
        with pool_config(isolated_pool.client_config) as htcondor2:
            htcondor2.Schedd().act(htcondor2.JobAction.Remove, f'regexp("^{root}/", Iwd)')
    except Exception:
        pass
    shutil.rmtree(root, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fault injection (daemons restarted, the pool taken down and up) runs last, so no
    other test meets a pool that is recovering."""
    items.sort(key=lambda item: item.get_closest_marker("faults") is not None)
