"""Pure geometry of pasting images on a canvas: scaling, tight boxes, crop windows and pasting.

Images are float32 NumPy arrays ``[C, H, W]``; boxes are pixel-edge ``(x0, y0, x1, y1)`` (a box covers
columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``). NumPy rather than torch because these run once per
pasted image inside ``Dataset.__getitem__``, where a torch call's overhead would cost more than the work.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "Box",
    "content_boxes",
    "crop_window",
    "nonzero_box",
    "paste",
    "resize_matrix",
    "scale_image",
    "scaled_shape",
]

Box = tuple[int, int, int, int]
"""A pixel-edge ``(x0, y0, x1, y1)`` box: it covers columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``."""


def scaled_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """``(h, w)`` of a ``height x width`` image scaled so that its longer side is ``side`` (aspect kept)."""
    longer = max(height, width)
    return max(1, round(height * side / longer)), max(1, round(width * side / longer))


@functools.lru_cache(maxsize=1024)
def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The float32 ``[out_size, in_size]`` matrix of a 1-D antialiased bilinear resize.

    The weights of torch's ``interpolate(mode="bilinear", antialias=True, align_corners=False)`` (and PIL's
    bilinear): a triangle filter, widened by the scale factor when shrinking so that thin strokes survive.
    Resizing an image is then ``R_h @ image @ R_w.T``: a few small matrix products, far cheaper per sample
    than a call to ``interpolate``, and a crop of the result only needs rows of the matrices. The weights
    are non-negative, so black stays exactly 0 and the nonzero pixels of a resized image are exact.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    inv = 1.0 / support
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        centre = scale * (i + 0.5)
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
        weights = np.clip(1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) * inv), 0.0, None)
        matrix[i, lo:hi] = weights / weights.sum()
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False  # shared by every caller through the cache
    return matrix


def scale_image(image: np.ndarray, side: int, window: tuple[int, int, int] | None = None) -> np.ndarray:
    """Scale a float ``[C, H, W]`` image so that its longer side is ``side`` (bilinear, antialiased).

    Args:
        image: The image, float32.
        side: The longer side after scaling.
        window: ``(top, left, crop)``: return only this square of the scaled image (computed alone).

    Returns:
        float32 ``[C, h, w]`` (``[C, crop, crop]`` with ``window``).
    """
    H, W = image.shape[-2:]
    h, w = scaled_shape(H, W, side)
    rows, cols = resize_matrix(H, h), resize_matrix(W, w)
    if window is not None:
        top, left, crop = window
        rows, cols = rows[top : top + crop], cols[left : left + crop]
    return rows @ image @ cols.T


def nonzero_box(mask: np.ndarray) -> Box:
    """Tight pixel-edge box of the true pixels of a boolean ``[H, W]`` mask; the whole mask when none is."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return 0, 0, mask.shape[1], mask.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def crop_window(box: Box, crop: int, u: float, v: float, height: int, width: int) -> tuple[int, int, int]:
    """A square window of an image, centred at a point of ``box`` and kept inside the image.

    Args:
        box: Where the window's centre may lie (the content of the image), pixel-edge ``xyxy``.
        crop: Window side; shrunk to the image's shorter side if larger.
        u: Horizontal position of the centre in the box, a fraction in ``[0, 1]``.
        v: Vertical position of the centre in the box, a fraction in ``[0, 1]``.
        height: Image height.
        width: Image width.

    Returns:
        ``(top, left, side)`` of the window.
    """
    crop = min(crop, height, width)
    cx, cy = box[0] + u * (box[2] - box[0]), box[1] + v * (box[3] - box[1])
    left = min(max(round(cx - crop / 2), 0), width - crop)
    top = min(max(round(cy - crop / 2), 0), height - crop)
    return top, left, crop


def paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int) -> np.ndarray:
    """Copy the nonzero pixels (any channel above 0) of ``patch`` ``[C, h, w]`` onto ``canvas`` at ``(x, y)``.

    The patch must fit inside the canvas; ``canvas`` is changed in place.

    Returns:
        The boolean ``[h, w]`` mask of the copied pixels.
    """
    h, w = patch.shape[-2:]
    mask = patch.max(axis=0) > 0
    np.copyto(canvas[:, y : y + h, x : x + w], patch, where=mask)
    return mask


def content_boxes(images: np.ndarray) -> np.ndarray:
    """:func:`nonzero_box` of every image of ``[N, C, H, W]`` at once, int64 ``[N, 4]``."""
    mask = images.max(axis=1) > 0
    rows, cols = mask.any(axis=2), mask.any(axis=1)  # [N, H], [N, W]
    H, W = rows.shape[1], cols.shape[1]
    empty = ~rows.any(axis=1)
    x0, y0 = cols.argmax(axis=1), rows.argmax(axis=1)
    x1, y1 = W - cols[:, ::-1].argmax(axis=1), H - rows[:, ::-1].argmax(axis=1)
    boxes = np.stack([x0, y0, x1, y1], axis=1)
    boxes[empty] = (0, 0, W, H)
    return boxes
