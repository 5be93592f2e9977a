"""A dataset over a list of image files, with labels and (optionally) one object box per image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from icasc.data.transforms import load_rgb, transform_boxes

__all__ = ["ImageFileDataset"]


class ImageFileDataset(Dataset):
    """Image files read as RGB into ``{"image", "target"[, "box"]}`` samples.

    Args:
        files: Image paths.
        targets: Class id of each file.
        transform: Without ``boxes``: ``transform(image) -> tensor``; with ``boxes``: a box-aware
            ``transforms.v2`` pipeline (see :func:`~icasc.data.transforms.box_transform`).
        boxes: Optional float ``[N, 4]`` xyxy boxes in pixels of the original images; samples then carry
            ``"box"`` float32 ``[4]`` in pixels of the transformed image.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        targets: Sequence[int] | Tensor,
        transform: Callable,
        boxes: Tensor | None = None,
    ) -> None:
        if len(files) != len(targets):
            raise ValueError(f"{len(files)} files but {len(targets)} targets")
        if boxes is not None and tuple(boxes.shape) != (len(files), 4):
            raise ValueError(f"boxes must be [{len(files)}, 4] xyxy, got {tuple(boxes.shape)}")
        self.files = [Path(f) for f in files]
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
        self.transform = transform
        self.boxes = boxes

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = load_rgb(self.files[index])
        if self.boxes is None:
            return {"image": self.transform(image), "target": self.targets[index]}
        out, box = transform_boxes(self.transform, image, self.boxes[index])
        return {"image": out, "target": self.targets[index], "box": box[0]}
