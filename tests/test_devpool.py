"""The project's pool runs with the settings that start a map's first job at once."""

from __future__ import annotations

import pytest

from htcml_jupyter.backends.bindings import pool_config

pytestmark = pytest.mark.pool


def test_the_running_schedd_and_negotiator_use_the_quick_start_settings(pool: str) -> None:
    with pool_config(pool) as htcondor2:
        collector = htcondor2.Collector()
        schedd = htcondor2.RemoteParam(collector.locate(htcondor2.DaemonType.Schedd))
        negotiator = htcondor2.RemoteParam(
            collector.locate(htcondor2.DaemonType.Negotiator))
        # The submitter ad goes out at once after a submit, and the negotiator answers
        # at once: no 5 s wait before the first job.
        assert schedd["SCHEDD_MIN_INTERVAL"] == "0"
        assert negotiator["NEGOTIATOR_MIN_INTERVAL"] == "0"
        assert negotiator["NEGOTIATOR_CYCLE_DELAY"] == "0"
        # DAG workflows and the sweep watcher (a local-universe job) run here.
        assert schedd["START_LOCAL_UNIVERSE"].lower() == "true"
        assert schedd["DAGMAN_USER_LOG_SCAN_INTERVAL"] == "1"
