"""Small test fixtures shared by several test files (importable by spawned DDP processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
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
