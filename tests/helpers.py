"""Small test fixtures shared by several test files (importable by spawned DDP processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import Dataset


class FixedData(Dataset):
    """``n`` seeded random 32×32 images with labels ``i % classes``, as dict samples."""

    def __init__(self, n: int = 8, classes: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.targets = torch.arange(n) % classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "target": self.targets[i]}


class SpawnDDPStrategy(DDPStrategy):
    """``ddp_spawn`` whose worker processes destroy their process group when the trainer is done with it.

    Lightning leaves a gloo process group alive (it destroys only NCCL groups at exit); a spawned worker then
    exits with gloo's threads still running, and their destructors can abort it at interpreter shutdown
    (SIGABRT, "terminate called without an active exception"): the flaky DDP test of issue 10.
    """

    def __init__(self) -> None:
        super().__init__(start_method="spawn")

    def teardown(self) -> None:
        super().teardown()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def save_tiny_checkpoint(path: Path, **module_kwargs):
    """Train an ICASCModule (tiny_cnn, 5 classes) for one step, save a real Lightning checkpoint at ``path``.

    ``module_kwargs`` go to ``ICASCModule`` (e.g. ``pointing_tolerance``). Returns the trained module.
    """
    import lightning as L
    from torch.utils.data import DataLoader

    from icasc.models import ICASCModule

    torch.manual_seed(0)
    module = ICASCModule("tiny_cnn", num_classes=5, **{"val_attention": False, **module_kwargs})
    data = [{"image": torch.randn(3, 32, 32), "target": torch.tensor(i % 5)} for i in range(4)]
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    trainer.save_checkpoint(path)
    return module


def train_tiny(out: Path, *overrides: str) -> Path:
    """Train the tiny synthetic run of the smoke tests (``conf/train.yaml`` + TINY, no figure) into ``out``.

    Returns ``out``, which then holds ``checkpoints/`` and ``export/`` as a user's run directory does.
    """
    # Imported here: the DDP tests' spawned processes import this module and need neither Hydra nor train.
    from icasc.tasks.train import run as train
    from tests.conftest import compose_train

    train(compose_train(["figure.enabled=false", *overrides], out))
    return out


def run_train_py(*args: str) -> subprocess.CompletedProcess:
    """``python train.py *args`` from the repository root, as users run it (full Hydra errors)."""
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
