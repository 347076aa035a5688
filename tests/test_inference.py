"""Throughput inference on the real pools: a set-up once per job, batches, per-item files
and URLs, output files, and maps of many items."""

from __future__ import annotations

import functools
import http.server
import os
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter.devpool import PoolState
from htcml_jupyter.engine.inputs import InputFileError
from htcml_jupyter.engine.store import MapStore

pytestmark = pytest.mark.pool


def load_model() -> dict[str, Any]:
    """A stand-in for loading weights: slow enough to matter, and it says where it ran."""
    import os
    import time

    time.sleep(0.3)
    return {"scale": 10, "pid": os.getpid()}


def scaled(x: int, model: dict[str, Any], offset: int = 0) -> tuple[int, int]:
    return x * model["scale"] + offset, model["pid"]


def embed_batch(batch: list[int], model: dict[str, Any]) -> list[int]:
    import htcml_jupyter as htc

    if 13 in batch:
        raise ValueError("item 13 poisons its batch")
    (htc.output_dir() / "batch.txt").write_text(" ".join(map(str, batch)))
    return [x * model["scale"] for x in batch]


def wrong_length(batch: list[int]) -> list[int]:
    return batch[:-1]


def broken_setup() -> None:
    raise RuntimeError("weights not found")


def uses(x: int, model: None) -> int:
    return x


def read_file(path: Path) -> str:
    return f"{path.name}:{path.read_text()}"


def read_pair(item: tuple[Path, str], vocab: Path) -> str:
    path, label = item
    return f"{label}:{path.read_text()}:{vocab.read_text()}"


def write_outputs(x: int) -> int:
    import htcml_jupyter as htc

    folder = htc.output_dir()
    (folder / "vector.txt").write_text(str(x * x))
    (folder / "sub").mkdir()
    (folder / "sub" / "note.txt").write_text(f"item {x}")
    return x


def plus_one(x: int) -> int:
    return x + 1


@pytest.fixture
def web(shared_tmp: Path) -> Iterator[str]:
    """A small HTTP server on the loopback address serving ``shared_tmp/web``."""
    folder = shared_tmp / "web"
    folder.mkdir()
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(f"text {i}")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_setup_runs_once_per_job_and_feeds_every_item(pool_env: str, map_root: Path) -> None:
    m = htc.map(scaled, range(12), setup=load_model, kwargs={"offset": 1}, chunksize=4,
                root=map_root)
    out = m.results(timeout=120)
    assert [v for v, _ in out] == [x * 10 + 1 for x in range(12)]
    runs = m.setup_stats()
    assert sorted(r.task for r in runs) == [0, 1, 2]      # once per job, not per item
    assert all(0.25 < r.seconds < 10 and r.job_id for r in runs)
    for task in m.tasks():                                # every item of a job: one model
        assert len({out[i][1] for i in task.items}) == 1


def test_batches_spread_results_and_fail_together(pool_env: str, map_root: Path) -> None:
    m = htc.map(embed_batch, range(20), setup=load_model, batch_size=4, chunksize=8,
                root=map_root)
    out = m.results(errors="return", timeout=120)
    assert set(m.errors) == {12, 13, 14, 15}              # the batch holding item 13
    tracebacks = {m.errors[i].traceback_text for i in (12, 13, 14, 15)}
    assert len(tracebacks) == 1 and "poisons its batch" in tracebacks.pop()
    assert all("ValueError: item 13 poisons its batch" in str(m.errors[i])
               for i in (12, 13, 14, 15))
    assert "embed_batch" in m.errors[12].traceback_text
    assert [out[i] for i in range(20) if i not in m.errors] == \
        [x * 10 for x in range(20) if x not in (12, 13, 14, 15)]
    files = m.output_files(6)                             # batch 4..7
    assert [Path(f).name for f in files] == ["batch.txt"]
    assert Path(files[0]).read_text() == "4 5 6 7"
    assert m.output_files(5) == files and m.output_files(12) == []
    assert "poisons" in m.stderr(14)


def test_a_batch_of_the_wrong_length_and_a_failing_setup(pool_env: str,
                                                         map_root: Path) -> None:
    short = htc.map(wrong_length, range(6), batch_size=3, root=map_root)
    assert short.wait(timeout=120)
    assert set(short.errors) == set(range(6))
    assert "one value per item" in str(short.errors[0])
    assert "got 3 items and returned 2" in str(short.errors[0])

    no_model = htc.map(uses, range(4), setup=broken_setup, chunksize=2, root=map_root)
    assert no_model.wait(timeout=120)
    assert set(no_model.errors) == {0, 1, 2, 3}
    error = no_model.errors[2]
    assert "weights not found" in str(error) and "set-up failed" in error.traceback_text
    assert no_model.setup_stats() == []


def test_files_and_urls_travel_per_item(pool_env: str, map_root: Path, shared_tmp: Path,
                                        web: str) -> None:
    local = shared_tmp / "local.txt"
    local.write_text("on disk")
    items = [htc.File(local), htc.File(f"{web}/doc1.txt"), htc.File(f"{web}/doc2.txt"),
             htc.File(f"{web}/missing.txt")]
    m = htc.map(read_file, items, chunksize=1, root=map_root)
    out = m.results(errors="return", timeout=120)
    assert out[:3] == ["local.txt:on disk", "doc1.txt:text 1", "doc2.txt:text 2"]
    assert isinstance(out[3], htc.ItemHeld)
    assert "missing.txt" in str(out[3]) and "404" in str(out[3])
    # The file went by HTCondor, not inside the pickled inputs.
    store = MapStore.open(map_root, m.name)
    assert b"on disk" not in store.input_file(0).read_bytes()
    assert store.task_files()[1] == [f"{web}/doc1.txt"]


def test_shared_file_goes_once_per_job(pool_env: str, map_root: Path,
                                       shared_tmp: Path) -> None:
    vocab = shared_tmp / "vocab.txt"
    vocab.write_text("V" * 50_000)
    docs = [shared_tmp / f"d{i}.txt" for i in range(4)]
    for i, d in enumerate(docs):
        d.write_text(str(i))
    m = htc.map(read_pair, [(htc.File(d), f"L{i}") for i, d in enumerate(docs)],
                kwargs={"vocab": htc.File(vocab)}, chunksize=2, root=map_root)
    assert m.results(timeout=120) == [f"L{i}:{i}:{'V' * 50_000}" for i in range(4)]
    store = MapStore.open(map_root, m.name)
    assert store.function_file.stat().st_size < 20_000  # the vocabulary is not pickled
    assert store.task_files()[0][0] == str(vocab)


def test_a_missing_file_is_refused_before_anything_exists(pool_env: str, map_root: Path,
                                                          shared_tmp: Path) -> None:
    with pytest.raises(InputFileError, match=r"item 1: the input file .*nope.txt does not"):
        htc.map(read_file, [htc.File(__file__), htc.File("/tmp/nope.txt")], root=map_root)
    for folder in ("a", "b"):
        (shared_tmp / folder).mkdir()
        (shared_tmp / folder / "same.txt").write_text(folder)
    with pytest.raises(InputFileError, match=r"would both be 'same\.txt'"):
        htc.map(read_file, [htc.File(shared_tmp / "a" / "same.txt"),
                            htc.File(shared_tmp / "b" / "same.txt")],
                chunksize=2, root=map_root)
    assert list(map_root.iterdir()) == []


def test_output_files_come_back_per_item_or_to_a_destination(pool_env: str, map_root: Path,
                                                            shared_tmp: Path) -> None:
    m = htc.map(write_outputs, range(5), chunksize=5, root=map_root)
    assert m.results(timeout=120) == list(range(5))
    files = [Path(f) for f in m.output_files(3)]
    call_folder = m.store.files_folder(m.job_of(3).task) / "3"
    assert files == [call_folder / "sub" / "note.txt", call_folder / "vector.txt"]
    assert files[1].read_text() == "9" and files[0].read_text() == "item 3"

    destination = shared_tmp / "vectors"
    destination.mkdir()
    if os.geteuid() == 0:
        os.chown(destination, MapStore.open(map_root, m.name).path.stat().st_uid, -1)
    d = htc.map(write_outputs, range(3), chunksize=1, root=map_root,
                output_destination=str(destination))
    assert d.results(timeout=120) == [0, 1, 2]
    assert (destination / "task-2" / "2" / "vector.txt").read_text() == "4"
    assert d.output_files(2) == [destination / "task-2" / "2" / "sub" / "note.txt",
                                 destination / "task-2" / "2" / "vector.txt"]


def test_many_items_stream_into_few_files(pool_env: str, map_root: Path) -> None:
    consumed = []

    def numbers() -> Iterator[int]:
        for i in range(30_000):
            consumed.append(i)
            yield i

    m = htc.map(plus_one, numbers(), chunksize=5_000, root=map_root)
    assert len(consumed) == 30_000 and len(m) == 30_000
    results = iter(m.iter_results(timeout=300))
    assert next(results) == 1
    assert list(results) == list(range(2, 30_001))
    assert m.status()["done"] == 30_000
    files = sum(len(f) for _, _, f in os.walk(m.store.path))
    assert files < 60, files                               # per job, not per item
    store = MapStore.open(map_root, m.name)
    assert all(isinstance(items, range) for _, items in store.tasks())
    assert len((store.path / "tasks.jsonl").read_text()) < 1_000
    with store.input_file(5).open("rb") as f:
        assert b'"span": [25000, 5000]' in f.readline() + f.readline()
        assert len(pickle.loads(f.read())) == 5_000


def test_the_cell_magic_takes_setup_and_batches(pool_env: str, map_root: Path,
                                                ip: Any, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    monkeypatch.setenv("HTCML_HOME", str(map_root))
    ip.user_ns["words"] = ["a", "bb", "ccc", "dddd", "eeeee"]
    ip.run_cell_magic("htc_map", "--over words --setup load_vocab --batch-size 2 --wait "
                      "--no-panel -o lengths",
                      "def load_vocab():\n    return {'bonus': 100}\n\n"
                      "def measure(batch, vocab):\n"
                      "    return [len(w) + vocab['bonus'] for w in batch]\n")
    assert ip.user_ns["lengths"] == [101, 102, 103, 104, 105]


def test_late_materialization_for_maps_of_many_jobs(map_root: Path) -> None:
    from htcml_jupyter.backends.submit_description import submit_description
    from htcml_jupyter.engine.options import LATE_MATERIALIZATION, SubmitOptions

    store = MapStore.create(map_root, "late", {"name": "late"})
    many = submit_description(store, SubmitOptions(), batch_name="late",
                              jobs=LATE_MATERIALIZATION + 1, job_files=[])
    assert many["max_idle"] == str(LATE_MATERIALIZATION)
    few = submit_description(store, SubmitOptions(), batch_name="late", jobs=10, job_files=[])
    assert "max_idle" not in few
    chosen = submit_description(store, SubmitOptions.from_kwargs({"max_materialize": 50}),
                                batch_name="late", jobs=5000, job_files=[])
    assert chosen["max_materialize"] == "50" and "max_idle" not in chosen


@pytest.mark.isolated
def test_inference_on_a_pool_that_shares_nothing(isolated_pool: PoolState, iso_root: Path,
                                                 web: str) -> None:
    root = iso_root / "inference"
    root.mkdir()
    root.chmod(0o755)
    m = htc.map(embed_batch, range(8), setup=load_model, batch_size=2, chunksize=4,
                root=root, pool="isolated")
    assert m.results(timeout=600) == [x * 10 for x in range(8)]
    assert len(m.setup_stats()) == 2
    assert Path(m.output_files(3)[0]).read_text() == "2 3"
    files = htc.map(read_file, [htc.File(f"{web}/doc0.txt"), htc.File(__file__)],
                    chunksize=1, root=root, pool="isolated")
    out = files.results(timeout=600)
    assert out[0] == "doc0.txt:text 0"
    assert out[1].startswith("test_inference.py:") and "shares nothing" in out[1]
