"""Random perturbation (App. A.6): Gaussian noise on the top-k salient filters vs on random filters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from icasc.saliency.parameter.experiments._common import ConfidenceChange, Filter, confidence_change

__all__ = ["perturbation_experiment"]


def perturbation_experiment(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    salient: torch.Tensor,
    filters: Sequence[Filter],
    std: float = 0.001,
    draws: int = 5,
    seed: int = 0,
) -> ConfidenceChange:
    """Confidence change when N(0, std²) noise is added to each sample's salient filters vs random ones (A.6).

    The paper perturbs with ``N(0, 0.001)``; ``std`` is the standard deviation of the noise added to every
    weight and bias entry of the chosen output channels. Both sides are averaged over ``draws`` noise draws
    (the random side also draws a new filter set each time). Works on a working copy in eval mode.

    Args:
        model: The classifier; never modified.
        images: ``[B, C, H, W]`` normalised images.
        targets: ``[B]`` true classes.
        salient: ``[B, k]`` profile columns per sample.
        filters: Column -> ``(layer, channel)``, ``ps.filters``.
        std: Standard deviation of the noise (> 0).
        draws: Noise draws per sample and side.
        seed: Seed of the noise and of the random filter sets.

    Returns:
        Per-sample confidence changes; ``.summary()`` aggregates.
    """
    if not std > 0:
        raise ValueError(f"std must be > 0 (the noise's standard deviation), got {std}")
    noise = torch.Generator().manual_seed(seed + 1)

    def edit_for(_: int):
        def add_noise(rows: torch.Tensor) -> torch.Tensor:
            eps = torch.randn(rows.shape, generator=noise, dtype=torch.float32) * std
            return rows + eps.to(device=rows.device, dtype=rows.dtype)

        return add_noise

    result = confidence_change(
        model, images, targets, salient, filters, edit_for, draws=draws, seed=seed, salient_draws=draws
    )
    result.extra = {"edit": "gaussian", "std": std, "draws": draws, "seed": seed}
    return result
