"""Embedded, seeded synthetic dataset where attention matters and can be scored.

Each image shows one object (or, in multi-label mode, several objects of distinct classes) on a cluttered
background, together with smaller distractor parts. A class is a ``(shape, texture)`` combination; classes
share shapes and textures with each other, and distractors carry class shapes with non-class textures or
class textures without a class shape, so the class is only decidable by looking at the object itself.
Colours are random and carry no class information. Every single-label sample comes with the tight bounding
box of its object, so pointing-game and localisation metrics can be computed.

Samples are generated in-process (no files, no downloads) from a ``torch.Generator`` seeded by
``(seed, split, index)``: any sample is reproducible independently of access order and of DataLoader
workers. A whole split is generated once at construction and cached in memory as uint8 tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from icasc.data._synthetic_render import (
    _SPLIT_IDS,
    MAX_CLASSES,
    SHAPES,
    TEXTURES,
    SceneConfig,
    class_grid,
    render_split,
)
from icasc.data.base import DictDataModule
from icasc.utils import is_int, is_number

__all__ = [
    "SHAPES",
    "TEXTURES",
    "RandomHorizontalFlip",
    "SyntheticDataModule",
    "SyntheticShapes",
    "class_parts",
    "hflip_sample",
]

MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Per-channel mean used for normalisation (a fixed constant, measured on the default configuration)."""
STD: tuple[float, float, float] = (0.225, 0.225, 0.225)
"""Per-channel standard deviation used for normalisation (a fixed constant)."""


def class_parts(num_classes: int) -> list[tuple[str, str]]:
    """The ``(shape, texture)`` pair of every class, see :func:`~icasc.data._synthetic_render.class_grid`.

    Args:
        num_classes: Number of classes, in ``[2, 36]``.

    Returns:
        ``num_classes`` pairs of shape and texture names, indexed by class id.
    """
    _check_int("num_classes", num_classes, 2, MAX_CLASSES)
    return [(SHAPES[s], TEXTURES[t]) for s, t in class_grid(num_classes)]


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if not is_int(value):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < lo or (hi is not None and value > hi):
        valid = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be in {valid}, got {value}")


def _validate(
    num_classes: int, image_size: int, clutter: float, distractors: int, multilabel: bool, max_objects: int
) -> None:
    _check_int("num_classes", num_classes, 2, MAX_CLASSES)
    _check_int("image_size", image_size, 32)
    if not is_number(clutter):
        raise ValueError(f"clutter must be a float, got {type(clutter).__name__} ({clutter!r})")
    if not 0.0 <= clutter <= 1.0:
        raise ValueError(f"clutter must be in [0, 1], got {clutter}")
    _check_int("distractors", distractors, 0)
    if not isinstance(multilabel, bool):
        raise ValueError(f"multilabel must be a bool, got {type(multilabel).__name__} ({multilabel!r})")
    _check_int("max_objects", max_objects, 1, num_classes)


class SyntheticShapes(Dataset):
    """Seeded synthetic classification dataset of textured shapes among distractors and clutter.

    Class ``k`` is the combination ``class_parts(num_classes)[k]`` of a shape (disc, square, triangle,
    cross, ring, diamond) and a texture (horizontal stripes, checker, dots, vertical stripes, solid, grid);
    e.g. ``num_classes=10`` uses 5 shapes x 2 textures. Single-label targets are exactly balanced
    (sample ``i`` has class ``i % num_classes``).

    Scene content: the object's side is 30-55% of the image side (x0.7 when a multi-label image holds
    several objects), at a random position, with random colours that contrast with the background.
    Each distractor (14-24% of the side, drawn beneath the objects and placed off them when possible) is
    either a class shape with a texture that makes no class (an unused texture, or a distractor-only
    speckle) or a class texture on an elongated ellipse (no class shape). ``clutter`` scales the
    low-contrast background noise and the probability of each of up to 6 blobs and 4 line segments;
    with ``clutter=0`` the background is one flat colour.

    Each sample is a dict:

    * ``"image"``: float32 ``[3, H, W]``, normalised with :attr:`mean` and :attr:`std`;
    * ``"target"``: int64 scalar class id, or in multi-label mode a float32 multi-hot ``[num_classes]``;
    * ``"box"`` (single-label mode only): float32 ``[4]`` tight ``(x0, y0, x1, y1)`` box of the object in
      pixel-edge coordinates (it covers columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``). Multi-label
      samples have **no** ``"box"`` key; use :meth:`object_mask` there.

    Args:
        num_samples: Number of samples, ``>= 1``.
        num_classes: Number of classes, in ``[2, 36]``.
        image_size: Image side in pixels, ``>= 32``.
        clutter: Amount of low-contrast background clutter (noise, blobs, lines), in ``[0, 1]``.
        distractors: Number of distractor parts per image, ``>= 0``.
        multilabel: If True, each image holds ``1 .. max_objects`` objects of distinct classes (placed
            without overlap when a few random placements allow it) and targets are multi-hot.
        max_objects: Maximum number of objects per image in multi-label mode, in ``[1, num_classes]``.
        seed: Base seed; together with ``split`` and the index it determines each sample.
        split: One of ``"train"``, ``"val"``, ``"test"``; different splits are different samples.

    Raises:
        ValueError: If an argument has the wrong type or is out of its valid range.
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int = 10,
        image_size: int = 64,
        clutter: float = 0.5,
        distractors: int = 2,
        multilabel: bool = False,
        max_objects: int = 3,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        _check_int("num_samples", num_samples, 1)
        _validate(num_classes, image_size, clutter, distractors, multilabel, max_objects)
        _check_int("seed", seed, -(2**63), 2**64 - 1)
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        self.num_classes = num_classes
        self.image_size = image_size
        self.multilabel = multilabel
        self.split = split
        self.seed = seed
        self.class_parts = class_parts(num_classes)
        self.class_names = [f"{shape}/{texture}" for shape, texture in self.class_parts]
        self.mean = MEAN
        self.std = STD
        cfg = SceneConfig(num_classes, image_size, float(clutter), distractors, multilabel, max_objects)
        self._images, classes, self._object_ids = render_split(cfg, seed, split, num_samples)
        self._mean = torch.tensor(MEAN).view(3, 1, 1)
        self._std = torch.tensor(STD).view(3, 1, 1)
        if multilabel:
            self._targets = torch.zeros(num_samples, num_classes)
            for i, cls in enumerate(classes):
                self._targets[i, cls] = 1.0
            self._boxes = None
        else:
            self._targets = torch.tensor([c[0] for c in classes], dtype=torch.int64)
            self._boxes = self._tight_boxes(self._object_ids == 1)

    @staticmethod
    def _tight_boxes(masks: Tensor) -> Tensor:
        """Pixel-edge ``xyxy`` boxes of non-empty boolean masks ``[N, H, W]``."""
        cols, rows = masks.any(dim=1), masks.any(dim=2)  # [N, W], [N, H]
        W, H = cols.shape[1], rows.shape[1]
        x_idx, y_idx = torch.arange(W), torch.arange(H)
        x0 = torch.where(cols, x_idx, W).amin(dim=1)
        x1 = torch.where(cols, x_idx, -1).amax(dim=1) + 1
        y0 = torch.where(rows, y_idx, H).amin(dim=1)
        y1 = torch.where(rows, y_idx, -1).amax(dim=1) + 1
        return torch.stack([x0, y0, x1, y1], dim=1).float()

    def __len__(self) -> int:
        return self._images.shape[0]

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return index % n

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        i = self._check_index(index)
        image = (self._images[i].float() / 255.0 - self._mean) / self._std
        sample = {"image": image, "target": self._targets[i].clone()}
        if self._boxes is not None:
            sample["box"] = self._boxes[i].clone()
        return sample

    def raw(self, index: int) -> Tensor:
        """The un-normalised image of sample ``index``: float32 ``[3, H, W]`` in ``[0, 1]`` (for figures)."""
        return self._images[self._check_index(index)].float() / 255.0

    def object_mask(self, index: int) -> Tensor:
        """Boolean ``[H, W]`` mask of the visible object pixels (of all objects in multi-label mode)."""
        return self._object_ids[self._check_index(index)] > 0

    @property
    def targets(self) -> Tensor:
        """All targets: int64 ``[N]`` class ids, or float32 ``[N, num_classes]`` multi-hot if multi-label."""
        return self._targets.clone()

    @property
    def boxes(self) -> Tensor | None:
        """All object boxes as float32 ``[N, 4]`` xyxy, or None in multi-label mode."""
        return None if self._boxes is None else self._boxes.clone()


def hflip_sample(sample: dict[str, Tensor]) -> dict[str, Tensor]:
    """Horizontally flip a sample's image and, if present, its ``xyxy`` pixel-edge box.

    Args:
        sample: A sample dict with an ``"image"`` ``[C, H, W]`` and optionally a ``"box"`` ``[4]``.

    Returns:
        A new dict; other keys are passed through unchanged.
    """
    out = dict(sample)
    image = sample["image"]
    out["image"] = image.flip(-1)
    if "box" in sample:
        width = image.shape[-1]
        x0, y0, x1, y1 = sample["box"].unbind(-1)
        out["box"] = torch.stack([width - x1, y0, width - x0, y1], dim=-1)
    return out


class RandomHorizontalFlip(Dataset):
    """Dataset wrapper flipping samples (image and box) horizontally with probability ``p``.

    The flip decision uses the global torch RNG (seeded per DataLoader worker by PyTorch/Lightning). All
    shapes and textures of :class:`SyntheticShapes` are flip-invariant, so targets are unchanged.

    Args:
        dataset: A dataset of sample dicts with ``"image"`` and optionally ``"box"``.
        p: Flip probability in ``[0, 1]``.
    """

    def __init__(self, dataset: Dataset, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.dataset = dataset
        self.p = p

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = self.dataset[index]
        if self.p > 0 and torch.rand(()).item() < self.p:
            sample = hflip_sample(sample)
        return sample

    def __getattr__(self, name: str) -> Any:
        # Expose attributes of the wrapped dataset (num_classes, class_names, raw, ...).
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class SyntheticDataModule(DictDataModule):
    """Lightning data module over train/val/test splits of :class:`SyntheticShapes`.

    The three splits use different generator streams of the same ``seed``, so they are disjoint samples yet
    reproducible. Datasets are built in :meth:`setup` (idempotently). The train loader shuffles (with the
    global torch RNG, i.e. seeded by ``lightning.seed_everything``); val/test loaders do not.

    Args:
        num_classes: Number of classes, in ``[2, 36]``.
        image_size: Image side in pixels, ``>= 32``.
        train_size: Number of training samples, ``>= 1``.
        val_size: Number of validation samples, ``>= 1``.
        test_size: Number of test samples, ``>= 1``.
        clutter: Background clutter amount in ``[0, 1]``.
        distractors: Distractor parts per image, ``>= 0``.
        multilabel: Multi-label mode (multi-hot targets, no ``"box"`` key).
        max_objects: Maximum objects per image in multi-label mode, in ``[1, num_classes]``.
        seed: Base seed of the generated data.
        batch_size: Global batch size, ``>= 1``; under DDP each process loads ``batch_size / world_size``.
        num_workers: DataLoader workers, ``>= 0`` (workers are persistent when ``> 0``).
        pin_memory: Passed to the DataLoaders.
        augment: If True, training samples are horizontally flipped (boxes too) with probability 0.5.

    Raises:
        ValueError: If an argument has the wrong type or is out of its valid range.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 64,
        train_size: int = 2000,
        val_size: int = 500,
        test_size: int = 500,
        clutter: float = 0.5,
        distractors: int = 2,
        multilabel: bool = False,
        max_objects: int = 3,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: bool = True,
    ) -> None:
        super().__init__()
        _validate(num_classes, image_size, clutter, distractors, multilabel, max_objects)
        for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            _check_int(name, value, 1)
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        self.save_hyperparameters(logger=False)
        self.train_dataset: Dataset | None = None
        self.val_dataset: SyntheticShapes | None = None
        self.test_dataset: SyntheticShapes | None = None
        self._class_names = [f"{s}/{t}" for s, t in class_parts(num_classes)]

    def _make(self, split: str, size: int) -> SyntheticShapes:
        hp = self.hparams
        return SyntheticShapes(
            size,
            num_classes=hp.num_classes,
            image_size=hp.image_size,
            clutter=hp.clutter,
            distractors=hp.distractors,
            multilabel=hp.multilabel,
            max_objects=hp.max_objects,
            seed=hp.seed,
            split=split,
        )

    def setup(self, stage: str | None = None) -> None:
        """Generate the splits needed by ``stage`` (``fit``, ``validate``, ``test``, ``predict`` or None)."""
        valid = {"fit", "validate", "test", "predict", None}
        if stage not in valid:
            raise ValueError(f"stage must be one of fit, validate, test, predict or None, got {stage!r}")
        if stage in ("fit", None) and self.train_dataset is None:
            train = self._make("train", self.hparams.train_size)
            self.train_dataset = RandomHorizontalFlip(train, 0.5) if self.hparams.augment else train
        if stage in ("fit", "validate", None) and self.val_dataset is None:
            self.val_dataset = self._make("val", self.hparams.val_size)
        if stage in ("test", "predict", None) and self.test_dataset is None:
            self.test_dataset = self._make("test", self.hparams.test_size)

    def predict_dataloader(self) -> DataLoader:
        """Loader over the test split, in order."""
        return self._loader(self.test_dataset, "test", shuffle=False)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.hparams.num_classes

    @property
    def multilabel(self) -> bool:
        """Whether targets are multi-hot."""
        return self.hparams.multilabel

    @property
    def image_size(self) -> int:
        """Image side in pixels."""
        return self.hparams.image_size

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel normalisation mean."""
        return MEAN

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel normalisation standard deviation."""
        return STD

    @property
    def class_names(self) -> list[str]:
        """Class names ``"shape/texture"``, indexed by class id."""
        return list(self._class_names)
