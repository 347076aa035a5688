"""A chain of stages on the isolated pool: DAGMan on the submit side, every stage's jobs
on execute nodes that share nothing and give each job its own ``/tmp``.

Each stage is a map of its own whose environment is packed (``environment="auto"``
resolves to ``pack`` there); what one stage returns goes to the next through the DAG's
PRE script, never through a shared folder on the execute side.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import htcml_jupyter as htc
from htcml_jupyter.devpool import PoolState

pytestmark = [pytest.mark.pool, pytest.mark.isolated]


def _square_and_leave_a_file(x: int) -> int:
    import os

    seen = sorted(n for n in os.listdir("/tmp") if n.startswith("htcml-chain-"))
    with open(f"/tmp/htcml-chain-{x}", "w") as f:  # the next job must not see it
        f.write("x")
    if seen:
        raise RuntimeError(f"another job's /tmp files are visible here: {seen}")
    return x * x


def _total(values: list[int]) -> int:
    return sum(values)


def test_a_chain_runs_on_private_tmp_execute_nodes(isolated_pool: PoolState,
                                                   iso_root: Path) -> None:
    root = iso_root / "chain"
    root.mkdir()
    root.chmod(0o755)
    wf = htc.chain(htc.stage(_square_and_leave_a_file, [1, 2, 3, 4]),
                   htc.stage(_total, over="all"), root=root, pool="isolated")
    try:
        assert wf.wait(timeout=900) == "succeeded", wf.finished_stages()
        assert wf.result() == 1 + 4 + 9 + 16
        first = htc.attach(wf.stage_names[0], root=root)
        assert first.environment["kind"] == "pack"
        assert first.environment["route"] == "transfer"
    finally:
        wf.cancel()
