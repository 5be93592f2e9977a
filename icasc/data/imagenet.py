"""ImageNet-1k (ILSVRC2012) from an ImageFolder tree on disk, as dict batches.

Expected layout (torchvision cannot download ImageNet; get it from image-net.org)::

    root/train/<wnid>/*.JPEG      e.g. root/train/n01440764/n01440764_10026.JPEG
    root/val/<wnid>/*.JPEG        the 50,000 validation images sorted into one folder per class

Transforms follow the standard recipe (and the Group-CAM fine-tuning of §5): training images get a
``RandomResizedCrop(image_size)`` and a horizontal flip; evaluation images are resized (shorter side to
``resize``) and centre cropped to ``image_size``, or, with ``ten_crop=True``, ten-cropped (ICASC Table 6
"tenCrop"). Both are normalised with the ImageNet mean and std.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from icasc.data.base import (
    ImageNetNormalizedDataModule,
    check_crop_sizes,
    check_label_kind,
    check_loader_args,
    check_root,
    check_root_exists,
)
from icasc.data.transforms import eval_transform, ten_crop_transform, train_transform
from icasc.utils import check_int

__all__ = [
    "DictImageDataset",
    "ImageNetDataModule",
    "eval_transform",
    "ten_crop_transform",
    "train_transform",
]

log = logging.getLogger(__name__)

_LAYOUT = "root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG (ImageFolder layout, one folder per class)"


class DictImageDataset(Dataset):
    """Wrap a ``(image, label)`` dataset (e.g. ``ImageFolder``) so samples are ``{"image", "target"}`` dicts.

    Args:
        dataset: A dataset of ``(image tensor [3, H, W], int label)`` pairs.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, label = self.dataset[index]
        return {"image": image, "target": torch.tensor(int(label), dtype=torch.int64)}


def _class_folders(split_dir: Path) -> list[str]:
    with os.scandir(split_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir())


class ImageNetDataModule(ImageNetNormalizedDataModule):
    """Lightning data module over an ImageNet-style ImageFolder tree (``root/{train,val}/<class>/*``).

    ``batch_size`` is the **global** batch (ICASC Table 1: 256): under DDP each of the ``trainer.world_size``
    processes loads ``batch_size / world_size`` images per step (256 on 8 GPUs is 32 per GPU).

    Ten-crop evaluation (``ten_crop=True``): validation and test samples' ``"image"`` is ``[10, 3, H, W]``
    (the four corners and the centre of the resized image and of its mirror image), so batches are
    ``[B, 10, 3, H, W]``; :class:`~icasc.models.ICASCModule` averages the softmax probabilities over the ten
    crops. Attention and pointing-game metrics are not computed on ten-crop batches (a map per crop would
    not be one map per image); validate without ten-crop to get them. Training is unaffected.

    Args:
        root: Directory holding ``train/`` and ``val/``.
        batch_size: Global batch: images per step summed over all devices; divisible by the world size.
        num_workers: DataLoader worker processes (persistent when ``> 0``).
        image_size: Side of the crops fed to the model (224).
        resize: Evaluation: the shorter side is resized to this before the centre crop (256);
            ``>= image_size``.
        pin_memory: Passed to the DataLoaders.
        train_subset: Train on this many randomly drawn training images (``seed``); ``None`` = all.
        val_subset: Validate on this many randomly drawn validation images (``seed``); ``None`` = all.
        seed: Seed of the subset draws.
        num_classes: The class count the model is built for (the configs pass it to the model); checked
            against the class folders. ``None`` skips the check.
        multilabel: Must be ``False`` (ImageNet is single-label); present so configs can read it.
        ten_crop: Evaluate (val and test) on ten crops per image instead of the centre crop.

    Raises:
        FileNotFoundError: ``root`` is not a directory (the message shows the expected layout).
        ValueError: An argument out of range.
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 256,
        num_workers: int = 8,
        image_size: int = 224,
        resize: int = 256,
        pin_memory: bool = True,
        train_subset: int | None = None,
        val_subset: int | None = None,
        seed: int = 0,
        num_classes: int | None = None,
        multilabel: bool = False,
        ten_crop: bool = False,
    ) -> None:
        super().__init__()
        self.root = check_root(root, f"set data.root to the ImageNet directory holding {_LAYOUT}")
        check_loader_args(batch_size, num_workers)
        check_crop_sizes(image_size, resize)
        check_int("train_subset", train_subset, 1, optional=True)
        check_int("val_subset", val_subset, 1, optional=True)
        check_int("num_classes", num_classes, 2, optional=True)
        if not isinstance(ten_crop, bool):
            raise ValueError(f"ten_crop must be true or false, got {ten_crop!r}")
        check_label_kind("ImageNet", multilabel, self.MULTILABEL)
        check_root_exists(
            self.root,
            "ImageNet",
            f"Expected {_LAYOUT}. torchvision cannot download ImageNet; get ILSVRC2012 from image-net.org, "
            "sort the validation images into class folders, and set data.root",
        )
        self.save_hyperparameters(logger=False)
        self.expected_classes = num_classes
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self._classes: dict[str, list[str]] = {}

    # -- classes --------------------------------------------------------------------------------------------

    def split_dir(self, split: str) -> Path:
        """``root/<split>``, checked to exist and to hold class folders."""
        path = self.root / split
        if not path.is_dir():
            raise FileNotFoundError(
                f"ImageNet split folder {path} is missing: expected {_LAYOUT}. torchvision cannot download "
                "ImageNet; sort the images into class folders under data.root"
            )
        return path

    def classes(self, split: str) -> list[str]:
        """The sorted class folder names (wnids) of ``split`` (``"train"`` or ``"val"``)."""
        if split not in self._classes:
            path = self.split_dir(split)
            names = _class_folders(path)
            if not names:
                raise FileNotFoundError(f"{path} holds no class folders: expected {_LAYOUT}")
            self._classes[split] = names
        return self._classes[split]

    def _check_classes(self, splits: list[str]) -> list[str]:
        first = self.classes(splits[0])
        for split in splits[1:]:
            other = self.classes(split)
            if other != first:
                only_a = sorted(set(first) - set(other))[:5]
                only_b = sorted(set(other) - set(first))[:5]
                raise ValueError(
                    f"{splits[0]}/ and {split}/ under {self.root} hold different classes "
                    f"({len(first)} vs {len(other)} folders; only in {splits[0]}: {only_a}, only in {split}: "
                    f"{only_b}); both splits need the same class folders"
                )
        if self.expected_classes is not None and len(first) != self.expected_classes:
            raise ValueError(
                f"{self.root} holds {len(first)} class folders but data.num_classes={self.expected_classes}; "
                f"set data.num_classes={len(first)} (the model is built with it)"
            )
        return first

    # -- datasets -------------------------------------------------------------------------------------------

    def _subset(self, dataset: Dataset, size: int | None, name: str) -> Dataset:
        n = len(dataset)  # type: ignore[arg-type]
        if size is None or size >= n:
            if size is not None:
                log.info("%s=%d >= the %d images of the split: using all of them", name, size, n)
            return dataset
        generator = torch.Generator().manual_seed(int(self.hparams.seed))
        return Subset(dataset, torch.randperm(n, generator=generator)[:size].tolist())

    def _folder(self, split: str, transform: v2.Compose) -> ImageFolder:
        # ImageFolder lists the class folders as classes() does (sorted directories) and raises when one
        # holds no image.
        return ImageFolder(str(self.split_dir(split)), transform=transform)

    def setup(self, stage: str | None = None) -> None:
        """Index the splits needed by ``stage`` (``fit`` needs train and val; the others val)."""
        hp = self.hparams
        needs_train = stage in ("fit", None)
        self._check_classes(["train", "val"] if needs_train else ["val"])
        if needs_train and self.train_dataset is None:
            folder = self._folder("train", train_transform(hp.image_size))
            self.train_dataset = DictImageDataset(self._subset(folder, hp.train_subset, "train_subset"))
        if self.val_dataset is None:
            make = ten_crop_transform if hp.get("ten_crop", False) else eval_transform
            folder = self._folder("val", make(hp.image_size, hp.resize))
            self.val_dataset = DictImageDataset(self._subset(folder, hp.val_subset, "val_subset"))

    def test_dataloader(self) -> DataLoader:
        """ImageNet's test labels are not public: testing scores the validation split (as papers report)."""
        return self._loader(self.val_dataset, "val", shuffle=False)

    # -- what models and tasks read -------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of class folders (of ``val/``, which every stage uses)."""
        return len(self.classes("val"))

    @property
    def class_names(self) -> list[str]:
        """Class folder names (wnids), in label order."""
        return list(self.classes("val"))

    @property
    def ten_crop(self) -> bool:
        """Whether val/test samples are ten crops ``[10, 3, H, W]``."""
        return bool(self.hparams.get("ten_crop", False))
