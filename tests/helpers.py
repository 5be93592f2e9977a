"""Small test fixtures shared by several test files (importable by spawned DDP processes)."""

from __future__ import annotations

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
