"""Pointing game (Grad-CAM §4.3; Group-CAM §4.4): is the maximum of a saliency map inside the object's box?

A *hit* is counted when the most salient pixel of the map (at input resolution) lies inside one of the
annotated boxes of the cued class: Group-CAM §4.4 "if the most salient pixel lies inside the annotated
bounding boxes of an object, it is counted as a hit"; Grad-CAM §4.3 likewise checks whether the maximum
"lies in one of the annotated instances of the cued object category". Neither paper states a distance
tolerance, so the default :data:`POINTING_TOLERANCE` is 0 px. (The 15 px tolerance comes from the original
protocol of Zhang et al., Grad-CAM ref. [46], which neither paper restates; pass ``tolerance=15`` for it.)
Accuracy is ``#hits / (#hits + #misses)`` per category, and the reported score is the mean over the
categories (Group-CAM §4.4).

This is the one definition every place uses: training/validation logging (``ICASCModule``), ``-cn eval`` and
``-cn explain``. A model carries its tolerance (``ICASCModule(pointing_tolerance=...)``, recorded in its
checkpoint and export); ``-cn eval`` and ``-cn explain`` use the model's unless the config overrides it
(``pointing_tolerance: null`` means the model's, :func:`resolve_tolerance`), so a model is scored with the
tolerance it was validated with. :data:`POINTING_TOLERANCE` is the default of a model that records none.

Boxes are ``(x0, y0, x1, y1)`` in pixel-edge coordinates: pixel ``(row i, col j)`` covers
``[j, j+1) x [i, i+1)`` and is represented by its centre ``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torchmetrics import Metric

from icasc.utils import is_int, is_number, resize_map

__all__ = ["POINTING_TOLERANCE", "PointingGame", "pointing_game_hits", "resolve_tolerance"]

POINTING_TOLERANCE = 0.0
"""Default hit tolerance in input pixels: 0, a hit is the maximum *inside* a box (Group-CAM §4.4)."""


def resolve_tolerance(tolerance: float | None, model_tolerance: float | None = None) -> float:
    """The tolerance in pixels: ``tolerance``, else the model's, else :data:`POINTING_TOLERANCE`.

    Args:
        tolerance: Pixels, or ``None`` for the model's (a config's ``null``).
        model_tolerance: The tolerance the model records (checkpoint hyper-parameter or model card), or
            ``None`` when it records none.

    Returns:
        The tolerance as a float.

    Raises:
        ValueError: A negative or non-numeric tolerance.
    """
    if tolerance is None:
        if model_tolerance is None:
            return POINTING_TOLERANCE
        tolerance = model_tolerance
    if not is_number(tolerance) or not tolerance >= 0:
        raise ValueError(
            f"tolerance must be >= 0 pixels or None (the default, {POINTING_TOLERANCE}), got {tolerance!r}"
        )
    return float(tolerance)


def _box_set(
    boxes: torch.Tensor, batch: int, box_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``[B, 4]`` / ``[B, K, 4]`` boxes and an optional ``[B, K]`` mask; return both as 3-D / 2-D."""
    if not isinstance(boxes, torch.Tensor) or boxes.dim() not in (2, 3) or boxes.shape[0] != batch:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be [B, 4] or [B, K, 4] with B = {batch}, got {shape}")
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must end in 4 coordinates (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    if boxes.dim() == 2:
        if box_mask is not None:
            raise ValueError("box_mask is only meaningful with [B, K, 4] boxes")
        boxes = boxes.unsqueeze(1)
    if box_mask is None:
        box_mask = torch.ones(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
    if box_mask.shape != boxes.shape[:2] or box_mask.dtype != torch.bool:
        raise ValueError(
            f"box_mask must be bool {tuple(boxes.shape[:2])}, got {box_mask.dtype} {tuple(box_mask.shape)}"
        )
    box_mask = box_mask.to(boxes.device)
    if not bool(box_mask.any(dim=1).all()):
        raise ValueError("every sample needs at least one valid box; leave samples without a box out")
    boxes = boxes.float()
    valid = boxes[box_mask]
    if not bool(torch.isfinite(valid).all()):
        raise ValueError("boxes contain NaN or inf")
    if bool((valid[:, 2] < valid[:, 0]).any() or (valid[:, 3] < valid[:, 1]).any()):
        raise ValueError("boxes must be (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0")
    return boxes, box_mask


def _check_maps(maps: torch.Tensor) -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be [B, h, w], got {shape}")


def pointing_game_hits(
    maps: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    tolerance: float | None = None,
    box_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hit (True) where the map's maximum, at input resolution, lies in a box (or within ``tolerance`` px).

    Grad-CAM §4.3 / Group-CAM §4.4. The maximum is taken after a bilinear resize to ``image_size``; ties go
    to the first pixel in raster order.

    Args:
        maps: ``[B, h, w]`` saliency maps (any resolution; resized bilinearly to ``image_size``).
        boxes: ``[B, 4]`` boxes ``(x0, y0, x1, y1)`` in input pixels, or ``[B, K, 4]`` for several instances
            of the cued class per image (a hit in any of them counts).
        image_size: ``(H, W)`` of the input images.
        tolerance: Distance in pixels from the box that still counts as a hit; ``None``:
            :data:`POINTING_TOLERANCE` (0, inside the box, as in Group-CAM §4.4).
        box_mask: Optional ``[B, K]`` bool marking the real boxes of padded ``[B, K, 4]`` boxes.

    Returns:
        ``[B]`` bool.

    Raises:
        ValueError: Bad shapes, a negative tolerance, invalid boxes, or a sample without a valid box.
    """
    _check_maps(maps)
    tolerance = resolve_tolerance(tolerance)
    boxes, box_mask = _box_set(boxes, maps.shape[0], box_mask)
    full = resize_map(maps.detach().float(), tuple(image_size))
    width = full.shape[-1]
    flat = full.flatten(1).argmax(dim=1).to(boxes.device)
    # Pixel centres: index i covers [i, i+1).
    y = (flat // width).float().unsqueeze(1) + 0.5
    x = (flat % width).float().unsqueeze(1) + 0.5
    x0, y0, x1, y1 = boxes.unbind(dim=-1)
    dx = torch.clamp(torch.maximum(x0 - x, x - x1), min=0)
    dy = torch.clamp(torch.maximum(y0 - y, y - y1), min=0)
    inside = (dx.square() + dy.square() <= tolerance**2) & box_mask
    return inside.any(dim=1)


class PointingGame(Metric):
    """Pointing-game accuracy per category, averaged over the categories seen (Group-CAM §4.4).

    States are per-category hit and sample counts, summed across processes, so the result is exact under
    DDP.

    Args:
        num_classes: Number of categories.
        tolerance: Hit tolerance in input pixels; ``None``: :data:`POINTING_TOLERANCE` (0, inside the box).
        average: ``"macro"`` mean of the per-category accuracies over the categories with at least one sample
            (the papers' score), ``"micro"`` overall ``#hits / #samples``, ``"none"`` the ``[num_classes]``
            per-category accuracies (NaN for unseen categories).
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        tolerance: float | None = None,
        average: Literal["macro", "micro", "none"] = "macro",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not is_int(num_classes) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        tolerance = resolve_tolerance(tolerance)
        if average not in ("macro", "micro", "none"):
            raise ValueError(f"average must be 'macro', 'micro' or 'none', got {average!r}")
        self.num_classes = num_classes
        self.tolerance = tolerance
        self.average = average
        self.add_state("hits", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("totals", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        maps: torch.Tensor,
        boxes: torch.Tensor,
        labels: torch.Tensor,
        image_size: tuple[int, int] | None = None,
        box_mask: torch.Tensor | None = None,
    ) -> None:
        """Score a batch.

        Args:
            maps: ``[B, h, w]`` maps for the cued (ground-truth) class of each sample.
            boxes: ``[B, 4]`` or ``[B, K, 4]`` boxes of that class in input pixels.
            labels: ``[B]`` category of each sample, in ``[0, num_classes)``.
            image_size: ``(H, W)`` of the inputs; default: the maps' own size.
            box_mask: Optional ``[B, K]`` bool for padded ``[B, K, 4]`` boxes.
        """
        _check_maps(maps)
        if not isinstance(labels, torch.Tensor) or labels.shape != (maps.shape[0],):
            raise ValueError(f"labels must be a [B] tensor with B = {maps.shape[0]}, got {labels!r:.80}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels out of range [0, {self.num_classes}): {labels.tolist()}")
        size = tuple(maps.shape[-2:]) if image_size is None else tuple(image_size)
        hits = pointing_game_hits(maps, boxes, size, self.tolerance, box_mask)
        labels = labels.to(self.hits.device).long()
        self.hits += torch.bincount(labels[hits.to(labels.device)], minlength=self.num_classes)
        self.totals += torch.bincount(labels, minlength=self.num_classes)

    def compute(self) -> torch.Tensor:
        """The pointing-game accuracy (see ``average``); NaN when no sample was seen."""
        if self.average == "micro":
            return self.hits.sum().float() / self.totals.sum().float()
        per_class = self.hits.float() / self.totals.float()  # NaN where a category has no sample
        if self.average == "none":
            return per_class
        seen = self.totals > 0
        return per_class[seen].mean()
