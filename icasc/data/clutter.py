"""Single-label images placed on a larger canvas, alone or among fragments of other classes, with their box.

:class:`ClutteredDataset` turns any in-memory single-label image source (uint8 ``0..255`` or float ``0..1``
images with int labels; MNIST-like digits, garments, CIFAR photographs) into a localisation-aware
classification task: each sample's object is scaled to a random size and pasted at a random position on a
black canvas, over ``distractors`` square fragments cut from images of *other* classes, and the sample
carries the tight box of the object's pixels. A classifier must find the object among parts of others, so
attention matters and can be scored (pointing game, box overlap). :class:`CentredDataset` is the plain
variant: each image at its own size in the centre of the canvas.

Pasting copies a patch's nonzero pixels (any channel above 0) onto the canvas: on a black canvas the black
margins of MNIST-like images stay transparent, and an image with no black background is pasted as its whole
rectangle. The object is pasted last, so all its pixels are visible and its box is the tight box of its
nonzero pixels after scaling (of the whole pasted rectangle for an image with no zero pixel).

Sample ``i`` of a split is drawn from a generator seeded by ``(seed, split, i)``, so it is the same whatever
the DataLoader workers and the access order. The geometry lives in pure functions
(:mod:`icasc.data.canvas`); the datasets hold the source and call them.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from icasc.data._synthetic_render import _SPLIT_IDS, sample_seed
from icasc.data.canvas import Box, content_boxes, crop_window, nonzero_box, paste, scale_image, scaled_shape
from icasc.utils import check_int, is_number

__all__ = [
    "CentredDataset",
    "ClutteredDataset",
    "Layout",
    "Placement",
    "check_clutter",
    "size_range",
]

# ------------------------------------------------------------------------------------- options and checks


def _pixels(value: Any, canvas_size: int, name: str) -> int:
    # ints are pixels, floats fractions of the canvas: the two spellings the configs allow
    if not is_number(value):
        raise ValueError(
            f"{name} must hold ints (pixels) or floats in (0, 1] (fractions of the canvas), got {value!r}"
        )
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise ValueError(f"{name} must be >= 1 pixel, got {value}")
        return int(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"{name}={value} is a fraction of the canvas and must be in (0, 1]; give pixels as ints"
        )
    return max(1, round(float(value) * canvas_size))


def size_range(value: Any, canvas_size: int, name: str) -> tuple[int, int]:
    """A size option as an inclusive ``(low, high)`` range of pixels.

    Args:
        value: One size or a ``[low, high]`` pair; ints are pixels, floats in ``(0, 1]`` fractions of
            ``canvas_size`` (rounded, at least 1 pixel).
        canvas_size: The canvas side that fractions refer to.
        name: The option's name, for the messages (e.g. ``"data.clutter.object_size"``).

    Raises:
        ValueError: Not one or two sizes, a size out of range, or ``low > high`` (the message names ``name``).
    """
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(values) not in (1, 2):
        raise ValueError(f"{name} must be one size or a [low, high] pair, got {value!r}")
    low, high = (_pixels(v, canvas_size, name) for v in (values[0], values[-1]))
    if low > high:
        raise ValueError(f"{name}={list(values)}: low {low} px is larger than high {high} px")
    return low, high


def check_clutter(
    canvas_size: Any,
    object_size: Any,
    distractors: Any,
    fragment_size: Any,
    prefix: str = "",
    canvas_name: str = "canvas_size",
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Check the clutter options together and resolve the two size ranges to pixels.

    Args:
        canvas_size: Canvas side in pixels.
        object_size: Side range of the scaled object (its source image's longer side), see :func:`size_range`.
        distractors: Fragments per image, ``>= 0``.
        fragment_size: Side range of the square fragments, at most the smallest object side (fragments are
            cut from other images scaled like objects).
        prefix: Prepended to the option names in messages (``"data.clutter."`` for a config).
        canvas_name: How messages name the canvas side (``"data.image_size"`` for a config).

    Returns:
        ``(object_low, object_high)`` and ``(fragment_low, fragment_high)`` in pixels.

    Raises:
        ValueError: An option is out of range; the message names it and says what fits.
    """
    check_int(canvas_name, canvas_size, 1)
    check_int(f"{prefix}distractors", distractors, 0)
    obj = size_range(object_size, canvas_size, f"{prefix}object_size")
    frag = size_range(fragment_size, canvas_size, f"{prefix}fragment_size")
    if canvas_size < obj[1]:
        raise ValueError(
            f"{canvas_name}={canvas_size} is smaller than the object ({prefix}object_size max {obj[1]} px); "
            f"raise {canvas_name} to at least {obj[1]} or lower {prefix}object_size"
        )
    if frag[1] > obj[0]:
        raise ValueError(
            f"{prefix}fragment_size max {frag[1]} px is larger than the smallest object ({prefix}object_size "
            f"min {obj[0]} px): fragments are cut from other images scaled like objects; lower "
            f"{prefix}fragment_size or raise {prefix}object_size"
        )
    return obj, frag


# ------------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Placement:
    """One image pasted on the canvas.

    Attributes:
        source: Index of the image in the source.
        side: Longer side of the image after scaling, pixels.
        x: Canvas column of the pasted patch's left edge.
        y: Canvas row of the pasted patch's top edge.
        crop: ``(top, left, side)`` of the square fragment cut from the scaled image; ``None``: the whole
            image (the object).
    """

    source: int
    side: int
    x: int
    y: int
    crop: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Layout:
    """What one cluttered sample is made of: fragments (pasted first, in order) and the object (last)."""

    object: Placement
    fragments: tuple[Placement, ...]


def _uniform_int(u: float, low: int, high: int) -> int:
    """The integer of ``[low, high]`` that a uniform ``u`` in ``[0, 1)`` picks."""
    return min(low + int(u * (high - low + 1)), high)


# ----------------------------------------------------------------------------------------------- datasets


class _CanvasDataset(Dataset):
    """Holds a single-label source as ``[N, C, H, W]`` images and int64 labels; samples are dicts."""

    def __init__(self, images: Tensor | np.ndarray, targets: Tensor | np.ndarray | Sequence[int]) -> None:
        images = images.numpy() if isinstance(images, Tensor) else np.asarray(images)
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(f"images must be a non-empty [N, H, W] or [N, C, H, W], got {images.shape}")
        if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {images.dtype}")
        targets = targets.numpy() if isinstance(targets, Tensor) else np.asarray(targets)
        if not np.issubdtype(targets.dtype, np.integer) or targets.shape != (len(images),):
            raise ValueError(f"targets must be {len(images)} int labels, got {targets.dtype} {targets.shape}")
        self.images = images
        self.targets = targets.astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def _image(self, index: int) -> np.ndarray:
        image = self.images[index]
        return image * np.float32(1 / 255) if image.dtype == np.uint8 else image.astype(np.float32)

    def _sample(self, index: int, canvas: np.ndarray, box: Box) -> dict[str, Tensor]:
        return {
            "image": torch.from_numpy(canvas),
            "target": torch.tensor(int(self.targets[index]), dtype=torch.int64),
            "box": torch.tensor(box, dtype=torch.float32),
        }


class ClutteredDataset(_CanvasDataset):
    """Each image of a single-label source, scaled and placed at random on a canvas among fragments of others.

    Sample ``i``: its image scaled so that its longer side is a random ``object_size`` (uniform integer in the
    range), at a uniform random position on a black ``canvas_size`` square, pasted over ``distractors``
    square fragments. Each fragment is a window of side ``fragment_size`` (uniform in the range) around a
    random point of the content (the nonzero pixels' box) of a random image of **another class**, scaled
    like an object, pasted at a uniform random position. Fragments come from the same source, so a split
    never shows another split's images.

    Each sample is a dict: ``"image"`` float32 ``[C, S, S]`` in ``[0, 1]``; ``"target"`` int64 scalar;
    ``"box"`` float32 ``[4]`` tight pixel-edge ``xyxy`` box of the object's nonzero pixels on the canvas.

    Args:
        images: ``[N, H, W]`` or ``[N, C, H, W]``, uint8 ``0..255`` or float ``0..1``; held as given.
        targets: ``N`` int class labels.
        canvas_size: Canvas side ``S`` in pixels.
        object_size: Range of the object's longer side: ints in pixels or floats in ``(0, 1]`` as fractions
            of the canvas; one value for a fixed size. At most ``canvas_size``.
        distractors: Fragments per image, ``>= 0``.
        fragment_size: Range of the fragments' side, as ``object_size``; at most the smallest object side.
        seed: Base seed; ``(seed, split, index)`` determines each sample.
        split: ``"train"``, ``"val"`` or ``"test"``: different streams of the same seed.

    Raises:
        ValueError: An option out of range (named), a malformed source, or ``distractors > 0`` with a source
            holding a single class.
    """

    def __init__(
        self,
        images: Tensor | np.ndarray,
        targets: Tensor | np.ndarray | Sequence[int],
        canvas_size: int = 64,
        object_size: Any = (28, 44),
        distractors: int = 4,
        fragment_size: Any = (10, 16),
        seed: int = 0,
        split: str = "train",
    ) -> None:
        ranges = check_clutter(canvas_size, object_size, distractors, fragment_size)
        self.object_range, self.fragment_range = ranges
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {', '.join(_SPLIT_IDS)}, got {split!r}")
        super().__init__(images, targets)
        self.canvas_size = int(canvas_size)
        self.distractors = int(distractors)
        self.seed = int(seed)
        self.split = split
        # images sorted by class: the images of the other classes are the two runs around the class's own
        classes, self._class_of = np.unique(self.targets, return_inverse=True)
        self._by_class = np.argsort(self._class_of, kind="stable")
        self._count = np.bincount(self._class_of)
        self._start = np.cumsum(self._count) - self._count
        if self.distractors and len(classes) < 2:
            raise ValueError(
                f"distractors={self.distractors} needs images of other classes, but the source holds only "
                f"class {int(classes[0])}; set distractors=0"
            )
        # each image's content box, from which fragments are cut (scaled with the image)
        self._content = content_boxes(self.images) if self.distractors else np.zeros((0, 4), np.int64)

    def _other_class_image(self, u: float, index: int) -> int:
        k = self._class_of[index]
        start, count = int(self._start[k]), int(self._count[k])
        r = _uniform_int(u, 0, len(self) - count - 1)
        return int(self._by_class[r if r < start else r + count])

    def layout(self, index: int) -> Layout:
        """The placements of sample ``index`` (a pure function of ``seed``, ``split`` and ``index``)."""
        index = range(len(self))[index]  # IndexError out of range; negative indices count from the end
        gen = torch.Generator().manual_seed(sample_seed(self.seed, self.split, index))
        # all uniforms in one draw: per-scalar draws would cost more than the rendering
        u = iter(torch.rand(7 * self.distractors + 3, generator=gen, dtype=torch.float64).tolist())
        S, (H, W) = self.canvas_size, self.images.shape[-2:]
        fragments = []
        for _ in range(self.distractors):
            source = self._other_class_image(next(u), index)
            side = _uniform_int(next(u), *self.object_range)
            h, w = scaled_shape(H, W, side)
            x0, y0, x1, y1 = self._content[source].tolist()
            box = (
                x0 * w // W,
                y0 * h // H,
                -(-x1 * w // W),
                -(-y1 * h // H),
            )  # the scaled content, rounded out
            crop = crop_window(box, _uniform_int(next(u), *self.fragment_range), next(u), next(u), h, w)
            x, y = _uniform_int(next(u), 0, S - crop[2]), _uniform_int(next(u), 0, S - crop[2])
            fragments.append(Placement(source, side, x, y, crop))
        side = _uniform_int(next(u), *self.object_range)
        h, w = scaled_shape(H, W, side)
        obj = Placement(index, side, _uniform_int(next(u), 0, S - w), _uniform_int(next(u), 0, S - h))
        return Layout(obj, tuple(fragments))

    def render(self, layout: Layout) -> tuple[np.ndarray, Box]:
        """The float32 canvas ``[C, S, S]`` of ``layout`` and the object's box on it."""
        canvas = np.zeros((self.images.shape[1], self.canvas_size, self.canvas_size), dtype=np.float32)
        for frag in layout.fragments:
            paste(canvas, scale_image(self._image(frag.source), frag.side, frag.crop), frag.x, frag.y)
        obj = layout.object
        x0, y0, x1, y1 = nonzero_box(
            paste(canvas, scale_image(self._image(obj.source), obj.side), obj.x, obj.y)
        )
        return canvas, (obj.x + x0, obj.y + y0, obj.x + x1, obj.y + y1)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        layout = self.layout(index)
        return self._sample(layout.object.source, *self.render(layout))


class CentredDataset(_CanvasDataset):
    """Each image of a source at its own size in the centre of a black canvas (scaled down if larger).

    Samples are dicts as in :class:`ClutteredDataset`; the box is the tight box of the image's nonzero pixels.

    Args:
        images: ``[N, H, W]`` or ``[N, C, H, W]``, uint8 ``0..255`` or float ``0..1``.
        targets: ``N`` int class labels.
        canvas_size: Canvas side in pixels, ``>= 1``.
    """

    def __init__(
        self, images: Tensor | np.ndarray, targets: Tensor | np.ndarray | Sequence[int], canvas_size: int
    ) -> None:
        check_int("canvas_size", canvas_size, 1)
        super().__init__(images, targets)
        self.canvas_size = int(canvas_size)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = range(len(self))[index]
        S = self.canvas_size
        image = self._image(index)
        if max(image.shape[-2:]) > S:
            image = scale_image(image, S)
        h, w = image.shape[-2:]
        x, y = (S - w) // 2, (S - h) // 2
        canvas = np.zeros((image.shape[0], S, S), dtype=np.float32)
        x0, y0, x1, y1 = nonzero_box(paste(canvas, image, x, y))
        return self._sample(index, canvas, (x + x0, y + y0, x + x1, y + y1))
