"""Image transforms of the datamodules (torchvision ``transforms.v2``), and reading image files as RGB.

Boxes travel through the box-aware pipelines as ``tv_tensors.BoundingBoxes``, so every resize, crop and flip
moves them with the pixels; they come out as float ``xyxy`` in pixels of the transformed image (pixel-edge
coordinates: a box ``(0, 0, W, H)`` covers the whole image), clamped to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from icasc.data.normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CENTRE_CROP",
    "box_transform",
    "centre_view",
    "eval_transform",
    "load_rgb",
    "ten_crop_transform",
    "train_transform",
    "transform_boxes",
]


def load_rgb(path: str | Path) -> Image.Image:
    """Read an image file as RGB (Caltech-256 and CUB hold some greyscale and CMYK images).

    Raises:
        FileNotFoundError: The file is missing.
        ValueError: The file is not an image PIL can read (the message names it).
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} is missing") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image file {path}: {error}") from error


def train_transform(image_size: int, mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD) -> v2.Compose:
    """``RandomResizedCrop(image_size)`` + horizontal flip + float conversion + normalisation."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def eval_transform(
    image_size: int, resize: int, mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD
) -> v2.Compose:
    """Shorter side to ``resize``, centre crop ``image_size``, float conversion, normalisation."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def _stack_crops(crops: Sequence[Tensor]) -> tv_tensors.Image:
    # a plain callable: v2.Compose hands it the whole tuple of crops (v2.Lambda would see one crop at a time)
    return tv_tensors.Image(torch.stack([c.as_subclass(Tensor) for c in crops]))


def ten_crop_transform(
    image_size: int, resize: int, mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD
) -> v2.Compose:
    """Ten-crop evaluation (ResNet paper, ICASC Table 6 "tenCrop"): ``[10, 3, image_size, image_size]``.

    The shorter side goes to ``resize``; the crops are the four corners and the centre, then the same five
    of the horizontally flipped image (torchvision's ``TenCrop`` order).
    """
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, antialias=True),
            v2.TenCrop(image_size),
            _stack_crops,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


# torchvision's TenCrop order: four corners, centre, then the same five of the flipped image.
CENTRE_CROP = 4


def centre_view(images: Tensor) -> Tensor:
    """One view per image: the centre crop of ten-crop batches ``[B, 10, C, H, W]``; other batches unchanged.

    Figures, saliency maps and attention metrics need one picture per image; the scores of ten-crop batches
    average all ten (``ICASCModule``).
    """
    return images[:, CENTRE_CROP] if images.dim() == 5 else images


def box_transform(
    image_size: int,
    resize: int,
    train: bool,
    mean: Any = IMAGENET_MEAN,
    std: Any = IMAGENET_STD,
) -> v2.Compose:
    """Square resize to ``resize x resize``, crop ``image_size`` (random when ``train``, else centred), flip.

    Called as ``transform(image, boxes)`` with ``boxes`` a ``tv_tensors.BoundingBoxes``; the boxes follow the
    image and are clamped to it. ``resize == image_size`` makes the crop a no-op: a plain square resize, the
    ICASC paper's "resized to 448 x 448 for both training and testing" (appendix A.2).
    """
    crop = v2.RandomCrop(image_size) if train else v2.CenterCrop(image_size)
    flip = [v2.RandomHorizontalFlip()] if train else []
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((resize, resize), antialias=True),
            crop,
            *flip,
            v2.ClampBoundingBoxes(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def transform_boxes(transform: v2.Compose, image: Image.Image, boxes_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """Apply a box-aware ``transform`` to ``image`` and its ``[N, 4]`` xyxy pixel boxes.

    Returns:
        The image tensor and the float32 ``[N, 4]`` boxes in pixels of the transformed image.
    """
    boxes = tv_tensors.BoundingBoxes(
        boxes_xyxy.reshape(-1, 4).float(), format="XYXY", canvas_size=(image.height, image.width)
    )
    out_image, out_boxes = transform(image, boxes)
    return out_image, out_boxes.as_subclass(Tensor).to(torch.float32)
