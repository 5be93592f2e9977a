"""Read image files (a file, a directory or a glob) into a normalised batch."""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

__all__ = ["IMAGE_SUFFIXES", "find_images", "load_images", "load_readable_images"]

log = logging.getLogger(__name__)

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
    return torch.stack([_load_image(file, image_size, mean, std) for file in files])


def _load_image(
    file: str | Path, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    with Image.open(file) as im:
        x = TF.to_dtype(TF.pil_to_tensor(im.convert("RGB")), torch.float32, scale=True)
    x = TF.center_crop(TF.resize(x, [image_size], antialias=True), [image_size, image_size])
    return TF.normalize(x, list(mean), list(std))


def load_readable_images(
    files: Sequence[str | Path],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    limit: int | None = None,
) -> tuple[torch.Tensor, list[Path]]:
    """Like :func:`load_images`, but skip the files that cannot be read as images, with a warning each.

    One non-image or damaged file among good ones then costs that file, not the run.

    Args:
        files: Image paths, in order.
        image_size: Output side (shorter side resized to it, then centre crop).
        mean: Normalisation mean.
        std: Normalisation std.
        limit: Stop after this many readable images (``None``: all).

    Returns:
        ``([N, 3, image_size, image_size] float32, the N files read)``.

    Raises:
        ValueError: ``limit`` below 1, or no file is readable (the message names each with its error).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"the number of images must be >= 1, got {limit}")
    batch: list[torch.Tensor] = []
    read: list[Path] = []
    skipped: list[str] = []
    for file in files:
        if limit is not None and len(read) >= limit:
            break
        try:
            batch.append(_load_image(file, image_size, mean, std))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            # PIL: UnidentifiedImageError (an OSError) for non-images, OSError for truncated files,
            # SyntaxError/ValueError for some malformed headers
            skipped.append(f"{file} ({type(error).__name__}: {error})")
            log.warning("skipping %s: not a readable image (%s: %s)", file, type(error).__name__, error)
            continue
        read.append(Path(file))
    if not read:
        raise ValueError(
            f"none of the {len(skipped)} image file(s) could be read: " + "; ".join(skipped) + ". Give image "
            f"files ({'/'.join(IMAGE_SUFFIXES)}) that PIL can open"
        )
    return torch.stack(batch), read
