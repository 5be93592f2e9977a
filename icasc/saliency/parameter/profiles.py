"""The default per-sample loss, batch unpacking, and the dataset-level result of parameter saliency."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from icasc.saliency.base import resolve_target

__all__ = ["SaliencyProfiles", "cross_entropy_per_sample", "split_batch"]


def cross_entropy_per_sample(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The paper's ``L``: cross-entropy of each sample for its true class, ``[B]``."""
    if not isinstance(targets, torch.Tensor) or targets.dtype.is_floating_point or targets.dim() != 1:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(
            f"the default cross-entropy needs [B] integer class targets, got {shape}; pass loss=... for "
            "other targets (e.g. multi-hot with binary_cross_entropy_with_logits(..., reduction='none'))"
        )
    return F.cross_entropy(logits, resolve_target(logits, targets), reduction="none")


def split_batch(batch: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, targets)`` of a house batch dict ``{"image", "target"}`` or of a pair."""
    if isinstance(batch, dict):
        if "image" not in batch or "target" not in batch:
            raise ValueError(f"batch dicts need keys 'image' and 'target', got {sorted(batch)}")
        return batch["image"], batch["target"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        f"batches must be {{'image': ..., 'target': ...}} dicts or (images, targets) pairs, got "
        f"{type(batch).__name__}"
    )


@dataclass
class SaliencyProfiles:
    """Profiles of a dataset with what callers usually want next to them.

    Attributes:
        profiles: ``[N, n_filters]`` (standardised if ``standardized``).
        predictions: ``[N]`` predicted classes.
        targets: ``[N]`` (or ``[N, ...]``) targets as the loader gave them.
        confidences: ``[N]`` softmax probability of the predicted class.
        true_confidences: ``[N]`` softmax probability of the target class (``None`` for non-class targets).
        standardized: Whether ``profiles`` are ``(s - mu) / sigma``.
    """

    profiles: torch.Tensor
    predictions: torch.Tensor
    targets: torch.Tensor
    confidences: torch.Tensor
    true_confidences: torch.Tensor | None
    standardized: bool = False

    @property
    def correct(self) -> torch.Tensor:
        """``[N]`` bool: prediction equals the (class) target."""
        if self.targets.dim() != 1 or self.targets.dtype.is_floating_point:
            raise ValueError("correct needs [N] class targets")
        return self.predictions == self.targets

    def __len__(self) -> int:
        return self.profiles.shape[0]
