"""A folder of the user's own images, one sub-folder per class, optionally with object boxes.

Two layouts, told apart by the folder names under ``data.root``::

    root/train/<class>/*   root/val/<class>/*   (optional root/test/<class>/*)    the splits as given
    root/<class>/*                                                               split here at random

The single-folder layout is split per class with a seeded draw: ``val_fraction`` (and ``test_fraction``) of
each class's images, at least one each, go to validation (and test); the rest train. Classes are the class
folders' names, sorted (label ``k`` is the ``k``-th name); every split needs the same class folders. Images
are the files with a suffix of :data:`~icasc.data.images.IMAGE_SUFFIXES` anywhere below a class folder;
hidden folders (``.name``) are skipped. Files PIL cannot open are left out with one warning naming them.
Without ``root/test/`` (or a ``test_fraction``) there is no test split: the test loader says how to add one.

Transforms: training ``RandomResizedCrop(image_size)`` + horizontal flip; evaluation shorter side to
``resize``, centre crop ``image_size``; normalised with ``mean``/``std`` (ImageNet's by default).

Boxes (``boxes=<file>``, see :mod:`icasc.data.boxes`) travel with the pixels through every resize, crop
and flip; samples then carry ``"box"``, float32 ``xyxy`` in pixels of the transformed image, clamped to it,
which the pointing game and the mass in the box are scored on. An image with several boxes gets the box
enclosing them all. Within one split every image needs a box, or none does (a split without boxes has no
``"box"`` key; e.g. boxes drawn only for the validation images).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from icasc.data.base import DictDataModule, check_crop_sizes, check_loader_args, check_root
from icasc.data.boxes import BoxRow, check_box_file, enclosing_boxes, read_box_file
from icasc.data.files import ImageFileDataset
from icasc.data.folder_layout import (
    ROOT_HINT,
    count_image_folder_classes,
    find_split_folders,
    image_folder_classes,
    list_class_images,
    split_per_class,
    unreadable_images,
)
from icasc.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from icasc.data.transforms import eval_transform, train_transform
from icasc.utils import check_int, check_number

__all__ = ["ImageFolderDataModule", "count_image_folder_classes"]

log = logging.getLogger(__name__)


def _check_stats(name: str, value: Any, positive: bool) -> tuple[float, float, float]:
    ok = isinstance(value, Sequence) and len(value) == 3
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or (positive and min(value) <= 0):
        raise ValueError(
            f"data.{name} must be 3 {'positive ' if positive else ''}numbers, one per RGB channel (in [0, 1] "
            f"units; ImageNet's: {list(IMAGENET_MEAN if name == 'mean' else IMAGENET_STD)}), got {value!r}"
        )
    return tuple(float(v) for v in value)  # type: ignore[return-value]


class ImageFolderDataModule(DictDataModule):
    """Lightning data module over a folder of images, one sub-folder per class (see the module docstring).

    ``batch_size`` is the **global** batch; under DDP each process loads ``batch_size / world_size``.

    Args:
        root: The folder of images, in one of the two layouts (:data:`~icasc.data.folder_layout.LAYOUTS`).
        batch_size: Global batch size, divisible by the world size.
        num_workers: DataLoader worker processes (persistent when ``> 0``).
        pin_memory: Passed to the DataLoaders.
        image_size: Side of the crops fed to the model.
        resize: Evaluation: the shorter side is resized to this before the centre crop; ``>= image_size``.
        augment: Train on ``RandomResizedCrop(image_size)`` + horizontal flip; ``False``: on the evaluation
            transform.
        val_fraction: Single-folder layout: share of each class validated on, in ``(0, 1)``.
        test_fraction: Single-folder layout: share of each class held out for testing, in ``[0, 1)``; must be
            0 under the train/val layout (add ``root/test/<class>/*`` there).
        seed: Seed of the single-folder split.
        boxes: A box file (``.csv`` or COCO ``.json``, :mod:`icasc.data.boxes`); relative to ``root``.
        mean: Per-channel normalisation mean (ImageNet's by default, what pretrained backbones expect).
        std: Per-channel normalisation standard deviation.
        num_classes: Checked against the class folders when given; ``None`` takes their number.
        multilabel: Must be ``False``: each image has the one class of its folder.
        verify_images: Open every image once in ``setup`` (header check) and leave out, with one warning,
            those PIL cannot read; ``False`` skips the check (a bad file then fails when loaded).

    Raises:
        ValueError: An argument out of range, an unset ``root``, a wrong layout, a ``num_classes`` that is not
            the number of class folders.
        FileNotFoundError: ``root`` or the box file does not exist.
    """

    def __init__(
        self,
        root: str | Path | None,
        batch_size: int = 32,
        num_workers: int = 2,
        pin_memory: bool = True,
        image_size: int = 224,
        resize: int = 256,
        augment: bool = True,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        seed: int = 0,
        boxes: str | Path | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        num_classes: int | None = None,
        multilabel: bool = False,
        verify_images: bool = True,
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        check_crop_sizes(image_size, resize)
        check_int("seed", seed, 0)
        check_int("num_classes", num_classes, 1, optional=True)
        check_number("data.val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
        check_number("data.test_fraction", test_fraction, 0, 1, high_open=True)
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} leaves no training "
                "images; their sum must be below 1"
            )
        self._mean, self._std = _check_stats("mean", mean, False), _check_stats("std", std, True)
        if multilabel is not False:
            raise ValueError(
                "data=image_folder is single-label (each image has the class of its folder): set "
                "data.multilabel=false"
            )
        self.root = check_root(root, ROOT_HINT)
        self.classes = image_folder_classes(self.root)
        self.folders = find_split_folders(self.root)
        if num_classes is not None and num_classes != len(self.classes):
            raise ValueError(
                f"data.root={self.root} holds {len(self.classes)} class folders but "
                f"data.num_classes={num_classes}; set data.num_classes={len(self.classes)} or leave it to "
                "the folders (the default)"
            )
        if test_fraction and "all" not in self.folders:
            raise ValueError(
                f"data.test_fraction={test_fraction} splits a single folder of classes, but data.root="
                f"{self.root} holds train/ and val/: add root/test/<class>/* for a test split and set "
                "data.test_fraction=0"
            )
        self.boxes_file = None
        if boxes is not None and str(boxes) != "":
            path = Path(boxes).expanduser()
            self.boxes_file = path if path.is_absolute() else self.root / path
            check_box_file(self.boxes_file)  # the format and the path now; setup reads it
        self.save_hyperparameters(logger=False)
        self._splits: dict[str, tuple[list[Path], list[int]]] | None = None
        self._boxes: dict[str, Tensor] | None = None

    # -- files ----------------------------------------------------------------------------------------------

    def splits(self) -> dict[str, tuple[list[Path], list[int]]]:
        """``{"train", "val"[, "test"]: (files, labels)}`` of the readable images (listed once, then cached).

        Raises:
            ValueError: A class folder without (readable) images, a class too small to split, a malformed box
                file.
            FileNotFoundError: Boxes naming files that are not images under ``root``.
        """
        if self._splits is None:
            listed = {s: list_class_images(f, self.classes) for s, f in self.folders.items()}
            if self.boxes_file is not None:
                self._boxes = self._read_boxes(
                    [p for per_class in listed.values() for f in per_class for p in f]
                )
            if self.hparams.verify_images:
                listed = self._drop_unreadable(listed)
            if "all" in listed:
                hp = self.hparams
                listed = split_per_class(
                    listed["all"], self.classes, hp.val_fraction, hp.test_fraction, hp.seed
                )
                if not hp.test_fraction:
                    del listed["test"]
            self._splits = {s: _flatten(per_class) for s, per_class in listed.items()}
        return self._splits

    def _drop_unreadable(self, listed: dict[str, list[list[Path]]]) -> dict[str, list[list[Path]]]:
        bad = unreadable_images(p for per_class in listed.values() for files in per_class for p in files)
        if not bad:
            return listed
        log.warning(
            "skipping %d unreadable image(s) under %s (PIL cannot open them): %s",
            len(bad),
            self.root,
            "; ".join(f"{p} ({why})" for p, why in bad),
        )
        skipped = {p for p, _ in bad}
        kept = {s: [[p for p in f if p not in skipped] for f in per_class] for s, per_class in listed.items()}
        for split, per_class in kept.items():
            for name, files in zip(self.classes, per_class):
                if not files:
                    raise ValueError(
                        f"no readable image in the class folder {self.folders[split] / name}: PIL cannot "
                        "open any of its files; replace them with images or remove the folder"
                    )
        return kept

    def _read_boxes(self, files: list[Path]) -> dict[str, Tensor]:
        rows: list[BoxRow] = read_box_file(self.boxes_file)  # type: ignore[arg-type]
        known = {p.relative_to(self.root).as_posix() for p in files}
        unknown = [r for r in rows if r.filename not in known]
        if unknown:
            listed = "; ".join(f"{r.where}: {r.filename}" for r in unknown[:5])
            raise FileNotFoundError(
                f"{len(unknown)} box(es) in data.boxes={self.boxes_file} name files that are not images "
                f"under data.root={self.root}: {listed}{' ...' if len(unknown) > 5 else ''}. Filenames are "
                f"relative to data.root, e.g. {min(known)}; fix or remove those rows"
            )
        several = sum(n > 1 for n in Counter(r.filename for r in rows).values())
        if several:
            log.info(
                "%d image(s) have several boxes: each is scored on the box enclosing all of them", several
            )
        return enclosing_boxes(rows)

    def _split_boxes(self, split: str, files: list[Path]) -> Tensor | None:
        if self._boxes is None:
            return None
        names = [p.relative_to(self.root).as_posix() for p in files]
        missing = [n for n in names if n not in self._boxes]
        if not missing:
            return torch.stack([self._boxes[n] for n in names])
        if len(missing) < len(names):
            raise ValueError(
                f"data.boxes={self.boxes_file} has boxes for {len(names) - len(missing)} of the {len(names)} "
                f"{split} images but none for {len(missing)}: {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}. Within a split every image needs a box, or none "
                "does: add rows for these images (filename relative to data.root)"
            )
        if split != "train":
            log.warning(
                "data.boxes=%s has no box for any of the %d %s images: the pointing game and the mass in the "
                "box are not scored on them",
                self.boxes_file,
                len(names),
                split,
            )
        return None

    # -- datasets -------------------------------------------------------------------------------------------

    def _dataset(self, split: str, train: bool) -> ImageFileDataset:
        hp = self.hparams
        files, labels = self.splits()[split]
        boxes = self._split_boxes(split, files)
        if train and hp.augment:
            transform = train_transform(hp.image_size, self._mean, self._std)
        else:
            transform = eval_transform(hp.image_size, hp.resize, self._mean, self._std)
        if boxes is not None:  # the boxes follow every resize, crop and flip, then are clamped to the image
            transform = v2.Compose([transform, v2.ClampBoundingBoxes()])
        return ImageFileDataset(files, labels, transform, boxes=boxes)

    def setup(self, stage: str | None = None) -> None:
        """Build the splits ``stage`` needs (``fit``: train and val; ``validate``: val; ``test``: test)."""
        splits = self.splits()
        if stage in ("fit", None) and self.train_dataset is None:
            self.train_dataset = self._dataset("train", train=True)
        if stage in ("fit", "validate", None) and self.val_dataset is None:
            self.val_dataset = self._dataset("val", train=False)
        if stage in ("test", "predict", None) and self.test_dataset is None and "test" in splits:
            self.test_dataset = self._dataset("test", train=False)

    def check_split(self, name: str) -> None:
        """The contract's optional split check (:mod:`icasc.data.contract`), run before any training.

        Args:
            name: ``"train"``, ``"val"``, ``"test"`` or ``"predict"`` (which reads the test split).

        Raises:
            ValueError: ``name`` is a test or predict split and the data has no test split (the message
                says how to add one); train and val always exist once ``root`` is valid.
        """
        if name in ("test", "predict"):
            self._check_test_split()

    def _check_test_split(self) -> None:
        if self.test_dataset is None and "test" not in self.splits():
            how = (
                "set data.test_fraction (e.g. 0.1) to hold out a share of each class"
                if "all" in self.folders
                else f"add {self.root / 'test'}/<class>/* beside train/ and val/ (the same class folders)"
            )
            raise ValueError(f"data.root={self.root} has no test split: {how}")

    def test_dataloader(self) -> DataLoader:
        """Loader over the test split, in order.

        Raises:
            ValueError: There is no test split (the message says how to add one).
        """
        self._check_test_split()
        return super().test_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Loader over the test split, in order (see :meth:`test_dataloader`)."""
        self._check_test_split()
        return super().predict_dataloader()

    # -- what models and tasks read -------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """The class folder names, sorted: label ``k`` is ``class_names[k]``."""
        return list(self.classes)

    @property
    def num_classes(self) -> int:
        """The number of class folders."""
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        """``False``: each image has the one class of its folder."""
        return False

    @property
    def image_size(self) -> int:
        """Side of the model's input crops."""
        return self.hparams.image_size

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel normalisation mean."""
        return self._mean

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel normalisation standard deviation."""
        return self._std


def _flatten(per_class: Sequence[Sequence[Path]]) -> tuple[list[Path], list[int]]:
    """Files of all classes in class order, and their labels."""
    return [p for files in per_class for p in files], [k for k, files in enumerate(per_class) for _ in files]
