"""The tutorial notebooks, executed against the project's pool with their outputs checked."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"

pytestmark = pytest.mark.pool

#: Cells whose map is meant to fail (by a piece of their source), per notebook: only
#: there may a map's failure be told on stderr.
EXPECTED_FAILURES: dict[str, tuple[str, ...]] = {
    "01-quickstart.ipynb": ("--over fruit", "prices.wait()", "prices.errors[2]"),
    "05-multinode.ipynb": ("bad = htc.torchrun(fragile",),
    "06-real-pools.ipynb": ("bad = htc.map(where",),
}


def map_stderr(name: str, nb: Mapping[str, Any]) -> list[str]:
    """The stderr streams of an executed notebook outside the cells whose map is meant
    to fail: a map that succeeds says nothing on stderr (JupyterLab shows stderr as an
    error), so this list must be empty."""
    allowed = EXPECTED_FAILURES.get(name, ())
    found = []
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or any(a in source for a in allowed):
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out.get("text", ""))
                found.append(f"{source[:60]!r} printed on stderr: {text[:300]!r}")
    return found


def _execute(name: str, workdir: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run a tutorial with nbclient, save it under test-output/notebooks, and check that
    no map that succeeded wrote to stderr."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    out_dir = Path(__file__).parent.parent / "test-output" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / name)
    noise = map_stderr(name, nb)
    assert not noise, "\n".join(noise)
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


def test_adaptive_search(pool: str, notebook_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    import time

    monkeypatch.setenv("HTCML_POOL", pool)
    start = time.monotonic()
    text = _outputs(_execute("07-adaptive-search.ipynb", notebook_dir))
    elapsed = time.monotonic() - start
    assert "trials: 16" in text and "'PRUNED'" in text  # Hyperband stopped some trials
    assert "aborted early" in text
    assert "best: {'lr':" in text and "importances: {" in text
    accuracy = re.search(r"test accuracy: ([0-9.]+)", text)
    assert "GridSearchCV best: {'hidden_layer_sizes'" in text and accuracy
    assert float(accuracy.group(1)) > 0.85
    assert elapsed < 300, f"the tutorial took {elapsed:.0f} s"
