"""Pruning experiment (Fig. 10): zero the top-k salient filters of a sample vs k random filters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from icasc.saliency.parameter.experiments._common import (
    ConfidenceChange,
    Filter,
    confidence_change,
    edit_filters,
    working_copy,
)

__all__ = ["prune_filters", "pruning_experiment"]


def prune_filters(
    model: nn.Module, filters: Sequence[Filter], columns: torch.Tensor | Sequence[int]
) -> nn.Module:
    """A copy of ``model`` (eval mode) with the chosen filters zeroed: weight and bias of their channels.

    Args:
        model: The classifier; it is not modified.
        filters: Column -> ``(layer, channel)``, as ``ParameterSaliency.filters``.
        columns: The profile columns to prune.

    Returns:
        The pruned copy.
    """
    return edit_filters(working_copy(model), filters, columns, torch.zeros_like)


def pruning_experiment(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    salient: torch.Tensor,
    filters: Sequence[Filter],
    draws: int = 5,
    seed: int = 0,
) -> ConfidenceChange:
    """Confidence change when each sample's top-k salient filters are zeroed, vs k random filters (Fig. 10).

    Each sample is evaluated with only *its own* filters zeroed (weight and bias rows of those output
    channels), on a working copy in eval mode. For a misclassified sample, pruning the filters behind the
    mistake should lower the confidence of the mistaken (predicted) class and raise that of the true class
    more than pruning random filters does (parameter-space saliency, Sec. 3.1 and App. A.2).

    Args:
        model: The classifier; never modified (weights, mode and ``.grad`` stay as they are).
        images: ``[B, C, H, W]`` normalised images.
        targets: ``[B]`` true classes.
        salient: ``[B, k]`` profile columns per sample, e.g. ``ps.top_filters(ps.standardize(profiles), k)``.
        filters: Column -> ``(layer, channel)``, ``ps.filters``.
        draws: Random filter sets per sample (the random side is averaged over them).
        seed: Seed of the random filter sets.

    Returns:
        Per-sample changes of the true- and predicted-class probabilities; ``.summary()`` aggregates.
    """
    result = confidence_change(
        model, images, targets, salient, filters, lambda _: torch.zeros_like, draws=draws, seed=seed
    )
    result.extra = {"edit": "zero", "draws": draws, "seed": seed}
    return result
