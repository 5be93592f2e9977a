"""Read image files (a file, a directory or a glob) into a normalised batch."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

__all__ = ["IMAGE_SUFFIXES", "find_images", "load_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def find_images(spec: str | Path) -> list[Path]:
    """The image files named by ``spec``: one file, every image in a directory, or a glob pattern (sorted).

    Raises:
        FileNotFoundError: Nothing matches (the message says what was looked for where).
    """
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
    if not files:
        raise FileNotFoundError(
            f"no images found for {str(spec)!r}: give an image file, a directory holding "
            f"{'/'.join(IMAGE_SUFFIXES)} files, or a glob such as 'photos/*.jpg'"
        )
    return files


def load_images(
    files: Sequence[str | Path], image_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Load RGB images, resize (shorter side to ``image_size``, then centre crop) and normalise.

    Returns:
        ``[N, 3, image_size, image_size]`` float32.
    """
    batch = []
    for file in files:
        with Image.open(file) as im:
            x = TF.to_dtype(TF.pil_to_tensor(im.convert("RGB")), torch.float32, scale=True)
        x = TF.center_crop(TF.resize(x, [image_size], antialias=True), [image_size, image_size])
        batch.append(TF.normalize(x, list(mean), list(std)))
    return torch.stack(batch)
