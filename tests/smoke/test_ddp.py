"""ICASC under DDP on CPU (gloo, 2 processes): one step's gradients equal one process on the full batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from icasc.losses import ICASCLoss
from icasc.models import ICASCModule
from tests.helpers import FixedData

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


class SaveGrads(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_after_backward(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
        torch.save(grads, self.out / f"rank{trainer.global_rank}.pt")


def make_module() -> ICASCModule:
    torch.manual_seed(0)
    # No BatchNorm: with it, per-process batch statistics legitimately differ from the full batch.
    return ICASCModule({"name": "tiny_cnn", "batchnorm": False}, 4, loss=ICASCLoss(), val_attention=False)


def test_ddp_gradients_equal_single_process_full_batch(tmp_path):
    data = FixedData()
    module = make_module()
    expected_module = make_module()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SaveGrads(tmp_path)],
        inference_mode=False,
    )
    # Global batch 8 = 4 per process; no shuffling, so rank r sees samples r, r+2, ...
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=4, shuffle=False))

    full = next(iter(DataLoader(data, batch_size=8)))
    total, terms, _ = expected_module.compute_loss(full["image"], full["target"])
    assert set(terms) == {"classification", "separation_inner", "separation_last", "consistency"}
    total.backward()
    expected = {n: p.grad for n, p in expected_module.named_parameters() if p.grad is not None}

    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=f"rank {rank}: {name}")


def test_train_py_with_ddp_preset_runs_two_processes(tmp_path):
    """`python train.py trainer=ddp trainer.devices=2` as a user runs it (CPU: gloo)."""
    cmd = [
        sys.executable,
        "train.py",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "data.train_size=64",
        "data.val_size=32",
        "data.batch_size=16",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "figure.num_images=2",
        f"hydra.run.dir={tmp_path}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr + proc.stdout or "GLOBAL_RANK: 1" in proc.stderr + proc.stdout
    assert (tmp_path / "export" / "model.safetensors").exists()
    assert proc.stdout.count("val/top1") == 1  # the summary is printed by rank 0 only
