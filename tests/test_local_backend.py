"""The local backend runs the same job runner in subprocesses, with the same contract."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import htcml_jupyter as htc
from tests import helpers
from tests.helpers import wait_until


def test_local_map_results_errors_and_attach(map_root: Path) -> None:
    m = htc.map(helpers.fail_on_multiples_of_three, range(8), root=map_root, backend="local",
                chunksize=3)
    assert m.wait(timeout=60)
    assert m.backend.kind == "local"
    assert sorted(m.errors) == [0, 3, 6]
    assert "no multiples of three" in m.errors[3].traceback_text
    again = htc.attach(m.name, root=map_root)
    assert isinstance(again, htc.Map)
    assert again.results(errors="return")[1] == 101
    assert again.status()["done"] == 5


def test_local_cancel_and_retry(map_root: Path, shared_tmp: Path) -> None:
    m = htc.map(helpers.nap, [600, 600], root=map_root, backend="local", chunksize=1)
    workers = min(2, os.cpu_count() or 1)  # the local backend runs one job per CPU
    wait_until(lambda: m.status()["running"] >= workers, timeout=30,
               message=f"{workers} local jobs should be running")
    m.cancel()
    assert m.wait(timeout=30)
    assert m.status()["removed"] == 2

    flag = shared_tmp / "flag"
    f = htc.map(helpers.fail_until_flag, range(3), kwargs={"flag": str(flag)}, root=map_root,
                backend="local")
    assert f.wait(timeout=60) and f.status()["failed"] == 3
    flag.touch()
    assert f.retry() == [0, 1, 2]
    assert f.results(timeout=60) == [0, 1, 2]


def test_no_pool_and_no_fallback_names_the_fix(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONDOR_CONFIG", raising=False)
    monkeypatch.delenv("HTCML_POOL", raising=False)
    monkeypatch.setenv("HTCML_POOL_DIR", str(tmp_path / "no-pool-here"))
    monkeypatch.setenv("HTCML_LOCAL_FALLBACK", "0")
    with pytest.raises(htc.PoolUnavailable, match="htcml pool up"):
        htc.map(helpers.square, [1], root=tmp_path / "maps")
    assert not (tmp_path / "maps").exists() or not list((tmp_path / "maps").iterdir())


def test_fallback_runs_locally_with_a_notice(map_root: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from htcml_jupyter.backends.pools import LocalFallbackNotice

    monkeypatch.delenv("CONDOR_CONFIG", raising=False)
    monkeypatch.delenv("HTCML_POOL", raising=False)
    monkeypatch.setenv("HTCML_POOL_DIR", str(tmp_path / "no-pool-here"))
    monkeypatch.setenv("HTCML_LOCAL_FALLBACK", "1")
    with pytest.warns(LocalFallbackNotice, match="local processes"):
        m = htc.map(helpers.square, range(4), root=map_root)
    assert m.results(timeout=60) == [0, 1, 4, 9]


def test_pool_that_is_down_gives_a_clear_error(map_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "dead_pool_config"
    config.write_text("CONDOR_HOST = 127.0.0.1:1\nSCHEDD_HOST = 127.0.0.1:1\n"
                      "SCHEDD_ADDRESS_FILE = /nonexistent\n")
    with pytest.raises(htc.PoolUnavailable, match=r"htcml pool up|schedd"):
        htc.map(helpers.square, [1, 2], root=map_root, pool=str(config), name="dead")
    assert not (map_root / "dead").exists()


def test_unpicklable_item_leaves_nothing(map_root: Path) -> None:
    import threading

    with pytest.raises(htc.PickleError, match="items starting at 1"):
        htc.map(helpers.square, [1, threading.Lock()], root=map_root, backend="local",
                chunksize=1, name="bad-item")
    assert not (map_root / "bad-item").exists()
