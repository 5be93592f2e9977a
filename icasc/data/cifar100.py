"""CIFAR-100 (torchvision ``CIFAR100``, the python pickles) as dict batches, with the ICASC paper's recipe.

Expected layout (``data.download=true`` fetches and unpacks the official archive there)::

    root/cifar-100-python/train     pickle: data uint8 [50000, 3072], fine_labels, coarse_labels, filenames
    root/cifar-100-python/test      the same with 10,000 images
    root/cifar-100-python/meta      fine_label_names, coarse_label_names

Recipe (ICASC appendix A.1, after the ResNet paper): the per-pixel mean of the training images (a ``[3, 32,
32]`` image in ``[0, 1]`` scale) is subtracted; training images are then padded by 4 zeros on each side and
a random 32x32 crop of the image or of its mirror image is taken. Because the mean is subtracted first, the
zero padding is the mean colour, as in the original recipe. ``normalization="channel"`` instead subtracts
the per-channel mean and divides by the per-channel standard deviation, both measured on the training
images.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR100
from torchvision.transforms import v2

from icasc.data.base import (
    DictDataModule,
    check_label_kind,
    check_loader_args,
    check_root,
    check_root_exists,
)
from icasc.utils import check_choice, check_int

__all__ = ["CIFAR100DataModule", "CIFARTensorDataset"]

log = logging.getLogger(__name__)

_FILES = ("train", "test", "meta")
_FOLDER = "cifar-100-python"


class _CIFAR100Files(CIFAR100):
    # torchvision checks every file's md5, which only the official pickles pass; the download still checks
    # the archive's md5, and a malformed pickle fails to load with a clear error (see _load).
    train_list: ClassVar[list[list[str | None]]] = [["train", None]]
    test_list: ClassVar[list[list[str | None]]] = [["test", None]]
    meta: ClassVar[dict[str, str | None]] = {"filename": "meta", "key": "fine_label_names", "md5": None}


class CIFARTensorDataset(Dataset):
    """CIFAR images held in memory as uint8, normalised (and augmented) per sample into dict samples.

    Args:
        images: uint8 ``[N, 3, 32, 32]``.
        targets: int64 ``[N]`` class ids.
        mean: Subtracted from the ``[0, 1]``-scaled image: ``[3, 32, 32]`` (per pixel) or ``[3, 1, 1]``.
        std: The result is divided by it (``[3, 1, 1]``; ones for per-pixel mean subtraction).
        augment: Pad 4 zeros, random 32x32 crop and random horizontal flip (after normalisation).
    """

    def __init__(self, images: Tensor, targets: Tensor, mean: Tensor, std: Tensor, augment: bool) -> None:
        self.images = images
        self.targets = targets
        self.mean = mean
        self.std = std
        self.augment = (
            v2.Compose([v2.RandomCrop(32, padding=4, fill=0), v2.RandomHorizontalFlip()]) if augment else None
        )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = (self.images[index].float() / 255.0 - self.mean) / self.std
        if self.augment is not None:
            image = self.augment(image)
        return {"image": image, "target": self.targets[index]}


class CIFAR100DataModule(DictDataModule):
    """Lightning data module over CIFAR-100: train on the training split, test on the official test split.

    Validation: the paper reports test accuracy and has no validation split, so by default (``val_split=0``)
    the validation loader is the **test** split, which makes "the best checkpoint" selected on test data —
    the paper's protocol, not a clean one. ``val_split=5000`` holds out a seeded random 5,000 training images
    (not augmented) for validation and trains on the remaining 45,000; the normalisation statistics are then
    measured on those 45,000.

    ``batch_size`` is the **global** batch (Table 1: 128); under DDP each process loads
    ``batch_size / world_size``.

    Args:
        root: Directory holding ``cifar-100-python/`` (or where the download puts it).
        download: Download and unpack the official archive into ``root`` (in ``prepare_data``, once per node).
        batch_size: Global batch size, divisible by the world size.
        num_workers: DataLoader worker processes (persistent when ``> 0``).
        pin_memory: Passed to the DataLoaders.
        normalization: ``"pixel_mean"`` (appendix A.1) or ``"channel"`` (per-channel mean and std).
        val_split: ``0``: validate on the test split; ``n > 0``: hold out ``n`` training images.
        seed: Seed of the held-out draw.
        augment: Pad-crop-flip the training images (turn off only for checks).
        num_classes: Checked against the dataset's class names; the configs pass it to the model.
        multilabel: Must be ``False``; present so configs can read it.

    Raises:
        ValueError: An argument out of range.
        FileNotFoundError: The pickles are missing (the message lists them and says how to download).
    """

    def __init__(
        self,
        root: str | Path,
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 4,
        pin_memory: bool = True,
        normalization: str = "pixel_mean",
        val_split: int = 0,
        seed: int = 0,
        augment: bool = True,
        num_classes: int | None = 100,
        multilabel: bool = False,
    ) -> None:
        super().__init__()
        self.root = check_root(
            root,
            f"set data.root to the directory holding {_FOLDER}/{{train,test,meta}} "
            "(data.download=true fetches it there)",
        )
        check_loader_args(batch_size, num_workers)
        check_int("val_split", val_split, 0)
        check_int("num_classes", num_classes, 2, optional=True)
        check_choice("normalization", normalization, ("pixel_mean", "channel"))
        check_label_kind("CIFAR-100", multilabel, False)
        self.save_hyperparameters(logger=False)
        self._raw: dict[str, tuple[Tensor, Tensor]] = {}
        self._classes: list[str] | None = None
        self._stats: tuple[Tensor, Tensor] | None = None

    # -- files ----------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download and unpack the archive when ``download=True`` (Lightning calls this on one process)."""
        if self.hparams.download:
            _CIFAR100Files(str(self.root), train=True, download=True)

    def _load(self, split: str) -> tuple[Tensor, Tensor]:
        if split in self._raw:
            return self._raw[split]
        folder = self.root / _FOLDER
        check_root_exists(
            self.root,
            "CIFAR-100",
            f"Set data.root to the directory holding {_FOLDER}/, or set data.download=true to fetch it there",
        )
        missing = [name for name in _FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"CIFAR-100 is incomplete under {self.root}: missing {', '.join(missing)}; expected "
                f"root/{_FOLDER}/{{train,test,meta}} (the python version of the dataset). Set "
                f"data.download=true to fetch it into data.root, or point data.root at the directory holding "
                f"{_FOLDER}/"
            )
        try:
            dataset = _CIFAR100Files(str(self.root), train=split == "train", download=False)
        except (KeyError, EOFError, ValueError, pickle.UnpicklingError) as error:
            raise ValueError(
                f"{folder / split} or {folder / 'meta'} is not a CIFAR-100 python pickle ({error!r}): "
                "expected "
                "dicts with 'data' (uint8 [N, 3072]) and 'fine_labels', and 'fine_label_names' in meta; "
                "re-download with data.download=true after removing the folder"
            ) from error
        classes = list(dataset.classes)
        targets = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
        if len(targets) != len(dataset.data) or (len(targets) and int(targets.max()) >= len(classes)):
            raise ValueError(
                f"{folder / split} is malformed: {len(dataset.data)} images, {len(targets)} labels, labels "
                f"up to {int(targets.max()) if len(targets) else None} for {len(classes)} classes in meta"
            )
        images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
        if self._classes is None:
            self._check_classes(classes)
        self._raw[split] = (images, targets)
        return images, targets

    def _check_classes(self, classes: list[str]) -> None:
        expected = self.hparams.num_classes
        if expected is not None and len(classes) != expected:
            raise ValueError(
                f"{self.root / _FOLDER / 'meta'} names {len(classes)} classes but "
                f"data.num_classes={expected}; "
                f"set data.num_classes={len(classes)} (the model is built with it)"
            )
        self._classes = classes

    def _train_val_indices(self) -> tuple[Tensor, Tensor | None]:
        _, targets = self._load("train")
        n, held_out = len(targets), int(self.hparams.val_split)
        if held_out == 0:
            return torch.arange(n), None
        if held_out >= n:
            raise ValueError(f"val_split={held_out} must be smaller than the {n} training images")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(self.hparams.seed)))
        return order[held_out:].sort().values, order[:held_out].sort().values

    # -- normalisation --------------------------------------------------------------------------------------

    def _statistics(self) -> tuple[Tensor, Tensor]:
        """The subtracted mean and the divisor, measured on the images the model trains on."""
        if self._stats is None:
            images, _ = self._load("train")
            train_idx, _ = self._train_val_indices()
            x = images[train_idx].to(torch.float64) / 255.0
            if self.hparams.normalization == "pixel_mean":
                mean, std = x.mean(dim=0), torch.ones(3, 1, 1, dtype=torch.float64)
            else:
                mean = x.mean(dim=(0, 2, 3)).view(3, 1, 1)
                std = x.std(dim=(0, 2, 3)).view(3, 1, 1)
            self._stats = (mean.float(), std.float())
        return self._stats

    @property
    def mean_image(self) -> Tensor:
        """The subtracted mean: ``[3, 32, 32]`` for ``pixel_mean``, ``[3, 1, 1]`` for ``channel``."""
        return self._statistics()[0].clone()

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean; for ``pixel_mean`` that of the mean image (an approximation, for display)."""
        return tuple(float(v) for v in self._statistics()[0].mean(dim=(1, 2)))  # type: ignore[return-value]

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel divisor: ones for ``pixel_mean`` (the mean is only subtracted)."""
        return tuple(float(v) for v in self._statistics()[1].flatten())  # type: ignore[return-value]

    # -- datasets -------------------------------------------------------------------------------------------

    def _dataset(self, split: str, indices: Tensor | None, augment: bool) -> CIFARTensorDataset:
        images, targets = self._load(split)
        if indices is not None:
            images, targets = images[indices], targets[indices]
        mean, std = self._statistics()
        return CIFARTensorDataset(images, targets, mean, std, augment)

    def setup(self, stage: str | None = None) -> None:
        """Build the splits ``stage`` needs (``fit``: train and val; ``validate``: val; ``test``: test)."""
        check_choice("stage", stage, ("fit", "validate", "test", "predict", None))
        train_idx, val_idx = self._train_val_indices()
        if stage in ("fit", None) and self.train_dataset is None:
            self.train_dataset = self._dataset("train", train_idx, augment=bool(self.hparams.augment))
        if stage in ("fit", "validate", None) and self.val_dataset is None:
            if val_idx is None:
                self.val_dataset = self._dataset("test", None, augment=False)
            else:
                self.val_dataset = self._dataset("train", val_idx, augment=False)
        if stage in ("test", "predict", None) and self.test_dataset is None:
            self.test_dataset = self._dataset("test", None, augment=False)

    # -- what models and tasks read -------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """The fine label names of ``meta``, in label order."""
        if self._classes is None:
            self._load("test")
        return list(self._classes or [])

    @property
    def num_classes(self) -> int:
        """Number of fine classes (100)."""
        return len(self.class_names)

    @property
    def multilabel(self) -> bool:
        """Always ``False``."""
        return False

    @property
    def image_size(self) -> int:
        """32."""
        return 32
