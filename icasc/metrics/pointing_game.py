"""Pointing game (Grad-CAM paper §4.3): is the maximum of a saliency map inside the object's box?"""

from __future__ import annotations

import torch

from icasc.losses.functional import resize_map

__all__ = ["pointing_game_hits"]


def pointing_game_hits(
    maps: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], tolerance: float = 0.0
) -> torch.Tensor:
    """Hit (True) where the map's maximum, at input resolution, lies within ``tolerance`` px of the box.

    Args:
        maps: ``[B, h, w]`` saliency maps (any resolution; resized bilinearly to ``image_size``).
        boxes: ``[B, 4]`` boxes ``(x0, y0, x1, y1)`` in input pixels.
        image_size: ``(H, W)`` of the input images.
        tolerance: Distance in pixels from the box that still counts as a hit.

    Returns:
        ``[B]`` bool.
    """
    if maps.dim() != 3 or boxes.shape != (maps.shape[0], 4):
        raise ValueError(
            f"need maps [B,h,w] and boxes [B,4], got {tuple(maps.shape)} and {tuple(boxes.shape)}"
        )
    full = resize_map(maps.detach().float(), image_size)
    width = full.shape[-1]
    flat = full.flatten(1).argmax(dim=1)
    # Pixel centres: index i covers [i, i+1).
    y = (flat // width).to(boxes.dtype) + 0.5
    x = (flat % width).to(boxes.dtype) + 0.5
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    dx = torch.clamp(torch.maximum(x0 - x, x - x1), min=0)
    dy = torch.clamp(torch.maximum(y0 - y, y - y1), min=0)
    return dx.square() + dy.square() <= tolerance**2
