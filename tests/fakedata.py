"""Writers of tiny fake copies of the paper's datasets, in each dataset's real on-disk format.

Used by the datamodule tests and the preset smoke tests: each writer puts a few small images (or CIFAR's
pickles) where the real dataset has them and returns the directory to pass as ``data.root``. Images are
solid colours with a class-dependent colour and a darker "object" rectangle, so tests can recognise them.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image

__all__ = [
    "CUB_BOX",
    "FAKE_DATASETS",
    "FASHION_MNIST_FILES",
    "SHRINK",
    "VOC_CLASSES",
    "class_colour",
    "fake_fashion_mnist",
    "fake_wnids",
    "write_fake_caltech256",
    "write_fake_cifar100",
    "write_fake_cub200",
    "write_fake_fashion_mnist",
    "write_fake_imagenet",
    "write_fake_voc2012",
    "write_idx",
]

# the standard devkit order, written out here so tests check the library's list against it
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

# CUB: the box of image i is this fraction of the image (x0, y0, x1, y1), shifted right by i % 3 pixels;
# left of centre, so a mirrored image is recognisable from its box.
CUB_BOX = (0.1, 0.2, 0.45, 0.7)


def class_colour(k: int) -> tuple[int, int, int]:
    """A distinct, deterministic RGB colour for class ``k``."""
    return ((37 * k + 200) % 256, (91 * k + 30) % 256, (53 * k + 120) % 256)


def _jpeg(path: Path, width: int, height: int, colour: tuple[int, int, int], box=None, mode: str = "RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (width, height), colour)
    if box is not None:
        image.paste((0, 0, 0), tuple(round(v) for v in box))
    image.convert(mode).save(path, quality=90)


# ---------------------------------------------------------------------------------------------- CIFAR-100


class _Py2Str(bytes):
    """A Python 2 ``str``: pickled as (SHORT_)BINSTRING, as in the official CIFAR pickles."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets a type choose its opcodes
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2str(self, obj: _Py2Str) -> None:
        data = bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2str


def _py2_dump(obj: dict, path: Path) -> None:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def _s(text: str) -> _Py2Str:
    return _Py2Str(text.encode("latin1"))


def write_fake_cifar100(
    root: Path, train_per_class: int = 2, test_per_class: int = 1, num_classes: int = 100
) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` as in the official python archive.

    The pickles are protocol-2 dicts with Python 2 ``str`` keys (``b"data"`` with ``encoding="bytes"``):
    ``data`` uint8 ``[N, 3072]`` (1024 red, 1024 green, 1024 blue values, row-major), ``fine_labels``,
    ``coarse_labels`` (``fine // 5``), ``filenames``, ``batch_label``; ``meta`` holds ``fine_label_names`` and
    ``coarse_label_names``. Image ``i`` of class ``k`` is seeded noise around ``class_colour(k)``.
    """
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = [k for _ in range(per_class) for k in range(num_classes)]
        colours = np.array([class_colour(k) for k in labels], dtype=np.int16).reshape(-1, 3, 1)
        noise = rng.integers(-20, 21, size=(len(labels), 3, 1024))
        data = np.clip(colours + noise, 0, 255).astype(np.uint8).reshape(len(labels), 3072)
        _py2_dump(
            {
                _s("filenames"): [_s(f"fake_{split}_{i:05d}.png") for i in range(len(labels))],
                _s("batch_label"): _s(f"{split}ing batch 1 of 1"),
                _s("fine_labels"): labels,
                _s("coarse_labels"): [k // 5 for k in labels],
                _s("data"): data,
            },
            folder / split,
        )
    names = [_s(f"class_{k:03d}") for k in range(num_classes)]
    coarse = [_s(f"superclass_{k:02d}") for k in range((num_classes + 4) // 5)]
    _py2_dump({_s("fine_label_names"): names, _s("coarse_label_names"): coarse}, folder / "meta")
    return Path(root)


# -------------------------------------------------------------------------------------------- Caltech-256


def write_fake_caltech256(
    root: Path, num_classes: int = 257, images_per_class: int = 4, size: int = 40
) -> Path:
    """``root/caltech256/256_ObjectCategories/<NNN>.<name>/<NNN>_<iiii>.jpg`` (torchvision's layout).

    Class folders are numbered from 001; the last (``num_classes``-th) one is ``<NNN>.clutter``, as 257 is in
    the real data. Image ``0`` of each class is greyscale (the real data holds some). Returns ``root``.
    """
    folder = Path(root) / "caltech256" / "256_ObjectCategories"
    for k in range(num_classes):
        name = "clutter" if k == num_classes - 1 else f"object-{k:03d}"
        for i in range(images_per_class):
            path = folder / f"{k + 1:03d}.{name}" / f"{k + 1:03d}_{i + 1:04d}.jpg"
            _jpeg(path, size + (i % 2) * 8, size, class_colour(k), mode="L" if i == 0 else "RGB")
    return Path(root)


# --------------------------------------------------------------------------------------------- ImageNet


def fake_wnids(num_classes: int) -> list[str]:
    """Sorted WordNet-style ids of the fake ImageNet classes."""
    return [f"n{1440764 + 97 * k:08d}" for k in range(num_classes)]


def write_fake_imagenet(
    root: Path, num_classes: int = 3, per_class: int = 2, size: int = 40, val_per_class: int | None = None
) -> Path:
    """``root/{train,val}/<wnid>/<wnid>_<i>.JPEG``: single-colour images (``class_colour(k)`` for class k).

    Image ``0`` of each class is ``(size + size // 4) x size`` (wider), the others square. ``val_per_class``
    defaults to ``per_class``. Returns ``root``.
    """
    root = Path(root)
    for split, n in (("train", per_class), ("val", per_class if val_per_class is None else val_per_class)):
        for k, wnid in enumerate(fake_wnids(num_classes)):
            for i in range(n):
                width = size + size // 4 if i == 0 else size
                _jpeg(root / split / wnid / f"{wnid}_{i}.JPEG", width, size, class_colour(k))
    return root


# ------------------------------------------------------------------------------------------- CUB-200-2011


def write_fake_cub200(root: Path, num_classes: int = 200, per_class: int = 2, size: int = 60) -> Path:
    """``root/CUB_200_2011/`` with ``images/``, ``images.txt``, ``classes.txt``, ``image_class_labels.txt``,
    ``train_test_split.txt`` and ``bounding_boxes.txt`` as in the official archive.

    Image ids run from 1 in class order; the first image of each class is for testing (``is_training 0``),
    the others for training. Image ``i`` (0-based id) is ``(size + 20) x size`` with a black box at
    ``CUB_BOX`` (fractions of width and height) shifted right by ``i % 3`` pixels; ``bounding_boxes.txt``
    holds that box as ``x y width height``. Returns ``root/CUB_200_2011`` (to pass as data.root).
    """
    base = Path(root) / "CUB_200_2011"
    base.mkdir(parents=True, exist_ok=True)
    classes, images, labels, split, boxes = [], [], [], [], []
    image_id = 0
    width, height = size + 20, size
    for k in range(num_classes):
        name = f"{k + 1:03d}.Fake_Bird_{k + 1}" if k else "001.Black_footed_Albatross"
        classes.append(f"{k + 1} {name}")
        for j in range(per_class):
            image_id += 1
            stem = "Black_Footed_Albatross" if k == 0 else f"Fake_Bird_{k + 1}"
            rel = f"{name}/{stem}_{j + 1:04d}_{796110 + image_id}.jpg"
            x0, y0 = CUB_BOX[0] * width + (image_id - 1) % 3, CUB_BOX[1] * height
            x1, y1 = CUB_BOX[2] * width + (image_id - 1) % 3, CUB_BOX[3] * height
            _jpeg(base / "images" / rel, width, height, class_colour(k), box=(x0, y0, x1, y1))
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {k + 1}")
            split.append(f"{image_id} {0 if j == 0 else 1}")
            boxes.append(f"{image_id} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}")
    for file, lines in (
        ("classes.txt", classes),
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("bounding_boxes.txt", boxes),
    ):
        (base / file).write_text("\n".join(lines) + "\n")
    return base


# ------------------------------------------------------------------------------------------ PASCAL VOC 2012


def _voc_xml(name: str, width: int, height: int, objects: list[tuple[str, tuple[int, ...], bool]]) -> str:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC2012"
    ET.SubElement(ann, "filename").text = f"{name}.jpg"
    source = ET.SubElement(ann, "source")
    ET.SubElement(source, "database").text = "The VOC2012 Database"
    ET.SubElement(source, "annotation").text = "PASCAL VOC2012"
    ET.SubElement(source, "image").text = "flickr"
    size_node = ET.SubElement(ann, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size_node, key).text = str(value)
    ET.SubElement(ann, "segmented").text = "0"
    for cls, (x0, y0, x1, y1), difficult in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = cls
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if difficult else "0"
        box = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, key).text = str(value)
    ET.indent(ann, space="\t")
    return ET.tostring(ann, encoding="unicode") + "\n"


def voc_fake_objects(index: int, size: int) -> list[tuple[str, tuple[int, int, int, int], bool]]:
    """The objects of fake VOC image ``index`` (over train, then val): ``(class, xyxy box, difficult)``.

    Every image holds a person and one other class (``index % 19``, skipping person); image 0 also holds a
    difficult-only cat, and odd images a difficult extra person. Boxes use VOC's 1-based pixel coordinates.
    """
    width, height = size + 20, size
    other = [c for c in VOC_CLASSES if c != "person"][index % 19]
    objects = [
        ("person", (2, 3, width // 2, height - 2), False),
        (other, (width // 2, 5, width - 1, height // 2), False),
    ]
    if index == 0:
        objects.append(("cat", (4, height // 2, 20, height - 1), True))
    if index % 2 == 1:
        objects.append(("person", (10, 10, 30, 30), True))
    return objects


def write_fake_voc2012(root: Path, num_train: int = 4, num_val: int = 4, size: int = 60) -> Path:
    """``root/VOCdevkit/VOC2012/{JPEGImages,Annotations,ImageSets/Main/{train,val,trainval}.txt}``.

    Images are ``(size + 20) x size`` with ids ``2012_00000i``; the XML annotations follow the real schema
    (``size``, ``object/{name,pose,truncated,difficult,bndbox}``); objects per :func:`voc_fake_objects`.
    Returns ``root`` (torchvision's ``VOCDetection`` root).
    """
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    (voc / "Annotations").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    ids = {"train": [], "val": []}
    width, height = size + 20, size
    for index in range(num_train + num_val):
        name = f"2012_{index:06d}"
        ids["train" if index < num_train else "val"].append(name)
        objects = voc_fake_objects(index, size)
        first = VOC_CLASSES.index(objects[1][0])
        _jpeg(voc / "JPEGImages" / f"{name}.jpg", width, height, class_colour(first), box=objects[0][1])
        (voc / "Annotations" / f"{name}.xml").write_text(_voc_xml(name, width, height, objects))
    for split in ("train", "val"):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in ids[split]))
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text(
        "".join(f"{n}\n" for n in ids["train"] + ids["val"])
    )
    return Path(root)


# ------------------------------------------------------------------------------------------ Fashion-MNIST

# the official file names, written out here so tests check the library's list against them
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)  # fmt: skip


def write_idx(path: Path, array: np.ndarray) -> Path:
    """``array`` as an unsigned-byte IDX file (magic ``00 00 08 ndim``, big-endian sizes); ``.gz``: gzip."""
    array = np.asarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def fake_fashion_mnist(train_per_class: int = 4, test_per_class: int = 2) -> dict[str, np.ndarray]:
    """The arrays of the four files, by file name: ``[N, 28, 28]`` images and ``[N]`` labels.

    Image ``i`` has label ``i % 10`` and is black but for a rectangle (rows ``4 + i % 3 .. 21 + i % 5``,
    columns ``6 + i % 4 .. 19 + i % 3``) of the value ``40 + 5 * i`` in the training set, ``42 + 5 * i`` in
    the test set (modulo 200): with the default sizes every image is unique, so tests can tell which image a
    sample shows.
    """
    out = {}
    for split, per_class, base in (("train", train_per_class, 40), ("t10k", test_per_class, 42)):
        n = 10 * per_class
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i in range(n):
            images[i, 4 + i % 3 : 22 + i % 5, 6 + i % 4 : 20 + i % 3] = base + (5 * i) % 200
        out[f"{split}-images-idx3-ubyte"] = images
        out[f"{split}-labels-idx1-ubyte"] = (np.arange(n) % 10).astype(np.uint8)
    return out


def write_fake_fashion_mnist(
    root: Path, layout: str = "flat", compress: bool = True, train_per_class: int = 4, test_per_class: int = 2
) -> Path:
    """The four IDX files of :func:`fake_fashion_mnist` under ``root``; returns ``root`` (the data.root).

    ``layout="flat"``: ``root/<file>[.gz]`` as the Debian package installs them; ``"torchvision"``:
    ``root/FashionMNIST/raw/<file>[.gz]``. ``compress`` writes ``.gz`` files.
    """
    folder = Path(root) if layout == "flat" else Path(root) / "FashionMNIST" / "raw"
    for name, array in fake_fashion_mnist(train_per_class, test_per_class).items():
        write_idx(folder / (f"{name}.gz" if compress else name), array)
    return Path(root)


# ------------------------------------------------------ data.root and overrides for each paper dataset
# Each returns the root to pass as data.root and the overrides that fit the fake copy.


def _fake_cifar100(root: Path) -> tuple[Path, list[str]]:
    return write_fake_cifar100(root), []


def _fake_caltech256(root: Path) -> tuple[Path, list[str]]:
    # 3 object classes + clutter, 3 images each: 2 to train, 1 to test
    path = write_fake_caltech256(root, num_classes=4, images_per_class=3, size=36)
    return path, ["data.num_classes=3", "data.train_per_class=2", "data.test_per_class=1"]


def _fake_imagenet(root: Path) -> tuple[Path, list[str]]:
    return write_fake_imagenet(root, num_classes=3, per_class=2, size=36), ["data.num_classes=3"]


def _fake_cub200(root: Path) -> tuple[Path, list[str]]:
    return write_fake_cub200(root, num_classes=3, per_class=3, size=40), ["data.num_classes=3"]


def _fake_voc2012(root: Path) -> tuple[Path, list[str]]:
    return write_fake_voc2012(root, num_train=4, num_val=4, size=40), []


def _fake_fashion_mnist(root: Path) -> tuple[Path, list[str]]:
    # 40 training and 20 test images: the default split sizes (thousands) do not fit
    return write_fake_fashion_mnist(root), ["data.train_size=16", "data.val_size=8", "data.test_size=8"]


def _fake_image_folder(root: Path) -> tuple[Path, list[str]]:
    # the ImageNet fake is a train/val image folder (3 classes); data.num_classes is counted from it
    return write_fake_imagenet(root, num_classes=3, per_class=2, size=36), []


FAKE_DATASETS = {
    "cifar100": _fake_cifar100,
    "caltech256": _fake_caltech256,
    "imagenet": _fake_imagenet,
    "cub200": _fake_cub200,
    "voc2012": _fake_voc2012,
    "fashion_mnist": _fake_fashion_mnist,
    "image_folder": _fake_image_folder,
}
# overrides that shrink each dataset's images for speed (backbone, loss, attention and schedule stay as set)
SHRINK = {
    "cifar100": [],  # 32 px already
    "caltech256": ["data.image_size=64", "data.resize=72"],
    "imagenet": ["data.image_size=64", "data.resize=72"],
    "cub200": ["data.image_size=64", "data.resize=72"],
    "voc2012": ["data.image_size=64", "data.resize=64"],
    "fashion_mnist": [],  # a 64 px canvas already
    "image_folder": ["data.image_size=32", "data.resize=36"],
}
