"""The htcml command against the project's pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from tests import helpers

pytestmark = pytest.mark.pool


def _htcml(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "htcml_jupyter.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_pool_status_lists_slots(pool: str) -> None:
    out = _htcml("pool", "status")
    assert out.returncode == 0, out.stderr
    assert "pool up" in out.stdout and "GPUs" in out.stdout


def test_maps_status_cancel_clean(pool_env: str, map_root: Path) -> None:
    done = htc.map(helpers.fail_on_multiples_of_three, range(4), root=map_root, name="cli-a")
    slow = htc.map(helpers.nap, [600], root=map_root, name="cli-b")
    assert done.wait(timeout=120)
    listing = _htcml("--root", str(map_root), "maps")
    assert "cli-a" in listing.stdout and "cli-b" in listing.stdout
    status = _htcml("--root", str(map_root), "status", "cli-a")
    assert "done 2" in status.stdout and "failed 2" in status.stdout
    assert "ValueError" in status.stdout
    cancel = _htcml("--root", str(map_root), "cancel", "cli-b")
    assert cancel.returncode == 0
    assert slow.wait(timeout=60) and slow.status()["removed"] == 1
    missing = _htcml("--root", str(map_root), "status", "nope")
    assert missing.returncode == 2 and "no map named 'nope'" in missing.stderr
    assert _htcml("--root", str(map_root), "clean").returncode == 2
    cleaned = _htcml("--root", str(map_root), "clean", "--finished")
    assert "2 maps deleted" in cleaned.stdout
    assert htc.list_maps(map_root) == []


def _master_start_time(config: str) -> int:
    """When the pool's condor_master started, as its ad in the collector says."""
    with pool_config(config) as htcondor2:
        ads = htcondor2.Collector().query(htcondor2.AdType.Master,
                                          projection=["DaemonStartTime"])
    assert len(ads) == 1, ads
    return int(ads[0]["DaemonStartTime"])


def test_pool_up_with_a_client_configuration_in_the_environment(pool: str) -> None:
    """`htcml pool up` must not hand the client's CONDOR_CONFIG to the pool's daemons or
    tools.  On the running pool it checks the daemons through those tools, finds them
    alive and leaves them running: with the client's CONDOR_CONFIG leaking through, they
    would read the wrong configuration and the command would fail or start a second
    condor_master."""
    started = _master_start_time(pool)
    env = {**os.environ, "CONDOR_CONFIG": pool}
    up = subprocess.run([sys.executable, "-m", "htcml_jupyter.cli", "pool", "up"],
                        capture_output=True, text=True, timeout=180, env=env)
    assert up.returncode == 0, up.stderr
    assert "pool up" in up.stdout and "8 CPUs" in up.stdout, up.stdout
    assert "starting condor_master" not in up.stderr, up.stderr
    assert _master_start_time(pool) == started  # the same daemons: nothing was restarted
    status = _htcml("pool", "status")
    assert status.returncode == 0 and "pool up" in status.stdout
