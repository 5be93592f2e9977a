"""CUB-200-2011 from the official archive's text files, with object boxes in every sample.

Expected layout (torchvision has no CUB dataset; download ``CUB_200_2011.tgz`` from
https://data.caltech.edu/records/65de6-vp158 and unpack it)::

    root/images.txt               <image_id> <class folder>/<file>.jpg
    root/image_class_labels.txt   <image_id> <class_id, 1..200>
    root/train_test_split.txt     <image_id> <1: training, 0: test>
    root/bounding_boxes.txt       <image_id> <x> <y> <width> <height>   (pixels)
    root/classes.txt              <class_id> <class folder name>, e.g. 1 001.Black_footed_Albatross
    root/images/<class folder>/<file>.jpg

``data.root`` may name ``CUB_200_2011/`` or the directory holding it. The official split has 5,994 training
and 5,794 test images.

Transforms (appendix A.2: "resized to 448 x 448 for both training and testing", mirror and random cropping
for training): the image is resized to ``resize x resize`` (512) and cropped to ``image_size`` (448), at
random plus a random horizontal flip for training, in the centre for evaluation; ImageNet normalisation.
``resize=448`` gives the plain 448 x 448 resize of the paper's text (no crop at all). Every sample carries
``"box"``: the bird's box as float ``xyxy`` in pixels of the transformed image, clamped to it (a random crop
can cut it), for the pointing game.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from icasc.data.base import (
    ImageNetNormalizedDataModule,
    check_crop_sizes,
    check_label_kind,
    check_loader_args,
    check_root,
    check_root_exists,
)
from icasc.data.files import ImageFileDataset
from icasc.data.transforms import box_transform
from icasc.utils import check_int

__all__ = ["CUB200DataModule", "read_cub_metadata"]

URL = "https://data.caltech.edu/records/65de6-vp158"
_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt")


def _read_table(path: Path, columns: int) -> dict[int, list[str]]:
    """``{id: the other columns}`` of a whitespace-separated text file whose first column is an int id."""
    table: dict[int, list[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        # images.txt paths hold no spaces in the official archive; split at most columns-1 times anyway
        fields = line.split(maxsplit=columns - 1)
        if len(fields) != columns or not fields[0].isdigit():
            raise ValueError(
                f"{path}:{number} is malformed: expected '<id>' and {columns - 1} more field(s), got {line!r}"
            )
        table[int(fields[0])] = fields[1:]
    return table


def read_cub_metadata(root: str | Path) -> dict[str, object]:
    """Read the official CUB-200-2011 text files under ``root`` (the ``CUB_200_2011`` directory).

    Returns:
        ``{"files": [Path], "labels": Tensor int64 [N] (0-based), "train": Tensor bool [N], "boxes": Tensor
        float32 [N, 4] xyxy, "classes": [str]}`` in image-id order.

    Raises:
        FileNotFoundError: ``root`` does not exist ("missing"), or a text file or ``images/`` is missing
            under it ("incomplete"; the message lists them and where to download).
        ValueError: A malformed line, or files that disagree on the image ids.
    """
    root = Path(root)
    check_root_exists(
        root,
        "CUB-200-2011",
        f"torchvision cannot download CUB: get CUB_200_2011.tgz from {URL}, unpack it and set data.root to "
        "CUB_200_2011/ (or the directory holding it)",
    )
    missing = [name for name in (*_FILES, "images") if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"CUB-200-2011 is incomplete under {root}: missing {', '.join(missing)}; expected the official "
            f"archive's {', '.join(_FILES)} and images/<class>/<file>.jpg in data.root. torchvision cannot "
            f"download CUB: get CUB_200_2011.tgz from {URL}, unpack it and set data.root to CUB_200_2011/"
        )
    images = _read_table(root / "images.txt", 2)
    labels = _read_table(root / "image_class_labels.txt", 2)
    split = _read_table(root / "train_test_split.txt", 2)
    boxes = _read_table(root / "bounding_boxes.txt", 5)
    classes = _read_table(root / "classes.txt", 2)
    ids = sorted(images)
    for name, table in (
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("bounding_boxes.txt", boxes),
    ):
        if sorted(table) != ids:
            only = sorted(set(ids) ^ set(table))[:5]
            raise ValueError(f"{root / name} and images.txt list different image ids (e.g. {only})")
    class_ids = sorted(classes)
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise ValueError(f"{root / 'classes.txt'} must number the classes 1..{len(class_ids)}")
    try:
        label = torch.tensor([int(labels[i][0]) - 1 for i in ids], dtype=torch.int64)
        train = torch.tensor([split[i][0] == "1" for i in ids], dtype=torch.bool)
        xywh = torch.tensor([[float(v) for v in boxes[i]] for i in ids], dtype=torch.float32)
    except ValueError as error:
        raise ValueError(f"non-numeric label, split flag or box under {root}: {error}") from error
    if len(ids) and (int(label.min()) < 0 or int(label.max()) >= len(class_ids)):
        raise ValueError(f"{root / 'image_class_labels.txt'} holds labels outside 1..{len(class_ids)}")
    xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    return {
        "files": [root / "images" / images[i][0] for i in ids],
        "labels": label,
        "train": train,
        "boxes": xyxy,
        "classes": [classes[k][0] for k in class_ids],
    }


class CUB200DataModule(ImageNetNormalizedDataModule):
    """Lightning data module over CUB-200-2011 (official train/test split), samples with ``"box"``.

    Validation: the paper reports test accuracy; with ``val_split=0`` (default) the validation loader is the
    **test** split (the paper's protocol). ``val_split=n`` holds out a seeded random ``n`` training images.

    ``batch_size`` is the **global** batch (Table 1: 10); under DDP each process loads
    ``batch_size / world_size`` (10 is divisible by 1, 2, 5 and 10 devices).

    Args:
        root: ``CUB_200_2011/`` or the directory holding it.
        batch_size: Global batch size, divisible by the world size.
        num_workers: DataLoader worker processes (persistent when ``> 0``).
        pin_memory: Passed to the DataLoaders.
        image_size: Side of the crops fed to the model (448).
        resize: Images are first resized to ``resize x resize`` (512); ``>= image_size``.
        val_split: ``0``: validate on the test split; ``n > 0``: hold out ``n`` training images.
        seed: Seed of the held-out draw.
        num_classes: Checked against ``classes.txt``; the configs pass it to the model.
        multilabel: Must be ``False``; present so configs can read it.

    Raises:
        ValueError: An argument out of range.
        FileNotFoundError: The official files are missing (the message lists them and the download page).
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 10,
        num_workers: int = 4,
        pin_memory: bool = True,
        image_size: int = 448,
        resize: int = 512,
        val_split: int = 0,
        seed: int = 0,
        num_classes: int | None = 200,
        multilabel: bool = False,
    ) -> None:
        super().__init__()
        path = check_root(root, f"set data.root to the CUB_200_2011 directory (download: {URL})")
        check_loader_args(batch_size, num_workers)
        check_crop_sizes(image_size, resize)
        check_int("val_split", val_split, 0)
        check_int("num_classes", num_classes, 2, optional=True)
        check_label_kind("CUB-200-2011", multilabel, self.MULTILABEL)
        # a new name: save_hyperparameters() reads the arguments from the locals (hparams.root as given)
        self.root = path / "CUB_200_2011" if (path / "CUB_200_2011" / "images.txt").exists() else path
        self.save_hyperparameters(logger=False)
        self._meta: dict | None = None

    def metadata(self) -> dict:
        """The parsed text files (see :func:`read_cub_metadata`), checked against ``num_classes``."""
        if self._meta is None:
            meta = read_cub_metadata(self.root)
            expected = self.hparams.num_classes
            if expected is not None and len(meta["classes"]) != expected:
                raise ValueError(
                    f"{self.root / 'classes.txt'} lists {len(meta['classes'])} classes but "
                    f"data.num_classes={expected}; set data.num_classes={len(meta['classes'])}"
                )
            self._meta = meta
        return self._meta

    def _subset(self, mask: Tensor, train: bool) -> ImageFileDataset:
        meta, hp = self.metadata(), self.hparams
        idx = mask.nonzero().flatten().tolist()
        return ImageFileDataset(
            [meta["files"][i] for i in idx],
            meta["labels"][idx],
            box_transform(hp.image_size, hp.resize, train=train),
            boxes=meta["boxes"][idx],
        )

    def _masks(self) -> dict[str, Tensor]:
        train = self.metadata()["train"]
        n_held = int(self.hparams.val_split)
        if n_held == 0:
            return {"train": train, "val": ~train, "test": ~train}
        train_ids = train.nonzero().flatten()
        if n_held >= len(train_ids):
            raise ValueError(f"val_split={n_held} must be smaller than the {len(train_ids)} training images")
        order = torch.randperm(
            len(train_ids), generator=torch.Generator().manual_seed(int(self.hparams.seed))
        )
        val = torch.zeros_like(train)
        val[train_ids[order[:n_held]]] = True
        return {"train": train & ~val, "val": val, "test": ~train}

    def setup(self, stage: str | None = None) -> None:
        """Build the splits ``stage`` needs (``fit``: train and val; ``validate``: val; ``test``: test)."""
        masks = self._masks()
        if stage in ("fit", None) and self.train_dataset is None:
            self.train_dataset = self._subset(masks["train"], train=True)
        if stage in ("fit", "validate", None) and self.val_dataset is None:
            self.val_dataset = self._subset(masks["val"], train=False)
        if stage in ("test", "predict", None) and self.test_dataset is None:
            self.test_dataset = self._subset(masks["test"], train=False)

    # -- what models and tasks read -------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """Species names from ``classes.txt`` without the number, e.g. ``"Black_footed_Albatross"``."""
        return [name.split(".", 1)[-1] for name in self.metadata()["classes"]]

    @property
    def num_classes(self) -> int:
        """Number of classes (200)."""
        return len(self.metadata()["classes"])
