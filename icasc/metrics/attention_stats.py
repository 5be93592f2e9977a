"""How an attention map sits on the object: mass inside the box, pointing game, peakedness.

Per-map statistics that show how attention changes during training (logged by
:class:`~icasc.models.ICASCModule` in validation and test, and by ``-cn eval``):

- :func:`mass_in_box`: the share of the map's (non-negative) mass that falls inside the object's box;
- the pointing game, per map: :func:`~icasc.metrics.pointing_game.pointing_game_hits` (the one definition);
- :func:`peakedness`: 1 − the normalised entropy of the map as a distribution over its pixels.

:func:`attention_stats` computes all three for a batch of maps. Boxes use the coordinates of the pointing
game: ``(x0, y0, x1, y1)`` in input pixels, pixel-edge convention (pixel ``(i, j)`` covers
``[j, j+1) x [i, i+1)``), and maps are brought to the input size the same way (bilinear resize,
``align_corners=False``, :func:`~icasc.utils.resize_map`).
"""

from __future__ import annotations

import math

import torch

from icasc.attention.functional import max_normalize
from icasc.losses.functional import attention_separation, target_mask
from icasc.metrics.pointing_game import _box_set, _check_maps, pointing_game_hits
from icasc.utils import resize_map

__all__ = ["attention_overlap", "attention_stats", "mass_in_box", "peakedness"]


def _coverage(lo: torch.Tensor, hi: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, size]``: the length of ``[lo, hi)`` inside each unit pixel ``[k, k+1)``, in ``[0, 1]``."""
    edges = torch.arange(size, dtype=lo.dtype, device=lo.device)
    return (torch.minimum(hi[:, None], edges + 1) - torch.maximum(lo[:, None], edges)).clamp(0, 1)


def mass_in_box(maps: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """The share of each map's non-negative mass that lies inside its box, in ``[0, 1]``.

    The map is resized bilinearly to ``image_size`` (exactly as :func:`pointing_game_hits` does before it
    takes the maximum, so both statistics read the same map in the same coordinates), negative values are
    set to 0, and each input pixel counts with the fraction of its area the box covers. Integer boxes
    therefore count exactly the pixels whose centre the pointing game would call inside, and a box with
    fractional edges counts its partial pixels in proportion. (Integrating the box's fractional coverage on
    the map's own grid would skip the resize, but would weigh the map differently from the pointing game,
    whose maximum is taken after it.)

    Args:
        maps: ``[B, h, w]`` maps (any resolution).
        boxes: ``[B, 4]`` boxes ``(x0, y0, x1, y1)`` in input pixels; parts outside the image count nothing.
        image_size: ``(H, W)`` of the input images.

    Returns:
        ``[B]`` float: inside mass / total mass; 0 for a map without positive mass (nothing points anywhere).
        Differentiable with respect to ``maps``.

    Raises:
        ValueError: Bad shapes, or boxes that are not finite ``x1 >= x0``, ``y1 >= y0``.
    """
    _check_maps(maps)
    if isinstance(boxes, torch.Tensor) and boxes.dim() != 2:
        raise ValueError(f"boxes must be [B, 4] (one box per map), got {tuple(boxes.shape)}")
    boxes, _ = _box_set(boxes, maps.shape[0], None)
    height, width = (int(s) for s in image_size)
    # not detached: icasc.metrics.descent_effects differentiates it (the metrics pass detached maps)
    full = resize_map(maps.float(), (height, width)).clamp(min=0)
    boxes = boxes[:, 0].to(full.device)
    cover_x = _coverage(boxes[:, 0], boxes[:, 2], width)  # [B, W]
    cover_y = _coverage(boxes[:, 1], boxes[:, 3], height)  # [B, H]
    inside = torch.einsum("bhw,bh,bw->b", full, cover_y, cover_x)
    total = full.sum(dim=(1, 2))
    # A ratio, so no epsilon (that would break scale invariance for faint maps); an empty map gives 0.
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), 0.0)


def peakedness(maps: torch.Tensor) -> torch.Tensor:
    """How concentrated each map is: ``1 − H(p) / log(h·w)`` with ``p`` the map normalised to sum 1.

    Read at the map's own resolution (no resize, which would smooth it): 0 for a uniform map, 1 for all
    mass on one pixel, independent of the map's scale and comparable across resolutions (the entropy is
    divided by its maximum, ``log`` of the number of pixels). Negative values are set to 0. A map without
    positive mass, or of a single pixel, has no spatial preference and scores 0.

    Args:
        maps: ``[B, h, w]`` maps.

    Returns:
        ``[B]`` float in ``[0, 1]``.

    Raises:
        ValueError: Maps that are not ``[B, h, w]``.
    """
    _check_maps(maps)
    flat = maps.detach().float().flatten(1).clamp(min=0)
    pixels = flat.shape[1]
    total = flat.sum(dim=1, keepdim=True)
    if pixels < 2:
        return torch.zeros(flat.shape[0], device=flat.device)
    p = flat / torch.where(total > 0, total, 1.0)
    entropy = -torch.xlogy(p, p).sum(dim=1)  # xlogy: 0·log 0 = 0
    score = (1.0 - entropy / math.log(pixels)).clamp(0, 1)  # clamp: rounding just outside [0, 1]
    return torch.where(total[:, 0] > 0, score, 0.0)


def attention_overlap(
    a_t: torch.Tensor,
    a_conf: torch.Tensor,
    valid: torch.Tensor | None = None,
    sigma: float = 0.55,
    omega: float = 100.0,
) -> torch.Tensor:
    """The attention overlap metric: L_AS (ICASC Eq. 3) of max-normalised maps under the mask of Eq. 4.

    One yardstick for every run, whatever its loss settings (a raw-map or a routed-gradient loss scores the
    same maps the same way): both maps are divided by their per-sample maximum and the mask thresholds the
    true-class map at ``sigma`` of its maximum with slope ``omega`` (the paper's 0.55 and 100). Lower means
    less overlap.

    Args:
        a_t: True-class maps ``[B, h, w]``.
        a_conf: Most-confusing-class maps ``[B, h, w]``.
        valid: Optional ``[B]`` bool; samples without a confusing class are left out.
        sigma: Mask threshold relative to the maximum (Eq. 4).
        omega: Mask slope (Eq. 4).

    Returns:
        The batch mean, a scalar in ``[0, 1]``.
    """
    t, c = max_normalize(a_t.detach()), max_normalize(a_conf.detach())
    return attention_separation(t, c, target_mask(t, sigma, omega), valid)


def attention_stats(
    maps: torch.Tensor,
    image_size: tuple[int, int],
    boxes: torch.Tensor | None = None,
    tolerance: float | None = None,
) -> dict[str, torch.Tensor]:
    """The per-map statistics of a batch: ``peak`` always; ``in_box`` and ``pointing`` where boxes are given.

    Args:
        maps: ``[B, h, w]`` maps.
        image_size: ``(H, W)`` of the input images.
        boxes: Optional ``[B, 4]`` boxes in input pixels.
        tolerance: Pointing-game tolerance in input pixels (``None``: the default,
            :data:`~icasc.metrics.pointing_game.POINTING_TOLERANCE`).

    Returns:
        ``{"peak": [B], "in_box": [B], "pointing": [B]}`` floats (``pointing`` is 1.0 for a hit).
    """
    stats = {"peak": peakedness(maps)}
    if boxes is not None:
        # Resized once here: both functions then find the map at input size and skip their own resize.
        full = resize_map(maps.detach().float(), tuple(int(s) for s in image_size))
        stats["in_box"] = mass_in_box(full, boxes, image_size)
        stats["pointing"] = pointing_game_hits(full, boxes, image_size, tolerance).float()
    return stats
