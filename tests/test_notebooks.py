"""The tutorial notebooks, executed against the project's pool with their outputs checked."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"

pytestmark = pytest.mark.pool


def _execute(name: str, workdir: Path, timeout: int = 600) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    out_dir = Path(__file__).parent.parent / "test-output" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / name)
    return nb


def _outputs(nb: nbformat.NotebookNode) -> str:
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"cell failed: {cell.source[:80]}"
            if "text" in out:
                texts.append(out["text"])
            for key in ("text/plain", "text/html"):
                if key in out.get("data", {}):
                    texts.append(out["data"][key])
    return "\n".join(texts)


@pytest.fixture
def notebook_dir(map_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    workdir = map_root / "work"
    workdir.mkdir()
    workdir.chmod(0o755)
    home = map_root / "home"
    (home / "maps").mkdir(parents=True)
    for p in (home, home / "maps"):
        p.chmod(0o755)
    monkeypatch.setenv("HTCML_HOME", str(home))
    return workdir


def test_quickstart(pool: str, notebook_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTCML_POOL", pool)
    nb = _execute("01-quickstart.ipynb", notebook_dir)
    text = _outputs(nb)
    assert "CPUs" in text and "GPUs" in text            # %htc_pool
    assert "20 / 20 done" in text                        # the final state of the map
    assert "'failed': 1" in text and "KeyError" in text  # the failed item and its traceback
    assert "[0.5, 0.8, 0.3]" in text                     # after the retry
    assert "slow_square" in text and "price" in text     # %htc_maps


def test_hyperparameter_sweep(pool: str, notebook_dir: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTCML_POOL", pool)
    text = _outputs(_execute("02-hyperparameter-sweep.ipynb", notebook_dir))
    assert "(1347, 64) (450, 64)" in text
    assert "aborted early" in text
    import re

    steps = [int(n) for n in re.findall(r"aborted early\s+(\d+)", text)]
    assert steps and min(steps) < 15  # the slow learners stopped long before epoch 30
    assert "best trial:" in text and "test accuracy of the best model" in text


def test_checkpointing(pool: str, notebook_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTCML_POOL", pool)
    text = _outputs(_execute("03-checkpointing.ipynb", notebook_dir))
    assert "evicting now" in text
    assert "evicted 1 job" in text and "evictions: 1" in text
    assert "resumed after the eviction from epoch: [" in text
    assert "identical to an uninterrupted run: True" in text
