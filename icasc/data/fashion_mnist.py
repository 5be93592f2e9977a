"""Fashion-MNIST from its four IDX files, plain or cluttered, as dict batches with the garment's box.

Real images that need no download on a machine with the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``). Two layouts of ``data.root`` are read, each file plain or ``.gz``::

    root/train-images-idx3-ubyte[.gz]                   flat (the Debian package, the official site)
    root/FashionMNIST/raw/train-images-idx3-ubyte[.gz]  torchvision's (what data.download=true writes)
    (and train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte beside it)

By default every 28x28 garment is placed at a random scale and position on a larger canvas among fragments
of garments of other classes (:class:`~icasc.data.clutter.ClutteredDataset`), so the classifier must find
it; ``clutter=None`` centres it on the canvas instead. Every sample carries the garment's tight box.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from icasc.data.base import (
    DictDataModule,
    check_label_kind,
    check_loader_args,
    check_root,
    check_root_exists,
)
from icasc.data.clutter import CentredDataset, ClutteredDataset, check_clutter
from icasc.data.idx import read_idx
from icasc.data.synthetic import RandomHorizontalFlip
from icasc.utils import check_int

__all__ = ["CLASS_NAMES", "DEFAULT_CLUTTER", "FILES", "FashionMNISTDataModule", "find_files", "load_split"]

log = logging.getLogger(__name__)

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
"""The ten Fashion-MNIST classes, in label order."""

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four IDX files (each may also be ``<name>.gz``)."""

DEFAULT_CLUTTER: Mapping[str, Any] = {"object_size": (28, 44), "distractors": 4, "fragment_size": (10, 16)}
"""The clutter of ``conf/data/fashion_mnist.yaml``; the keys are :class:`ClutteredDataset`'s options."""

_TORCHVISION_DIR = Path("FashionMNIST") / "raw"
_STATS_IMAGES = 1000  # rendered training images the normalisation statistics are measured on


def _layouts(root: Path) -> list[Path]:
    return [root, root / _TORCHVISION_DIR]


def _find(folder: Path, name: str) -> Path | None:
    # the plain file first: torchvision keeps both, and the plain one reads faster
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _expected(root: Path) -> str:
    flat, tv = _layouts(root)
    return (
        f"the four IDX files {', '.join(FILES)} (each plain or .gz) in {flat} (flat, as the Debian "
        f"package dataset-fashion-mnist installs them) or in {tv} (torchvision's layout)"
    )


_FIX = (
    "Fix: `apt-get install dataset-fashion-mnist`, then data.root=/usr/share/datasets/fashion-mnist; or set "
    "data.download=true to fetch the files into data.root with torchvision"
)


def find_files(root: str | Path) -> dict[str, Path]:
    """The four IDX files under ``root``, in the flat layout or else in torchvision's.

    Returns:
        Each name of :data:`FILES` mapped to its path (the plain file where both it and ``.gz`` exist).

    Raises:
        FileNotFoundError: ``root`` does not exist, or neither layout holds all four files; the message
            names the four files, both places looked in, what each lacks, and the fixes.
    """
    root = Path(root)
    check_root_exists(root, "Fashion-MNIST", f"Expected {_expected(root)}. {_FIX}")
    missing = []
    for folder in _layouts(root):
        found = {name: _find(folder, name) for name in FILES}
        if all(found.values()):
            return found  # type: ignore[return-value]
        lacking = [name for name, path in found.items() if path is None]
        missing.append(f"{folder} lacks {'all four' if len(lacking) == 4 else ', '.join(lacking)}")
    raise FileNotFoundError(
        f"Fashion-MNIST is incomplete under data.root={root}: expected {_expected(root)}; "
        f"{'; '.join(missing)}. {_FIX}"
    )


def load_split(files: Mapping[str, Path], split: str, num_classes: int = 10) -> tuple[Tensor, Tensor]:
    """Images uint8 ``[N, H, W]`` and labels int64 ``[N]`` of ``split`` (``"train"`` or ``"t10k"``).

    Raises:
        ValueError: A file is malformed (see :func:`~icasc.data.idx.read_idx`), the two files disagree on
            the number of images, or a label is not below ``num_classes``; the message names the file.
    """
    images_file, labels_file = files[f"{split}-images-idx3-ubyte"], files[f"{split}-labels-idx1-ubyte"]
    images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
    if len(images) != len(labels):
        raise ValueError(f"{images_file} holds {len(images)} images but {labels_file} {len(labels)} labels")
    if len(labels) and int(labels.max()) >= num_classes:
        raise ValueError(
            f"{labels_file} holds label {int(labels.max())}; Fashion-MNIST has {num_classes} classes"
        )
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


class _Normalised(Dataset):
    """Normalises a ``[0, 1]`` single-channel sample image with scalars and repeats it to 3 channels."""

    def __init__(self, dataset: Dataset, mean: float, std: float) -> None:
        self.dataset, self.mean, self.std = dataset, mean, std

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = dict(self.dataset[index])
        # 3 channels so that every backbone (ImageNet stems included) takes the images unchanged
        sample["image"] = ((sample["image"] - self.mean) / self.std).expand(3, -1, -1).contiguous()
        return sample


class FashionMNISTDataModule(DictDataModule):
    """Lightning data module over Fashion-MNIST: seeded train/val from the official training set, t10k test.

    Splits: ``val_size`` training images held out at random (seeded), ``train_size`` of the rest (a seeded
    subset; ``None``: all of them), ``test_size`` of the official 10,000 test images (a seeded subset;
    ``None``: all). Images (uint8, in memory) become samples of side ``image_size``: cluttered
    (:class:`~icasc.data.clutter.ClutteredDataset` with the ``clutter`` options and ``canvas_size=
    image_size``; fragments of each split come from that split) or, with ``clutter=None``, centred at 28 px
    (:class:`~icasc.data.clutter.CentredDataset`). The single channel is normalised with :attr:`mean` and
    :attr:`std`, measured on the first 1,000 rendered training samples, and repeated to 3 channels.

    Batches: ``{"image": float32 [B, 3, S, S], "target": int64 [B], "box": float32 [B, 4]}``, the box the
    garment's tight pixel-edge ``xyxy`` box.

    Args:
        root: Directory holding the four IDX files (flat, or torchvision's ``FashionMNIST/raw/``).
        download: Fetch the files into ``root/FashionMNIST/raw`` with torchvision in ``prepare_data``.
        image_size: Side of the samples (the canvas), pixels.
        clutter: Options of :class:`ClutteredDataset` (``object_size``, ``distractors``, ``fragment_size``;
            missing keys take :data:`DEFAULT_CLUTTER`'s), or ``None`` for centred garments.
        train_size: Training images (``None``: all but the held-out ones).
        val_size: Training images held out for validation, ``>= 1``.
        test_size: Test images (``None``: all 10,000).
        seed: Seed of the splits and of the clutter.
        batch_size: Global batch size, divisible by the world size.
        num_workers: DataLoader worker processes (persistent when ``> 0``).
        pin_memory: Passed to the DataLoaders.
        augment: Flip training samples horizontally (with their box) with probability 0.5.
        num_classes: Must be 10; present so configs can pass it to the model.
        multilabel: Must be ``False``; present so configs can read it.

    Raises:
        ValueError: An option out of range (named as ``data.<key>``), e.g. a canvas smaller than the object.
        FileNotFoundError: The files are missing (the message lists them, where it looked, and the fixes).
    """

    def __init__(
        self,
        root: str | Path | None,
        download: bool = False,
        image_size: int = 64,
        clutter: Mapping[str, Any] | None = DEFAULT_CLUTTER,
        train_size: int | None = 5000,
        val_size: int = 1000,
        test_size: int | None = 2000,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: bool = True,
        num_classes: int = 10,
        multilabel: bool = False,
    ) -> None:
        super().__init__()
        self.root = check_root(
            root, f"set data.root to the directory holding the Fashion-MNIST IDX files. {_FIX}"
        )
        check_loader_args(batch_size, num_workers)
        check_int("data.image_size", image_size, 1)
        check_int("data.train_size", train_size, 1, optional=True)
        check_int("data.val_size", val_size, 1)
        check_int("data.test_size", test_size, 1, optional=True)
        check_label_kind("Fashion-MNIST", multilabel, False)
        if num_classes != len(CLASS_NAMES):
            raise ValueError(f"Fashion-MNIST has {len(CLASS_NAMES)} classes: set data.num_classes=10")
        self._clutter = self._clutter_options(clutter, image_size)
        self.save_hyperparameters(logger=False)
        self._data: dict[str, tuple[Tensor, Tensor]] | None = None
        self._stats: tuple[float, float] | None = None

    @staticmethod
    def _clutter_options(clutter: Mapping[str, Any] | None, image_size: int) -> dict[str, Any] | None:
        if clutter is None:
            return None
        if not isinstance(clutter, Mapping):
            raise ValueError(f"data.clutter must be a mapping of clutter options or null, got {clutter!r}")
        unknown = sorted(set(clutter) - set(DEFAULT_CLUTTER))
        if unknown:
            raise ValueError(
                f"data.clutter has no option {', '.join(unknown)}; its options are "
                f"{', '.join(DEFAULT_CLUTTER)} (data.clutter=null turns clutter off)"
            )
        options = {**DEFAULT_CLUTTER, **clutter}
        check_clutter(image_size, prefix="data.clutter.", canvas_name="data.image_size", **options)
        return options

    # -- files ----------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Fetch the files with torchvision when ``download=True`` (Lightning calls this on one process)."""
        if self.hparams.download:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(self.root), train=train, download=True)

    def _splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Images and labels of the train, val and test splits (read once, then held in memory)."""
        if self._data is None:
            files = find_files(self.root)
            log.info("Fashion-MNIST: reading %s", files[FILES[0]].parent)
            train, test = load_split(files, "train"), load_split(files, "t10k")
            index = self._indices(len(train[1]), len(test[1]))
            self._data = {
                split: (images[index[split]], targets[index[split]])
                for split, (images, targets) in (("train", train), ("val", train), ("test", test))
            }
        return self._data

    def _indices(self, n_train: int, n_test: int) -> dict[str, Tensor]:
        """Indices of the train, val (into the official training set) and test (into t10k) samples."""
        hp = self.hparams
        if hp.val_size >= n_train:
            raise ValueError(
                f"data.val_size={hp.val_size} must be smaller than the {n_train} training images"
            )
        rest = n_train - hp.val_size
        for key, size, available, what in (
            ("train_size", hp.train_size, rest, f"training images left after data.val_size={hp.val_size}"),
            ("test_size", hp.test_size, n_test, "test images"),
        ):
            if size is not None and size > available:
                raise ValueError(
                    f"data.{key}={size} exceeds the {available} {what}; use null for all of them"
                )
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(hp.seed))
        # the test draw has its own stream, so changing the training sizes leaves the test set as it is
        test = torch.randperm(n_test, generator=torch.Generator().manual_seed(hp.seed + 1))
        train_end = n_train if hp.train_size is None else hp.val_size + hp.train_size
        return {
            "train": order[hp.val_size : train_end].sort().values,
            "val": order[: hp.val_size].sort().values,
            "test": test[: hp.test_size].sort().values,
        }

    # -- datasets -------------------------------------------------------------------------------------------

    def _render(self, split: str) -> Dataset:
        """The split's un-normalised ``[1, S, S]`` samples in ``[0, 1]``."""
        images, targets = self._splits()[split]
        if self._clutter is None:
            return CentredDataset(images, targets, self.hparams.image_size)
        return ClutteredDataset(
            images, targets, self.hparams.image_size, seed=self.hparams.seed, split=split, **self._clutter
        )

    def _statistics(self) -> tuple[float, float]:
        if self._stats is None:
            train = self._render("train")
            x = torch.stack([train[i]["image"] for i in range(min(_STATS_IMAGES, len(train)))]).double()
            self._stats = (float(x.mean()), float(x.std()))
        return self._stats

    def setup(self, stage: str | None = None) -> None:
        """Build the splits ``stage`` needs (``fit``: train and val; ``validate``: val; ``test``: test)."""
        if stage not in ("fit", "validate", "test", "predict", None):
            raise ValueError(f"stage must be one of fit, validate, test, predict or None, got {stage!r}")
        mean, std = self._statistics()
        if stage in ("fit", None) and self.train_dataset is None:
            train = _Normalised(self._render("train"), mean, std)
            # a mirrored garment is a garment of the same class: the flip keeps targets, and moves the box
            self.train_dataset = RandomHorizontalFlip(train, 0.5) if self.hparams.augment else train
        if stage in ("fit", "validate", None) and self.val_dataset is None:
            self.val_dataset = _Normalised(self._render("val"), mean, std)
        if stage in ("test", "predict", None) and self.test_dataset is None:
            self.test_dataset = _Normalised(self._render("test"), mean, std)

    # -- what models and tasks read -------------------------------------------------------------------------

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean of the rendered training samples (the same for the 3 repeated channels)."""
        return (self._statistics()[0],) * 3  # type: ignore[return-value]

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation of the rendered training samples."""
        return (self._statistics()[1],) * 3  # type: ignore[return-value]

    @property
    def class_names(self) -> list[str]:
        """The ten class names, in label order."""
        return list(CLASS_NAMES)

    @property
    def num_classes(self) -> int:
        """10."""
        return len(CLASS_NAMES)

    @property
    def multilabel(self) -> bool:
        """Always ``False``."""
        return False

    @property
    def image_size(self) -> int:
        """Side of the samples (the canvas), pixels."""
        return self.hparams.image_size
