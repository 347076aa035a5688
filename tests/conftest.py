"""Shared fixtures: the project's real HTCondor pool and a map root its jobs can see."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from htcml_jupyter import devpool
from htcml_jupyter.backends.pools import project_backend


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
    import htcondor2

    from htcml_jupyter.backends.condor import activate_config

    activate_config(state.client_config)
    try:
        htcondor2.Schedd().act(htcondor2.JobAction.Remove,
                               f'regexp("^{root}/", Iwd)')
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    os.environ.setdefault("HTCML_LOCAL_FALLBACK", "0")


@pytest.fixture(scope="session")
def ip() -> object:
    """One real IPython InteractiveShell for the session, with the extension loaded."""
    from IPython.testing.globalipapp import get_ipython, start_ipython

    shell = start_ipython() or get_ipython()
    assert shell is not None
    shell.run_line_magic("load_ext", "htcml_jupyter")
    return shell
