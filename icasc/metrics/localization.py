"""Weakly-supervised localisation (Grad-CAM §4.1, following CAM / ILSVRC).

For each predicted class the saliency map is binarised at 15% of its maximum, a box is drawn around the
single largest connected segment (8-connectivity), and the prediction localises the object when the class is
right and the box overlaps a ground-truth box with IoU >= 0.5. The top-k localisation error is the share of
images where none of the top-k predictions does both.

Boxes are ``(x0, y0, x1, y1)`` in pixel-edge coordinates: a component spanning columns ``c0..c1`` and rows
``r0..r1`` gets the box ``(c0, r0, c1 + 1, r1 + 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from icasc.metrics.pointing_game import _box_set
from icasc.utils import is_int, resize_map

__all__ = [
    "LocalizationError",
    "box_iou",
    "connected_components",
    "largest_component_boxes",
    "localization_correct",
    "localization_error",
]


def _neighbour_min(labels: torch.Tensor, sentinel: int, connectivity: int) -> torch.Tensor:
    """Minimum of each pixel's label and its 4- or 8-neighbours' labels (outside the image: ``sentinel``)."""
    h, w = labels.shape[-2:]
    padded = F.pad(labels, (1, 1, 1, 1), value=sentinel)
    out = labels
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if (dy, dx) == (0, 0) or (connectivity == 4 and dy != 0 and dx != 0):
                continue
            out = torch.minimum(out, padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
    return out


def connected_components(mask: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Label the connected components of binary masks.

    Min-label propagation with pointer jumping: every foreground pixel starts with its own raster index; each
    round takes the minimum over its neighbourhood and then jumps to its label's label, until nothing changes.
    At the fixed point every component carries the index of its first pixel.

    Args:
        mask: ``[B, H, W]`` (or ``[H, W]``) bool.
        connectivity: 8 (diagonal neighbours connect; Grad-CAM §4.1) or 4.

    Returns:
        ``int64`` labels of the mask's shape: 0 for background, ``1..K`` per image, numbered in raster
        order of each component's first pixel.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() not in (2, 3):
        raise ValueError(f"mask must be a bool [B, H, W] or [H, W] tensor, got {mask!r:.80}")
    single = mask.dim() == 2
    if single:
        mask = mask.unsqueeze(0)
    b, h, w = mask.shape
    n = h * w
    index = torch.arange(n, device=mask.device).view(1, h, w).expand(b, h, w)
    labels = torch.where(mask, index, n)
    background = torch.full((b, 1), n, dtype=torch.long, device=mask.device)
    while True:
        new = torch.where(mask, _neighbour_min(labels, n, connectivity), n).flatten(1)
        jumped = torch.cat([new, background], dim=1).gather(1, new)
        new = torch.minimum(new, jumped).view(b, h, w)
        if torch.equal(new, labels):
            break
        labels = new
    flat = labels.flatten(1)
    roots = mask.flatten(1) & (flat == index.flatten(1))
    number = torch.cumsum(roots.long(), dim=1)
    out = torch.where(mask.flatten(1), number.gather(1, flat.clamp(max=n - 1)), 0).view(b, h, w)
    return out[0] if single else out


def _first_last(any_along: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First index and one past the last index of True along dim 1 of a non-empty-rowed ``[B, L]`` bool."""
    length = any_along.shape[1]
    first = any_along.float().argmax(dim=1)
    last = length - any_along.flip(1).float().argmax(dim=1)
    return first, last


def largest_component_boxes(
    maps: torch.Tensor,
    threshold: float = 0.15,
    image_size: tuple[int, int] | None = None,
    connectivity: int = 8,
) -> torch.Tensor:
    """Box around the largest connected segment of each map binarised at ``threshold * max`` (Grad-CAM §4.1).

    Pixels with ``map >= threshold * max(map)`` are foreground. Ties between equally large segments go to
    the one whose first pixel comes first in raster order. An all-zero map is foreground everywhere and gets
    the whole-image box.

    Args:
        maps: ``[B, h, w]`` non-negative saliency maps (ReLU, ``abs`` or :func:`normalize` signed ones first).
        threshold: Relative threshold in ``[0, 1]`` (paper: 0.15).
        image_size: ``(H, W)`` to resize the maps to (bilinear) so boxes are in input pixels; default: as is.
        connectivity: 8 (paper) or 4.

    Returns:
        ``[B, 4]`` float boxes ``(x0, y0, x1, y1)`` in pixel-edge coordinates.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        raise ValueError(f"maps must be [B, h, w], got {maps!r:.80}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (a fraction of the maximum), got {threshold}")
    maps = maps.detach().float()
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or inf")
    if bool((maps < 0).any()):
        raise ValueError("maps must be non-negative; apply relu, abs or normalize() to signed maps first")
    if image_size is not None:
        maps = resize_map(maps, tuple(image_size)).clamp_min(0)
    b = maps.shape[0]
    peak = maps.flatten(1).amax(dim=1).view(b, 1, 1)
    labels = connected_components(maps >= threshold * peak, connectivity)
    sizes = torch.zeros(b, labels[0].numel() + 1, device=maps.device)
    sizes.scatter_add_(1, labels.flatten(1), torch.ones_like(labels.flatten(1), dtype=sizes.dtype))
    sizes[:, 0] = -1  # background never wins
    largest = labels == sizes.argmax(dim=1).view(b, 1, 1)
    y0, y1 = _first_last(largest.any(dim=2))
    x0, x1 = _first_last(largest.any(dim=1))
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of paired ``[..., 4]`` xyxy boxes (broadcasting); 0 where both boxes have no area."""
    if a.shape[-1] != 4 or b.shape[-1] != 4:
        raise ValueError(f"boxes must end in 4 coordinates, got {tuple(a.shape)} and {tuple(b.shape)}")
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]).clamp_min(0) * (a[..., 3] - a[..., 1]).clamp_min(0)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def localization_correct(
    maps: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    threshold: float = 0.15,
    iou_threshold: float = 0.5,
    image_size: tuple[int, int] | None = None,
    box_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per prediction: is the class right and does the map's box reach ``iou_threshold`` (Grad-CAM §4.1)?

    Args:
        maps: ``[B, h, w]`` (one prediction per image) or ``[B, K, h, w]`` (one map per prediction).
        boxes: ``[B, 4]`` or ``[B, M, 4]`` ground-truth boxes of the true class in input pixels (the best
            IoU over the ``M`` boxes counts, as in ILSVRC).
        labels: ``[B]`` true classes.
        predictions: ``[B]`` or ``[B, K]`` predicted classes, in the maps' order (best first for top-k).
        threshold: Binarisation threshold relative to the map's maximum (paper: 0.15).
        iou_threshold: IoU needed for a correct box (ILSVRC: 0.5).
        image_size: ``(H, W)`` of the inputs; default: the maps' own size.
        box_mask: Optional ``[B, M]`` bool for padded ``[B, M, 4]`` boxes.

    Returns:
        ``[B, K]`` bool.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (3, 4):
        raise ValueError(f"maps must be [B, h, w] or [B, K, h, w], got {maps!r:.80}")
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    b, k = maps.shape[:2]
    if not isinstance(predictions, torch.Tensor) or predictions.reshape(b, -1).shape != (b, k):
        raise ValueError(
            f"predictions must be [B] or [B, K] matching maps {tuple(maps.shape)}, got {predictions!r:.80}"
        )
    if not isinstance(labels, torch.Tensor) or labels.shape != (b,):
        raise ValueError(f"labels must be a [B] tensor with B = {b}, got {labels!r:.80}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    gt, gt_mask = _box_set(boxes, b, box_mask)
    size = tuple(maps.shape[-2:]) if image_size is None else tuple(image_size)
    found = largest_component_boxes(maps.flatten(0, 1), threshold, size).view(b, k, 1, 4).to(gt.device)
    iou = box_iou(found, gt.unsqueeze(1))  # [B, K, M]
    best = iou.masked_fill(~gt_mask.unsqueeze(1), -1.0).amax(dim=2)
    right_class = predictions.reshape(b, k).to(labels.device) == labels.unsqueeze(1)
    return right_class & (best >= iou_threshold).to(labels.device)


def localization_error(
    maps: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    threshold: float = 0.15,
    iou_threshold: float = 0.5,
    image_size: tuple[int, int] | None = None,
    box_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B]`` bool: True where none of the given predictions is both the right class and well localised.

    With one prediction per image this is the top-1 localisation error, with the top-5 predictions (and
    their five maps) the top-5 error (Grad-CAM §4.1, Table 1). Arguments as :func:`localization_correct`.
    """
    correct = localization_correct(
        maps, boxes, labels, predictions, threshold, iou_threshold, image_size, box_mask
    )
    return ~correct.any(dim=1)


class LocalizationError(Metric):
    """Top-k weakly-supervised localisation error (Grad-CAM §4.1), summed across processes.

    Args:
        top_k: The ``k`` to report; each update must bring at least ``max(top_k)`` predictions and maps.
        threshold: Binarisation threshold relative to the map's maximum (paper: 0.15).
        iou_threshold: IoU needed for a correct box (ILSVRC: 0.5).
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    ``compute()`` returns ``{"top1": error, "top5": error, ...}`` as fractions in ``[0, 1]``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        top_k: Sequence[int] = (1,),
        threshold: float = 0.15,
        iou_threshold: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        top_k = tuple(top_k)
        if not top_k or any(not is_int(k) or k < 1 for k in top_k):
            raise ValueError(f"top_k must be positive ints, got {top_k}")
        if not 0.0 <= threshold <= 1.0 or not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(
                f"threshold and iou_threshold must be in [0, 1], got {threshold}, {iou_threshold}"
            )
        self.top_k = top_k
        self.threshold = threshold
        self.iou_threshold = iou_threshold
        self.add_state("errors", torch.zeros(len(top_k), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        maps: torch.Tensor,
        boxes: torch.Tensor,
        labels: torch.Tensor,
        predictions: torch.Tensor,
        image_size: tuple[int, int] | None = None,
        box_mask: torch.Tensor | None = None,
    ) -> None:
        """Score a batch; arguments as :func:`localization_correct` (predictions best first)."""
        correct = localization_correct(
            maps, boxes, labels, predictions, self.threshold, self.iou_threshold, image_size, box_mask
        )
        if correct.shape[1] < max(self.top_k):
            raise ValueError(
                f"top_k={self.top_k} needs {max(self.top_k)} predictions, got {correct.shape[1]}"
            )
        errors = torch.stack([~correct[:, :k].any(dim=1) for k in self.top_k], dim=1)
        self.errors += errors.sum(dim=0).to(self.errors.device)
        self.count += correct.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        """Error per ``k`` (NaN before any sample)."""
        rates = self.errors.float() / self.count.float()
        return {f"top{k}": rates[i] for i, k in enumerate(self.top_k)}
