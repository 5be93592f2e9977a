"""Masking experiment (App. A.8–A.9): hide the most salient input pixels and watch the true class.

The pixels come from the input-space saliency of the top salient filters (B.2): they are the pixels that
drive the misbehaving filters. A.9 selects misclassified samples where masking the top 5% of them raises the
true-class confidence; a control masks as many random pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from icasc.saliency.parameter.experiments._common import (
    change_summary,
    check_targets,
    softmax_probabilities,
)

__all__ = ["MaskingResult", "mask_pixels", "masking_experiment", "random_pixel_mask", "top_pixel_mask"]


def _count(height: int, width: int, fraction: float) -> int:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1] (the share of pixels to mask), got {fraction}")
    return max(1, round(fraction * height * width))


def top_pixel_mask(maps: torch.Tensor, fraction: float = 0.05) -> torch.Tensor:
    """``[B, H, W]`` bool: the ``round(fraction·H·W)`` highest pixels of each map (at least one)."""
    if maps.dim() != 3:
        raise ValueError(f"maps must be [B, H, W] input-space saliency, got shape {tuple(maps.shape)}")
    b, h, w = maps.shape
    top = maps.reshape(b, -1).topk(_count(h, w, fraction), dim=1).indices
    return torch.zeros(b, h * w, dtype=torch.bool, device=maps.device).scatter_(1, top, True).view(b, h, w)


def random_pixel_mask(
    shape: tuple[int, int, int], fraction: float = 0.05, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[B, H, W]`` bool: ``round(fraction·H·W)`` uniformly random pixels per image."""
    b, h, w = shape
    keys = torch.rand(b, h * w, generator=generator)
    top = keys.topk(_count(h, w, fraction), dim=1).indices
    return torch.zeros(b, h * w, dtype=torch.bool).scatter_(1, top, True).view(b, h, w)


def mask_pixels(images: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """``images`` with the masked pixels (all channels) set to ``fill``.

    With normalised images the default ``fill=0`` is the dataset's mean colour.
    """
    if mask.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"mask must be [B, H, W] = {[images.shape[0], *images.shape[-2:]]}, got {list(mask.shape)}"
        )
    return images.masked_fill(mask[:, None].to(images.device), fill)


@dataclass
class MaskingResult:
    """Per-sample probability changes after masking the salient pixels vs random pixels (mean over draws)."""

    fraction: float
    targets: torch.Tensor
    predicted: torch.Tensor
    true_before: torch.Tensor
    salient_true_change: torch.Tensor
    random_true_change: torch.Tensor
    salient_predicted_change: torch.Tensor
    random_predicted_change: torch.Tensor
    salient_corrected: torch.Tensor
    random_corrected: torch.Tensor

    def summary(self) -> dict[str, float | int | None]:
        """Means over the samples; ``*_corrected`` over the misclassified ones only."""
        return {"fraction": self.fraction, **change_summary(self)}


def masking_experiment(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    fraction: float = 0.05,
    fill: float = 0.0,
    draws: int = 5,
    seed: int = 0,
) -> MaskingResult:
    """Probability changes when the top ``fraction`` of salient pixels is masked, vs random pixels (A.8–A.9).

    Args:
        model: The classifier; run in eval mode, its modes restored, weights untouched.
        images: ``[B, C, H, W]`` normalised images.
        targets: ``[B]`` true classes.
        maps: ``[B, H, W]`` input saliency (``ParameterSaliency.input_saliency``), higher = more salient.
        fraction: Share of pixels to mask (A.9: 5%).
        fill: Value of masked pixels in normalised units (0: the mean colour).
        draws: Random masks per sample (the random side is averaged).
        seed: Seed of the random masks.

    Returns:
        A :class:`MaskingResult`.
    """
    targets = check_targets(images, targets)
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"maps must be [B, H, W] = {[images.shape[0], *images.shape[-2:]]} (input resolution), "
            f"got {list(maps.shape)}"
        )
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    before = softmax_probabilities(model, images)
    predicted = before.argmax(dim=1)
    rows = torch.arange(images.shape[0], device=before.device)
    salient = softmax_probabilities(model, mask_pixels(images, top_pixel_mask(maps, fraction), fill))
    g = torch.Generator().manual_seed(seed)
    shape = (images.shape[0], *images.shape[-2:])
    random = torch.stack(
        [
            softmax_probabilities(model, mask_pixels(images, random_pixel_mask(shape, fraction, g), fill))
            for _ in range(draws)
        ]
    )
    return MaskingResult(
        fraction=fraction,
        targets=targets,
        predicted=predicted,
        true_before=before[rows, targets],
        salient_true_change=salient[rows, targets] - before[rows, targets],
        random_true_change=(random[:, rows, targets] - before[rows, targets]).mean(dim=0),
        salient_predicted_change=salient[rows, predicted] - before[rows, predicted],
        random_predicted_change=(random[:, rows, predicted] - before[rows, predicted]).mean(dim=0),
        salient_corrected=salient.argmax(dim=1) == targets,
        random_corrected=(random.argmax(dim=2) == targets).float().mean(dim=0),
    )
