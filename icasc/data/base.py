"""What icasc's datamodules share: dict batches, the loaders, the global batch size and the data checks
(argument checks shared by every room live in :mod:`icasc.utils`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import lightning as L
from torch.utils.data import DataLoader, Dataset

from icasc.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from icasc.utils import check_int

__all__ = [
    "DictDataModule",
    "ImageNetNormalizedDataModule",
    "check_crop_sizes",
    "check_label_kind",
    "check_loader_args",
    "check_root",
    "check_root_exists",
]


def check_root(root: str | Path | None, message: str) -> Path:
    """``root`` as an expanded ``Path``.

    Raises:
        ValueError: ``root`` is unset (``None``, ``""`` or Hydra's ``"???"``): ``"data.root is not set: "``
            and ``message``, the dataset's own hint (where ``data.root`` should point, the expected layout,
            ``data.download=true`` where the dataset can be downloaded).
    """
    if root is None or str(root) in ("", "???"):
        raise ValueError(f"data.root is not set: {message}")
    return Path(root).expanduser()


def check_root_exists(root: Path, dataset: str, fix: str) -> None:
    """Tell a missing dataset from an incomplete one: raise unless the folder ``root`` exists.

    Call it before listing the files missing under ``root``, so that a wrong or not yet created
    ``data.root`` is reported as missing, not as an incomplete dataset.

    Args:
        root: The configured ``data.root`` (expanded).
        dataset: The dataset's name, for the message (e.g. ``"CUB-200-2011"``).
        fix: What to do, e.g. ``"set data.root to ... or set data.download=true"``.

    Raises:
        FileNotFoundError: ``root`` does not exist, or is a file.
    """
    if not root.exists():
        raise FileNotFoundError(f"{dataset} is missing: data.root={root} does not exist. {fix}")
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: data.root={root} is a file, not a directory. {fix}")


def check_loader_args(batch_size: Any, num_workers: Any) -> None:
    """Raise ``ValueError`` unless ``batch_size`` is an int ``>= 1`` and ``num_workers`` an int ``>= 0``."""
    check_int("batch_size", batch_size, 1)
    check_int("num_workers", num_workers, 0)


def check_crop_sizes(image_size: Any, resize: Any) -> None:
    """Raise ``ValueError`` unless ``image_size``, ``resize`` are ints ``>= 1`` and ``resize >= image_size``.

    The images are resized (shorter side or square) to ``resize`` before the crop to ``image_size``.
    """
    check_int("image_size", image_size, 1)
    check_int("resize", resize, 1)
    if resize < image_size:
        raise ValueError(f"resize ({resize}) must be >= image_size ({image_size}): it precedes the crop")


def check_label_kind(dataset: str, multilabel: Any, expected: bool) -> None:
    """Raise ``ValueError`` unless ``multilabel`` matches the dataset's fixed label kind.

    A single-label dataset (``expected=False``) refuses any true value, a multi-label one anything but
    ``True``; the message names ``dataset`` and the setting to use.
    """
    if (multilabel is not True) if expected else multilabel:
        kind, setting = ("multi-label", "true") if expected else ("single-label", "false")
        raise ValueError(f"{dataset} is {kind}: set data.multilabel={setting}")


class DictDataModule(L.LightningDataModule):
    """Base of the datamodules: ``train/val/test_dataset`` built in ``setup``, loaders over them.

    Subclasses call ``save_hyperparameters(logger=False)`` with ``batch_size``, ``num_workers`` and
    ``pin_memory`` among their arguments (``logger=False``: loggers record the run's config, and a data
    module's own ``seed`` must not overwrite the run's) and fill the three dataset attributes in ``setup``.

    ``batch_size`` is the **global** batch, the one a paper reports (ICASC Table 1): under DDP each of the
    ``trainer.world_size`` processes (devices x nodes) loads ``batch_size // world_size`` samples per step, so
    a preset trains with the same batch on one GPU or eight. It must be divisible by the world size.
    """

    train_dataset: Dataset | None = None
    val_dataset: Dataset | None = None
    test_dataset: Dataset | None = None

    @property
    def world_size(self) -> int:
        """Processes sharing a global batch: the attached trainer's ``world_size``, 1 without a trainer."""
        trainer = getattr(self, "trainer", None)
        return 1 if trainer is None else int(trainer.world_size)

    @property
    def per_device_batch_size(self) -> int:
        """``batch_size // world_size``: the samples each process loads per step.

        Raises:
            ValueError: ``batch_size`` is not divisible by the world size (the message lists sizes that are).
        """
        batch_size, world = int(self.hparams.batch_size), self.world_size
        if batch_size % world:
            lower = max(world, batch_size // world * world)
            raise ValueError(
                f"data.batch_size={batch_size} is the global batch and must be divisible by the world size "
                f"{world} (trainer.devices x trainer.num_nodes); use a multiple of {world}, e.g. {lower} or "
                f"{lower + world}"
            )
        return batch_size // world

    def _loader(self, dataset: Dataset | None, name: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"the {name} dataset is not built; call setup() with the matching stage first")
        hp = self.hparams
        return DataLoader(
            dataset,
            batch_size=self.per_device_batch_size,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled loader over the training split."""
        return self._loader(self.train_dataset, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Loader over the validation split, in order."""
        return self._loader(self.val_dataset, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Loader over the test split, in order."""
        return self._loader(self.test_dataset, "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Loader over the test split, in order."""
        return self._loader(self.test_dataset, "test", shuffle=False)


class ImageNetNormalizedDataModule(DictDataModule):
    """Base of the datamodules over photographs fed to ImageNet-pretrained backbones (Caltech-256, CUB-200,
    ImageNet, PASCAL VOC): ImageNet normalisation, crops of ``hparams.image_size`` and a label kind fixed by
    the dataset (``MULTILABEL``; subclasses check the ``multilabel`` argument with :func:`check_label_kind`).
    """

    MULTILABEL: ClassVar[bool] = False
    """Whether the dataset's targets are multi-hot; what :attr:`multilabel` returns."""

    @property
    def multilabel(self) -> bool:
        """Whether targets are multi-hot: always ``MULTILABEL`` (``True`` only for PASCAL VOC)."""
        return self.MULTILABEL

    @property
    def image_size(self) -> int:
        """Side of the model's input crops."""
        return self.hparams.image_size

    @property
    def mean(self) -> tuple[float, float, float]:
        """ImageNet per-channel mean."""
        return IMAGENET_MEAN

    @property
    def std(self) -> tuple[float, float, float]:
        """ImageNet per-channel standard deviation."""
        return IMAGENET_STD
