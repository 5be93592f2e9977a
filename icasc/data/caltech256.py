"""Caltech-256 from the ``256_ObjectCategories`` folder, with the ICASC paper's seeded per-class split.

Expected layout (torchvision ``Caltech256``'s; ``data.download=true`` fetches it through torchvision)::

    root/caltech256/256_ObjectCategories/001.ak47/001_0001.jpg ... 257.clutter/257_0001.jpg

``data.root`` may name the directory above ``caltech256/`` (torchvision's root), ``caltech256/`` itself or
``256_ObjectCategories/``. The last category, ``257.clutter``, is dropped (appendix A.1), leaving 256 classes
labelled in folder order.

Split (appendix A.1, after Griffin et al.): there is no official split; per class, a seeded permutation of
the images gives ``test_per_class`` (25) test images first, then ``train_per_class`` (30 or 60) training
images, then ``val_per_class`` validation images. Taking the test images first keeps the test set the same
for N=30 and N=60 (same seed), and the N=30 training images a subset of the N=60 ones.

Transforms (Table 1: 299 x 299): training ``RandomResizedCrop(299)`` + flip; evaluation shorter side to
``resize`` (342 = 299 / 0.875) + centre crop 299; ImageNet normalisation (the backbones start pretrained).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torchvision.datasets import Caltech256

from icasc.data.base import (
    ImageNetNormalizedDataModule,
    check_crop_sizes,
    check_label_kind,
    check_loader_args,
    check_root,
    check_root_exists,
)
from icasc.data.files import ImageFileDataset
from icasc.data.transforms import eval_transform, train_transform
from icasc.utils import check_int

__all__ = ["Caltech256DataModule"]

log = logging.getLogger(__name__)

_FOLDER = "256_ObjectCategories"
_LAYOUT = (
    "root/caltech256/256_ObjectCategories/<NNN>.<name>/<NNN>_<iiii>.jpg (torchvision's Caltech256 layout)"
)


class Caltech256DataModule(ImageNetNormalizedDataModule):
    """Lightning data module over Caltech-256 (256 object classes, clutter dropped).

    Validation: the paper reports test accuracy; with ``val_per_class=0`` (default) the validation loader is
    the **test** split (the paper's protocol: the best checkpoint is chosen on test images). ``val_per_class >
    0`` draws that many further images per class, disjoint from train and test.

    ``batch_size`` is the **global** batch (Table 1: 16); under DDP each process loads
    ``batch_size / world_size``.

    Args:
        root: The directory above ``caltech256/``, ``caltech256/`` or ``256_ObjectCategories/``.
        download: Fetch and unpack the archive via torchvision (in ``prepare_data``) when it is missing.
        batch_size: Global batch size, divisible by the world size.
        num_workers: DataLoader worker processes (persistent when ``> 0``).
        pin_memory: Passed to the DataLoaders.
        train_per_class: Training images per class (the paper: 30 or 60).
        test_per_class: Test images per class (25).
        val_per_class: Validation images per class; ``0`` validates on the test split.
        seed: Seed of the per-class split.
        image_size: Side of the crops fed to the model (299).
        resize: Evaluation: the shorter side is resized to this before the centre crop; ``>= image_size``.
        num_classes: Checked against the class folders (clutter excluded); the configs pass it to the model.
        multilabel: Must be ``False``; present so configs can read it.

    Raises:
        ValueError: An argument out of range.
        FileNotFoundError: No ``256_ObjectCategories`` folder under ``root`` (the message shows the layout).
    """

    def __init__(
        self,
        root: str | Path,
        download: bool = False,
        batch_size: int = 16,
        num_workers: int = 4,
        pin_memory: bool = True,
        train_per_class: int = 60,
        test_per_class: int = 25,
        val_per_class: int = 0,
        seed: int = 0,
        image_size: int = 299,
        resize: int = 342,
        num_classes: int | None = 256,
        multilabel: bool = False,
    ) -> None:
        super().__init__()
        self.root = check_root(
            root,
            f"set data.root to the Caltech-256 directory: expected {_LAYOUT} "
            "(with data.download=true, torchvision fetches it there)",
        )
        check_loader_args(batch_size, num_workers)
        check_int("train_per_class", train_per_class, 1)
        check_int("test_per_class", test_per_class, 1)
        check_int("val_per_class", val_per_class, 0)
        check_crop_sizes(image_size, resize)
        check_int("num_classes", num_classes, 2, optional=True)
        check_label_kind("Caltech-256", multilabel, self.MULTILABEL)
        self.save_hyperparameters(logger=False)
        self._index: tuple[list[str], list[list[Path]]] | None = None
        self._splits: dict[str, tuple[list[Path], list[int]]] | None = None

    # -- files ----------------------------------------------------------------------------------------------

    def _find_folder(self) -> Path | None:
        for candidate in (self.root / "caltech256" / _FOLDER, self.root / _FOLDER, self.root):
            if candidate.name == _FOLDER and candidate.is_dir():
                return candidate
        return None

    def prepare_data(self) -> None:
        """Download and unpack the archive via torchvision when ``download=True`` and it is missing."""
        if self.hparams.download and self._find_folder() is None:
            Caltech256(str(self.root), download=True)

    @property
    def folder(self) -> Path:
        """The ``256_ObjectCategories`` directory.

        Raises:
            FileNotFoundError: It is not under ``root``.
        """
        check_root_exists(
            self.root,
            "Caltech-256",
            f"Set data.root to the Caltech-256 directory ({_LAYOUT}), or set data.download=true to fetch it "
            "there via torchvision",
        )
        folder = self._find_folder()
        if folder is None:
            raise FileNotFoundError(
                f"no {_FOLDER} folder under {self.root}: expected {_LAYOUT}; data.root may also name "
                f"caltech256/ or {_FOLDER}/ itself. Set data.download=true to fetch it via torchvision"
            )
        return folder

    def _categories(self) -> tuple[list[str], list[list[Path]]]:
        """Class folder names (clutter dropped) and each one's sorted ``.jpg`` files."""
        if self._index is None:
            folder = self.folder
            with os.scandir(folder) as entries:
                names = sorted(e.name for e in entries if e.is_dir())
            clutter = [n for n in names if n.split(".", 1)[-1] == "clutter"]
            names = [n for n in names if n not in clutter]
            if not clutter:
                log.info("no clutter folder in %s: all %d folders are classes", folder, len(names))
            if not names:
                raise FileNotFoundError(f"{folder} holds no class folders: expected {_LAYOUT}")
            files = [sorted(p for p in (folder / n).iterdir() if p.suffix.lower() == ".jpg") for n in names]
            expected = self.hparams.num_classes
            if expected is not None and len(names) != expected:
                raise ValueError(
                    f"{folder} holds {len(names)} class folders besides clutter but "
                    f"data.num_classes={expected}; "
                    f"set data.num_classes={len(names)} (the model is built with it)"
                )
            self._index = (names, files)
        return self._index

    def splits(self) -> dict[str, tuple[list[Path], list[int]]]:
        """The seeded per-class split: ``{"train"|"val"|"test": (files, labels)}`` (``val`` empty when 0).

        Raises:
            ValueError: A class has fewer images than ``test + train + val`` per class (all such are listed).
        """
        if self._splits is None:
            hp = self.hparams
            names, files = self._categories()
            need = hp.test_per_class + hp.train_per_class + hp.val_per_class
            short = [f"{n} ({len(f)})" for n, f in zip(names, files) if len(f) < need]
            if short:
                listed = ", ".join(short[:10]) + (" ..." if len(short) > 10 else "")
                raise ValueError(
                    f"{len(short)} Caltech-256 classes have fewer than test_per_class + train_per_class + "
                    f"val_per_class = {need} images: {listed}; lower data.train_per_class / "
                    "data.test_per_class / data.val_per_class"
                )
            generator = torch.Generator().manual_seed(int(hp.seed))
            bounds = {"test": (0, hp.test_per_class)}
            bounds["train"] = (hp.test_per_class, hp.test_per_class + hp.train_per_class)
            bounds["val"] = (bounds["train"][1], need)
            splits: dict[str, tuple[list[Path], list[int]]] = {k: ([], []) for k in bounds}
            for label, class_files in enumerate(files):
                order = torch.randperm(len(class_files), generator=generator).tolist()
                for split, (lo, hi) in bounds.items():
                    splits[split][0].extend(class_files[i] for i in order[lo:hi])
                    splits[split][1].extend([label] * (hi - lo))
            self._splits = splits
        return self._splits

    # -- datasets -------------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Build the splits ``stage`` needs (``fit``: train and val; ``validate``: val; ``test``: test)."""
        hp = self.hparams
        splits = self.splits()
        evaluate = eval_transform(hp.image_size, hp.resize)
        if stage in ("fit", None) and self.train_dataset is None:
            self.train_dataset = ImageFileDataset(*splits["train"], train_transform(hp.image_size))
        if stage in ("fit", "validate", None) and self.val_dataset is None:
            self.val_dataset = ImageFileDataset(*splits["val" if hp.val_per_class else "test"], evaluate)
        if stage in ("test", "predict", None) and self.test_dataset is None:
            self.test_dataset = ImageFileDataset(*splits["test"], evaluate)

    # -- what models and tasks read -------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """Class folder names without the number, e.g. ``"ak47"``, in label order."""
        return [name.split(".", 1)[-1] for name in self._categories()[0]]

    @property
    def num_classes(self) -> int:
        """Number of classes (256)."""
        return len(self._categories()[0])
