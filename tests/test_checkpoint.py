"""Epoch checkpoints that survive eviction (HTCondor self-checkpointing), with torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch  # installed by scripts/setup-env (the CPU build)

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from tests.helpers import wait_until

EPOCHS = 6


def train_linear(epochs: int, seed: int = 0, pause: float = 0.0) -> dict[str, Any]:
    """A small regression trained with SGD; checkpoints model, optimizer and RNG."""
    import time

    import torch

    import htcml_jupyter as htc

    ckpt = htc.checkpoint(every=0)
    state = ckpt.restore()
    torch.manual_seed(seed)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"])
        start = state["epoch"] + 1
    for epoch in range(start, epochs):
        perm = torch.randperm(256)
        for i in range(0, 256, 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            loss = ((model(x[idx]) - y[idx]) ** 2).mean()
            loss.backward()
            opt.step()
        htc.report(step=epoch, loss=loss.item())
        time.sleep(pause)
        ckpt.save({"model": model.state_dict(), "opt": opt.state_dict(),
                   "rng": torch.get_rng_state(), "epoch": epoch}, step=epoch)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.pool
def test_vacated_training_resumes_and_matches_an_uninterrupted_run(
        pool_env: str, map_root: Path) -> None:
    expected = train_linear(EPOCHS, seed=3)  # uninterrupted, in this process
    m = htc.map(train_linear, [EPOCHS], kwargs={"seed": 3, "pause": 0.5}, root=map_root,
                request_memory="1GB")
    wait_until(lambda: (m.checkpoints().get(0, {}).get("saved") or -1) >= 2, timeout=180,
               message="no checkpoint of epoch 2 was saved")
    saved_before = m.checkpoints()[0]["saved"]
    assert saved_before is not None and saved_before >= 2
    assert m.item_states()[0] is not htc.ItemState.DONE
    with pool_config(pool_env) as htcondor2:
        htcondor2.Schedd().act(htcondor2.JobAction.Vacate, [m.job_of(0).job_id])
    result = m.results(timeout=240)[0]
    for key, tensor in expected.items():
        assert torch.equal(result[key], tensor), f"{key} differs from the uninterrupted run"
    epochs_run = [r["step"] for r in m.reports(0)]
    assert sorted(set(epochs_run)) == list(range(EPOCHS))
    assert len(epochs_run) <= EPOCHS + 1, f"ran epochs {epochs_run}"
    info = m.checkpoints()[0]
    assert info["evictions"] >= 1
    assert info["saved"] == EPOCHS - 1
    assert info["resumed"] and info["resumed"][0] >= saved_before - 1  # not from scratch
    assert m.job_of(0).starts >= 2


def test_local_backend_restarts_after_checkpoint_exits(map_root: Path) -> None:
    m = htc.map(train_linear, [3], kwargs={"seed": 1}, root=map_root, backend="local")
    result = m.results(timeout=120)[0]
    expected = train_linear(3, seed=1)
    assert all(torch.equal(result[k], v) for k, v in expected.items())
    assert m.checkpoints()[0]["restored"] == [0, 1, 2]  # a restart after every save
    assert [r["step"] for r in m.reports(0)] == [0, 1, 2]


@pytest.mark.pool
def test_device_falls_back_to_cpu_on_simulated_gpus(pool_env: str, map_root: Path) -> None:
    def where(_: int) -> tuple[str, str]:
        import os

        import htcml_jupyter as htc

        return htc.device(), os.environ.get("CUDA_VISIBLE_DEVICES", "")

    m = htc.map(where, [0], root=map_root, request_gpus=1)
    device, visible = m.results(timeout=120)[0]
    assert visible.startswith("GPU-")  # HTCondor assigned a (simulated) GPU
    assert device == "cpu"  # torch sees no CUDA device, so training falls back to the CPU


def test_device_is_cpu_without_a_usable_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests install torch's CPU build (scripts/setup-env): it never reports CUDA.
    assert not torch.cuda.is_available()
    assert htc.device() == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-00000000")  # assigned, not usable
    assert htc.device() == "cpu"
    monkeypatch.setitem(sys.modules, "torch", None)  # no torch at all: import fails
    assert htc.device() == "cpu"
