"""PASCAL VOC 2012 as 20-way multi-label classification (torchvision ``VOCDetection``), boxes kept.

Expected layout (torchvision's; ``data.download=true`` fetches the trainval archive through it)::

    root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2012/Annotations/<id>.xml
    root/VOCdevkit/VOC2012/ImageSets/Main/{train,val}.txt

``data.root`` may also name ``VOCdevkit/`` or ``VOC2012/``. The paper trains on ``train`` (5,717 images) and
evaluates on ``val`` (5,823; Table 1), which is both the validation and the test split here (the test
annotations are not public).

Targets: a float multi-hot ``[20]`` over :data:`VOC_CLASSES` (the standard order). An object marked
``difficult`` counts only with ``include_difficult=True``; by default a class is present when at least one
non-difficult instance is (the VOC classification ground truth marks difficult-only classes as neither
positive nor negative; a binary target has to pick a side, and "absent" is the side that VOC's own
evaluation never counts as a miss). Boxes of the counted objects travel with the sample in a fixed-size
padded form so the default collate works: ``"boxes"`` float32 ``[max_boxes, 4]`` xyxy in pixels of the
transformed image (VOC's 1-based inclusive corners become pixel edges: ``(xmin - 1, ymin - 1, xmax,
ymax)``), and ``"box_labels"`` int64 ``[max_boxes]``, ``-1`` on padding rows (whose boxes are zeros).

Transforms (Table 1: 299 x 299): the image is resized to ``resize x resize`` and cropped to
``image_size`` (random crop + flip for training, centre crop for evaluation). The default ``resize =
image_size = 299`` is a plain square resize (+ flip for training): no labelled object is cropped away.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import VOCDetection
from torchvision.transforms import v2

from icasc.data.base import (
    ImageNetNormalizedDataModule,
    check_crop_sizes,
    check_label_kind,
    check_loader_args,
    check_root,
    check_root_exists,
)
from icasc.data.transforms import box_transform, load_rgb, transform_boxes
from icasc.utils import check_choice, check_int

__all__ = ["VOC_CLASSES", "VOC2012DataModule", "VOCMultiLabelDataset", "parse_voc_objects"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
"""The 20 VOC classes in the standard (devkit) order: label ``k`` is ``VOC_CLASSES[k]``."""

_BASE = Path("VOCdevkit") / "VOC2012"
_LAYOUT = "root/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/<split>.txt}"
_SPLITS = ("train", "val", "trainval")


def parse_voc_objects(path: str | Path) -> list[tuple[int, bool, tuple[float, float, float, float]]]:
    """The objects of a VOC annotation file: ``(class index, difficult, xyxy pixel-edge box)`` each.

    Raises:
        ValueError: Unparsable XML, an unknown class name or a missing box coordinate (naming the file).
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{path} is not a VOC annotation XML file: {error}") from error
    objects = []
    for node in root.iter("object"):
        name = (node.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise ValueError(f"{path}: unknown VOC class {name!r}; expected one of {', '.join(VOC_CLASSES)}")
        difficult = (node.findtext("difficult") or "0").strip() == "1"
        try:
            box = node.find("bndbox")
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr, arg-type]
        except (AttributeError, TypeError, ValueError) as error:
            raise ValueError(
                f"{path}: object {name!r} lacks a numeric bndbox/xmin..ymax ({error})"
            ) from error
        objects.append((VOC_CLASSES.index(name), difficult, (xmin - 1.0, ymin - 1.0, xmax, ymax)))
    return objects


class VOCMultiLabelDataset(Dataset):
    """VOC images with multi-hot targets and padded boxes (see the module docstring for the sample format).

    Args:
        images: Image paths.
        annotations: The matching annotation XML paths (parsed once, here).
        transform: A box-aware ``transforms.v2`` pipeline.
        include_difficult: Count objects marked difficult.
        max_boxes: Rows of the padded ``"boxes"``/``"box_labels"``.

    Raises:
        ValueError: An image holds more counted objects than ``max_boxes`` (naming it and the count).
    """

    def __init__(
        self,
        images: list[str | Path],
        annotations: list[str | Path],
        transform: v2.Compose,
        include_difficult: bool = False,
        max_boxes: int = 64,
    ) -> None:
        self.images = [Path(p) for p in images]
        self.transform = transform
        self.max_boxes = max_boxes
        self.targets = torch.zeros(len(images), len(VOC_CLASSES))
        self.boxes: list[Tensor] = []
        self.box_labels: list[Tensor] = []
        for i, path in enumerate(annotations):
            kept = [
                (k, box)
                for k, difficult, box in parse_voc_objects(path)
                if include_difficult or not difficult
            ]
            if len(kept) > max_boxes:
                raise ValueError(
                    f"{path} holds {len(kept)} objects but data.max_boxes={max_boxes}; raise data.max_boxes"
                )
            labels = torch.tensor([k for k, _ in kept], dtype=torch.int64)
            self.targets[i, labels] = 1.0
            self.box_labels.append(labels)
            self.boxes.append(torch.tensor([box for _, box in kept], dtype=torch.float32).reshape(-1, 4))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, boxes = transform_boxes(self.transform, load_rgb(self.images[index]), self.boxes[index])
        n = len(boxes)
        padded = torch.zeros(self.max_boxes, 4)
        padded[:n] = boxes
        labels = torch.full((self.max_boxes,), -1, dtype=torch.int64)
        labels[:n] = self.box_labels[index]
        return {"image": image, "target": self.targets[index].clone(), "boxes": padded, "box_labels": labels}


class VOC2012DataModule(ImageNetNormalizedDataModule):
    """Lightning data module over PASCAL VOC 2012 multi-label classification (train on ``train``, evaluate
    on ``val``).

    ``batch_size`` is the **global** batch (Table 1: 16); under DDP each process loads
    ``batch_size / world_size``.

    Args:
        root: The directory holding ``VOCdevkit/`` (torchvision's root), or ``VOCdevkit/`` or ``VOC2012/``.
        download: Fetch and unpack the VOC 2012 trainval archive via torchvision (in ``prepare_data``).
        batch_size: Global batch size, divisible by the world size.
        num_workers: DataLoader worker processes (persistent when ``> 0``).
        pin_memory: Passed to the DataLoaders.
        image_size: Side of the images fed to the model (299).
        resize: Images are first resized to ``resize x resize``; ``>= image_size`` (equal: no crop).
        train_set: Image set trained on: ``train`` (the paper) or ``trainval``.
        val_set: Image set validated and tested on: ``val`` (the paper) or ``train``.
        include_difficult: Count objects marked difficult (targets and boxes).
        max_boxes: Rows of the padded per-image ``"boxes"``; an image with more counted objects is an error.
        num_classes: Must be 20; the configs pass it to the model.
        multilabel: Must be ``True``; the configs pass it to the loss.

    Raises:
        ValueError: An argument out of range.
        FileNotFoundError: No ``VOCdevkit/VOC2012`` under ``root`` (the message shows the layout).
    """

    MULTILABEL = True

    def __init__(
        self,
        root: str | Path,
        download: bool = False,
        batch_size: int = 16,
        num_workers: int = 4,
        pin_memory: bool = True,
        image_size: int = 299,
        resize: int = 299,
        train_set: str = "train",
        val_set: str = "val",
        include_difficult: bool = False,
        max_boxes: int = 64,
        num_classes: int = 20,
        multilabel: bool = True,
    ) -> None:
        super().__init__()
        # a new name: save_hyperparameters() reads the arguments from this frame and keeps data.root as given
        path = check_root(
            root,
            f"set data.root to the directory holding VOCdevkit/: expected {_LAYOUT} "
            "(with data.download=true, torchvision fetches it there)",
        )
        check_loader_args(batch_size, num_workers)
        check_crop_sizes(image_size, resize)
        check_int("max_boxes", max_boxes, 1)
        check_choice("train_set", train_set, _SPLITS)
        check_choice("val_set", val_set, _SPLITS)
        if num_classes != len(VOC_CLASSES):
            raise ValueError(f"PASCAL VOC has {len(VOC_CLASSES)} classes: set data.num_classes=20")
        check_label_kind("PASCAL VOC classification", multilabel, self.MULTILABEL)
        if not isinstance(include_difficult, bool):
            raise ValueError(f"include_difficult must be true or false, got {include_difficult!r}")
        self.root = _torchvision_root(path)
        self.save_hyperparameters(logger=False)

    def prepare_data(self) -> None:
        """Download and unpack the trainval archive via torchvision when ``download=True``."""
        if self.hparams.download and not (self.root / _BASE).is_dir():
            VOCDetection(str(self.root), year="2012", image_set="trainval", download=True)

    def _dataset(self, image_set: str, train: bool) -> VOCMultiLabelDataset:
        hp = self.hparams
        voc = self.root / _BASE
        check_root_exists(
            self.root,
            "PASCAL VOC 2012",
            "Set data.root to the directory holding VOCdevkit/, or set data.download=true to fetch it there "
            "via torchvision",
        )
        if not voc.is_dir():
            raise FileNotFoundError(
                f"no VOCdevkit/VOC2012 under {self.root}: expected {_LAYOUT}. Set data.download=true to "
                "fetch it via torchvision, or point data.root at the directory holding VOCdevkit/"
            )
        split_file = voc / "ImageSets" / "Main" / f"{image_set}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"the image set list {split_file} is missing: expected {_LAYOUT}")
        index = VOCDetection(str(self.root), year="2012", image_set=image_set, download=False)
        missing = [p for p in (*index.images[:1], *index.annotations[:1]) if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]} (listed in {split_file}) is missing: expected {_LAYOUT}")
        return VOCMultiLabelDataset(
            index.images,
            index.annotations,
            box_transform(hp.image_size, hp.resize, train=train),
            include_difficult=hp.include_difficult,
            max_boxes=hp.max_boxes,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the splits ``stage`` needs; val and test are the same ``val_set`` images."""
        hp = self.hparams
        if stage in ("fit", None) and self.train_dataset is None:
            self.train_dataset = self._dataset(hp.train_set, train=True)
        if stage in ("fit", "validate", "test", "predict", None) and self.val_dataset is None:
            self.val_dataset = self._dataset(hp.val_set, train=False)
        if stage in ("test", "predict", None):
            self.test_dataset = self.val_dataset

    # -- what models and tasks read -------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """The 20 VOC classes in the standard order."""
        return list(VOC_CLASSES)

    @property
    def num_classes(self) -> int:
        """20."""
        return len(VOC_CLASSES)


def _torchvision_root(root: Path) -> Path:
    """The directory holding ``VOCdevkit/`` for a root naming it, ``VOCdevkit/`` or ``VOC2012/``."""
    if (root / _BASE).is_dir():
        return root
    if (root / "VOC2012").is_dir() and root.name == "VOCdevkit":
        return root.parent
    if root.name == "VOC2012" and root.parent.name == "VOCdevkit":
        return root.parent.parent
    return root
