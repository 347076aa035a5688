"""`htcml pool up` and `scripts/demo` never start daemons on a machine that already
belongs to an HTCondor pool (an access point); the project's own pools still start.

The foreign pool here is a real one: the project's running pool, named by a
configuration file the project did not write (as an access point's would be).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from htcml_jupyter import devpool
from htcml_jupyter.backends.bindings import pool_config
from htcml_jupyter.devpool import guard

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.pool


def _collector_of(client_config: str) -> str:
    """The running project pool's collector, as ``host:port``."""
    address = guard.project_addresses([Path(client_config).parent])
    assert address, client_config
    return f"{address[0][0]}:{address[0][1]}"


def _site_config(tmp_path: Path, collector: str) -> Path:
    """A configuration such as an access point has, naming a pool that answers."""
    path = tmp_path / "condor_config"
    path.write_text(f"# the site's HTCondor configuration\nCOLLECTOR_HOST = {collector}\n"
                    f"SEC_CLIENT_AUTHENTICATION_METHODS = FS\n")
    return path


def _masters() -> set[int]:
    """Every condor_master process on this machine."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "condor_master":
                pids.add(int(pid))
        except OSError:
            continue
    return pids


def _master_start_time(config: str) -> int:
    with pool_config(config) as htcondor2:
        ads = htcondor2.Collector().query(htcondor2.AdType.Master,
                                          projection=["DaemonStartTime"])
    assert len(ads) == 1, ads
    return int(ads[0]["DaemonStartTime"])


@pytest.mark.parametrize("isolated", [False, True])
def test_pool_up_declines_a_condor_config_it_did_not_write(pool: str, tmp_path: Path,
                                                           isolated: bool) -> None:
    """CONDOR_CONFIG naming the site's configuration: `htcml pool up` (and `--isolated`)
    says why it stops and how to go on, exits 3 and starts or restarts nothing, even
    though that configuration leads to a pool that answers."""
    site = _site_config(tmp_path, _collector_of(pool))
    started, masters = _master_start_time(pool), _masters()
    env = {**os.environ, "CONDOR_CONFIG": str(site)}
    cmd = [sys.executable, "-m", "htcml_jupyter.cli", "pool", "up"]
    up = subprocess.run(cmd + (["--isolated"] if isolated else []), capture_output=True,
                        text=True, timeout=120, env=env)
    assert up.returncode == guard.DECLINED, (up.returncode, up.stdout, up.stderr)
    assert "already belongs to an HTCondor pool" in up.stderr, up.stderr
    assert f"CONDOR_CONFIG names {site}" in up.stderr and "unset CONDOR_CONFIG" in up.stderr
    assert "starting condor_master" not in up.stderr and "pool up" not in up.stdout
    assert _masters() == masters                      # no daemon started anywhere
    assert _master_start_time(pool) == started        # nor the project's pool restarted


def test_pool_up_still_runs_with_the_projects_own_configuration(pool: str) -> None:
    """The project's own client configuration in CONDOR_CONFIG is no foreign pool."""
    up = subprocess.run([sys.executable, "-m", "htcml_jupyter.cli", "pool", "up"],
                        capture_output=True, text=True, timeout=180,
                        env={**os.environ, "CONDOR_CONFIG": pool})
    assert up.returncode == 0, up.stderr
    assert "already belongs" not in up.stderr and "pool up" in up.stdout


def test_demo_stops_before_installing_anything(pool: str, tmp_path: Path) -> None:
    """`scripts/demo` on an access point: the message and exit 3 within seconds, before
    it creates a virtual environment or starts a pool."""
    site = _site_config(tmp_path, _collector_of(pool))
    env = {**os.environ, "CONDOR_CONFIG": str(site), "PYTHON": sys.executable}
    venv_before = (REPO / ".venv").stat().st_mtime if (REPO / ".venv").exists() else None
    demo = subprocess.run(["bash", str(REPO / "scripts/demo")], capture_output=True,
                          text=True, timeout=60, env=env)
    assert demo.returncode == guard.DECLINED, (demo.stdout, demo.stderr)
    assert "scripts/demo starts no HTCondor daemons here" in demo.stderr, demo.stderr
    assert "map " not in demo.stdout                  # the demo's map never ran
    after = (REPO / ".venv").stat().st_mtime if (REPO / ".venv").exists() else None
    assert after == venv_before


def test_a_system_configuration_counts_only_when_its_pool_answers(pool: str,
                                                                  tmp_path: Path) -> None:
    """/etc/condor/condor_config and the like (here: a file standing in for it) make a
    foreign pool when its collector answers and is not one of the project's pools;
    HTCondor installed but not running (Binder's image) does not."""
    site = _site_config(tmp_path, _collector_of(pool))
    found = guard.find_foreign_pool(system_configs=[site], own=[])
    assert found is not None and not found.from_environment
    assert f"{site} configures a pool" in found.message()
    assert "its collector answers at" in found.reason
    assert "stop this machine's HTCondor daemons" in found.message()
    # The same collector, known to be the project's own pool: not foreign.
    assert guard.find_foreign_pool(system_configs=[site]) is None
    # CONDOR_CONFIG naming the project's own configuration hides no system pool.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONDOR_CONFIG", pool)
        found = guard.find_foreign_pool(system_configs=[site], own=[])
    assert found is not None and found.config == str(site)
    idle = tmp_path / "idle_config"
    idle.write_text("COLLECTOR_HOST = 127.0.0.1:1\n"
                    f"SCHEDD_ADDRESS_FILE = {tmp_path}/no-schedd-address\n")
    assert guard.find_foreign_pool(system_configs=[idle], own=[]) is None


def test_addresses_in_every_form_htcondor_writes() -> None:
    assert guard.parse_address("cm.chtc.wisc.edu") == ("cm.chtc.wisc.edu", 9618)
    assert guard.parse_address("127.0.0.1:9718") == ("127.0.0.1", 9718)
    assert guard.parse_address("<128.104.100.44:9618?addrs=128.104.100.44-9618&noUDP"
                               "&sock=schedd_4216_675f>") == ("128.104.100.44", 9618)
    assert guard.parse_address("[::1]:9620") == ("::1", 9620)
    assert guard.parse_address("a.example:9618, b.example:9618") == ("a.example", 9618)
    assert guard.parse_address("$(CONDOR_HOST)") is None
    assert guard.parse_address("") is None


def test_foreign_pool_error_is_a_pool_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Python callers of ``devpool.up`` get a PoolError subclass with the message."""
    site = tmp_path / "condor_config"
    site.write_text("COLLECTOR_HOST = 127.0.0.1:1\n")
    monkeypatch.setenv("CONDOR_CONFIG", str(site))
    with pytest.raises(devpool.PoolError, match="unset CONDOR_CONFIG") as info:
        devpool.up(state_dir=tmp_path / "never-made")
    monkeypatch.undo()
    assert isinstance(info.value, devpool.ForeignPoolError)
    assert not (tmp_path / "never-made").exists()
