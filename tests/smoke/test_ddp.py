"""ICASC under DDP on CPU (gloo, 2 processes): one step's gradients equal one process on the full batch.

``data.batch_size`` is the global batch: with 2 processes each loads half of it, and one step's all-reduced
gradient equals that of a single process on the whole batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from icasc.data import SyntheticDataModule
from icasc.losses import ICASCLoss
from icasc.models import ICASCModule
from tests.helpers import SpawnDDPStrategy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


class SaveGrads(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx) -> None:
        self.batch_size = int(batch["image"].shape[0])

    def on_after_backward(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
        saved = {
            "grads": grads,
            "batch_size": self.batch_size,
            "per_device": trainer.datamodule.per_device_batch_size,
        }
        torch.save(saved, self.out / f"rank{trainer.global_rank}.pt")


def make_module() -> ICASCModule:
    torch.manual_seed(0)
    # No BatchNorm: with it, per-process batch statistics legitimately differ from the full batch.
    return ICASCModule({"name": "tiny_cnn", "batchnorm": False}, 4, loss=ICASCLoss(), val_attention=False)


def make_data() -> SyntheticDataModule:
    # global batch 8 = the whole training split; no augmentation, so every sample is fixed
    return SyntheticDataModule(num_classes=4, image_size=32, train_size=8, batch_size=8, augment=False)


def test_ddp_gradients_equal_single_process_full_batch(tmp_path):
    module = make_module()
    expected_module = make_module()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=SpawnDDPStrategy(),
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SaveGrads(tmp_path)],
        inference_mode=False,
    )
    # data.batch_size=8 is global: each of the 2 processes loads 4 distinct samples of the 8 (the
    # DistributedSampler splits a permutation), and the averaged gradient is that of the mean loss over all 8
    trainer.fit(module, datamodule=make_data())

    data = make_data()
    data.setup("fit")
    full = next(iter(DataLoader(data.train_dataset, batch_size=8)))
    total, terms, _ = expected_module.compute_loss(full["image"], full["target"])
    assert set(terms) == {"classification", "separation_inner", "separation_last", "consistency"}
    total.backward()
    expected = {n: p.grad for n, p in expected_module.named_parameters() if p.grad is not None}

    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert saved["batch_size"] == saved["per_device"] == 4
        got = saved["grads"]
        assert got.keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=f"rank {rank}: {name}")


def test_train_py_with_ddp_preset_runs_two_processes(tmp_path):
    """`python train.py trainer=ddp trainer.devices=2` as a user runs it (CPU: gloo); batch 16 is global."""
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
    # 64 training images in global batches of 16 (8 per process): 4 optimiser steps in the epoch
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 4
