"""Steps 2-3 of Group-CAM fine-tuning (Group-CAM paper §5): binarise the map, blur all but the object."""

from __future__ import annotations

from typing import NamedTuple

import torch

from icasc.saliency.groupcam import compose

__all__ = ["COMPOSITIONS", "MODES", "THRESHOLDS", "Augmented", "binarize", "compose_augmented"]

THRESHOLDS = ("image_mean", "batch_mean")
COMPOSITIONS = ("paper", "reference_code")
MODES = ("replace", "append")


class Augmented(NamedTuple):
    """One augmentation: ``images`` ``[N, C, H, W]``, ``maps`` and binary ``masks`` ``[N, H, W]``.

    ``index``: the ``[N]`` positions of these images in their batch (``None``: all of it, in order).
    """

    images: torch.Tensor
    maps: torch.Tensor
    masks: torch.Tensor
    index: torch.Tensor | None = None


def binarize(maps: torch.Tensor, threshold: str = "image_mean") -> torch.Tensor:
    """Step (2) of the paper's procedure: 1 where ``M >= mean(M)``, else 0.

    Ties go to 1 as in the authors' release (``torch.where(M < mean, 0, 1)``), so a constant map (e.g. all
    zero when no group raises the class score) keeps the whole image sharp instead of blurring all of it.

    Args:
        maps: ``[N, H, W]`` saliency maps.
        threshold: ``"image_mean"`` (each map's own mean) or ``"batch_mean"`` (the authors' release: each
            map min-max normalised to ``[0, 1]``, as its Group-CAM returns them, then one mean over all
            maps; a constant map counts as all ones). Without that normalisation the maps of a few
            confident images would set the threshold for the batch and blur most objects away.

    Returns:
        ``[N, H, W]`` masks of 0.0 and 1.0 in the maps' dtype.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be [N, H, W], got shape {tuple(maps.shape)}")
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
    if threshold == "image_mean":
        # (a per-image min-max normalisation would change nothing: the mean moves with the map)
        return (maps >= maps.mean(dim=(1, 2), keepdim=True)).to(maps.dtype)
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    normalised = torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1), 1.0)
    return (normalised >= normalised.mean()).to(maps.dtype)


def compose_augmented(
    images: torch.Tensor, blurred: torch.Tensor, masks: torch.Tensor, variant: str = "paper"
) -> torch.Tensor:
    """Step (3): the training image from the binary mask.

    Args:
        images: ``[N, C, H, W]`` images ``I``.
        blurred: ``[N, C, H, W]`` blurred images ``blur(I)``.
        masks: ``[N, H, W]`` binary masks ``M``.
        variant: ``"paper"``: ``I ⊙ M + blur(I) ⊙ (1 - M)`` (Eq. 5; exact for binary masks, computed by
            Group-CAM's :func:`~icasc.saliency.groupcam.compose`). ``"reference_code"``: the authors'
            release, ``I ⊙ M + blur(I) + (1 - M)``, offered for comparison only.

    Returns:
        ``[N, C, H, W]`` augmented images.
    """
    if variant not in COMPOSITIONS:
        raise ValueError(f"compose must be one of {COMPOSITIONS}, got {variant!r}")
    if variant == "paper":
        return compose(images, blurred, masks)
    m = masks.unsqueeze(1)
    return images * m + blurred + (1 - m)
