"""The embeddings tutorial (notebooks/04-embeddings.ipynb), executed against the
project's pool: its printed outputs, and the map it left behind read back here."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest

import htcml_jupyter as htc
from tests.test_notebooks import NOTEBOOKS, _execute, _outputs

pytestmark = pytest.mark.pool

NOTEBOOK = "04-embeddings.ipynb"
BATCH = 64  # the notebook's batch_size


def _tutorial_sentences() -> list[str]:
    """The sentences, made here by the notebook's own cell tagged ``corpus``."""
    nb = nbformat.read(NOTEBOOKS / NOTEBOOK, as_version=4)
    [cell] = [c for c in nb.cells if "corpus" in c.metadata.get("tags", [])]
    namespace: dict[str, Any] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(cell.source, namespace)
    return list(namespace["sentences"])


@pytest.fixture
def tutorial_home(map_root: Path, monkeypatch: pytest.MonkeyPatch, pool: str) -> Path:
    """A working folder and an HTCML_HOME for the notebook, as test_notebooks gives them;
    returns the working folder (the maps lie in ``../home/maps``)."""
    workdir = map_root / "work"
    home = map_root / "home"
    for folder in (workdir, home, home / "maps"):
        folder.mkdir(parents=True)
        folder.chmod(0o755)
    monkeypatch.setenv("HTCML_HOME", str(home))
    monkeypatch.setenv("HTCML_POOL", pool)
    return workdir


def test_embeddings_tutorial(tutorial_home: Path) -> None:
    text = _outputs(_execute(NOTEBOOK, tutorial_home))
    sentences = _tutorial_sentences()
    n = len(sentences)
    assert n > 1000

    # every sentence got a vector, read from one .npy file per batch
    found = re.search(r"(\d+) vectors for (\d+) sentences, from (\d+) files; each of (\d+)",
                      text)
    assert found, text[-2000:]
    assert [int(g) for g in found.groups()] == [n, n, math.ceil(n / BATCH), 384]

    # the model was loaded once per job
    runs = re.search(r"setup ran (\d+) times for (\d+) jobs", text)
    assert runs and runs.group(1) == runs.group(2) and int(runs.group(1)) >= 1

    # search by meaning: the exception question finds the exception handlers
    hits = re.search(r"'How do I catch an exception\?'\n  (\d\.\d{3})  (.*)\n", text)
    assert hits and "except" in hits.group(2).lower() and float(hits.group(1)) > 0.5
    assert "nearest to itself: True" in text
    probe = sentences[n // 2]
    assert re.search(rf"  1\.000  {re.escape(probe)}\n", text)
    diff = re.search(r"largest difference from vectors computed in the kernel: (\S+)", text)
    assert diff and float(diff.group(1)) < 1e-4

    # the map, attached from its folder: setup runs, output files and rows agree
    root = tutorial_home.parent / "home" / "maps"
    [info] = htc.list_maps(root=root)
    m = htc.attach(info.name, root=root)
    try:
        setup_runs = m.setup_stats()
        jobs = {t.task for t in m.tasks()}
        assert sorted(r.task for r in setup_runs) == sorted(jobs)
        assert all(r.seconds > 0 for r in setup_runs)
        rows = list(m.iter_results())
        assert len(rows) == n
        files = {i: m.output_files(i) for i in range(n)}
        assert all(len(f) == 1 and Path(f[0]).suffix == ".npy" for f in files.values())
        by_file: dict[Path, list[int]] = {}
        for i in range(n):
            by_file.setdefault(Path(files[i][0]), []).append(i)
        assert len(by_file) == math.ceil(n / BATCH)
        arrays = {path: np.load(path) for path in by_file}
        for path, items in by_file.items():
            assert [rows[i] for i in items] == list(range(len(items)))
            assert arrays[path].shape == (len(items), 384)
            norms = np.linalg.norm(arrays[path], axis=1)
            assert np.allclose(norms, 1.0, atol=1e-4)
    finally:
        m.close()
