"""Maps, a sweep, a checkpointed torch training and the tutorials on the isolated pool.

Its execute side shares nothing with this machine (no interpreter, no packages, no map
folders, Python 3.13), as on CHTC or the OSPool: every map here uses the default
``environment="auto"``, which must choose to pack this environment and send it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import htcml_jupyter as htc
from htcml_jupyter.devpool import PoolState
from tests.helpers import fail_on_multiples_of_three, square, wait_until
from tests.test_checkpoint import EPOCHS, train_linear
from tests.test_notebooks import _execute, _outputs

pytestmark = [pytest.mark.pool, pytest.mark.isolated]


def _folder(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir()
    path.chmod(0o755)
    return path


def test_map_results_errors_retry_and_attach(isolated_pool: PoolState, iso_root: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(iso_root, "core")
    m = htc.map(square, range(12), root=root, pool="isolated")
    assert m.results(timeout=600) == [x * x for x in range(12)]
    env = m.environment
    assert env["kind"] == "pack", env          # "auto" saw two filesystem domains
    assert "filesystem domain" in env["reason"]
    assert env["size"] > 10_000_000 and env["archive"]

    flaky = htc.map(fail_on_multiples_of_three, range(6), root=root, pool="isolated")
    out = flaky.results(errors="return", timeout=600)
    assert [out[i] for i in (1, 2, 4, 5)] == [101, 102, 104, 105]
    assert set(flaky.errors) == {0, 3}
    error = flaky.errors[3]
    assert error.type_name.endswith("ValueError") and "no multiples of three" in str(error)
    assert "fail_on_multiples_of_three" in error.traceback_text
    assert flaky.environment.get("cached") is True   # the second map reused the pack

    again = htc.attach(flaky.name, root=root)        # as from another process
    assert again.status() == flaky.status()
    assert again.retry() == [0, 3]
    assert again.wait(timeout=600)
    assert set(again.errors) == {0, 3}               # the same inputs fail the same way
    assert again.job_of(0).task != flaky.job_of(0).task  # ... in new jobs


def test_sweep_reports_live(isolated_pool: PoolState, iso_root: Path) -> None:
    def trial(lr: float, epochs: int = 4) -> dict[str, float]:
        import time

        import htcml_jupyter as htc

        loss = 1.0
        for epoch in range(epochs):
            loss *= 1 - lr
            htc.report(step=epoch, loss=loss)
            time.sleep(0.2)
        return {"loss": loss}

    s = htc.sweep(trial, grid={"lr": [0.1, 0.5, 0.9]}, metric="loss",
                  root=_folder(iso_root, "sweep"), pool="isolated")
    results = s.results(timeout=600)
    assert [round(r["loss"], 6) for r in results] == [round((1 - lr) ** 4, 6)
                                                      for lr in (0.1, 0.5, 0.9)]
    assert s.best().params == {"lr": 0.9}
    assert all(len(s.reports(i)) == 4 for i in range(3))  # chirp crossed the roots


def test_checkpointed_torch_training_survives_eviction(isolated_pool: PoolState,
                                                       iso_root: Path) -> None:
    expected = train_linear(EPOCHS, seed=3)
    m = htc.map(train_linear, [EPOCHS], kwargs={"seed": 3, "pause": 1.0},
                root=_folder(iso_root, "torch"), pool="isolated", request_memory="2GB")
    wait_until(lambda: (m.checkpoints().get(0, {}).get("saved") or -1) >= 1, timeout=600,
               message="no epoch was saved")
    assert m.vacate() == 1
    result: dict[str, Any] = m.results(timeout=600)[0]
    for key, tensor in expected.items():
        assert torch.equal(result[key], tensor), f"{key} differs from an uninterrupted run"
    info = m.checkpoints()[0]
    assert info["evictions"] >= 1 and info["saved"] == EPOCHS - 1
    assert info["resumed"] and info["resumed"][0] >= 1  # from the save, not from scratch


@pytest.fixture
def isolated_notebook_dir(iso_root: Path, request: pytest.FixtureRequest,
                          monkeypatch: pytest.MonkeyPatch) -> Path:
    # The maps go to the default HTCML_HOME, whose pack cache every isolated test shares.
    monkeypatch.setenv("HTCML_POOL", "isolated")
    return _folder(iso_root, f"nb-{request.node.name}")


def test_quickstart_on_the_isolated_pool(isolated_notebook_dir: Path) -> None:
    text = _outputs(_execute("01-quickstart.ipynb", isolated_notebook_dir))
    assert "the project's isolated pool" in text
    assert "20 / 20 done" in text
    assert "'failed': 1" in text and "KeyError" in text
    assert "[0.5, 0.8, 0.3]" in text


def test_real_pools_tutorial(isolated_notebook_dir: Path) -> None:
    text = _outputs(_execute("06-real-pools.ipynb", isolated_notebook_dir))
    assert "pack - the execute machines' filesystem domain" in text
    assert "reused: True" in text
    assert "archive [(25," in text
    assert "VersionMismatch" in text and "3.11" in text and "3.13" in text
    assert 'My.WantGPULab = true' in text and 'My.GPUJobLength = "short"' in text
