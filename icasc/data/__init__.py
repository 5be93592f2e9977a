"""Datasets and data modules: the embedded synthetic default, the ICASC paper's five benchmarks,
Fashion-MNIST (real images offline, optionally cluttered) and a folder of one's own images (with boxes).

Every datamodule yields dict batches (``"image"``, ``"target"``, and ``"box"`` where the data has one object
box per image) and exposes what the model and the tasks read: ``num_classes``, ``class_names``,
``multilabel``, ``image_size``, ``mean``, ``std`` (the contract a user's own data module follows:
:mod:`icasc.data.contract`). ``batch_size`` is the global batch (split across DDP processes).
"""

from icasc.data.base import DictDataModule
from icasc.data.caltech256 import Caltech256DataModule
from icasc.data.cifar100 import CIFAR100DataModule
from icasc.data.clutter import CentredDataset, ClutteredDataset
from icasc.data.cub200 import CUB200DataModule
from icasc.data.fashion_mnist import FashionMNISTDataModule
from icasc.data.image_folder import ImageFolderDataModule
from icasc.data.imagenet import ImageNetDataModule
from icasc.data.synthetic import SyntheticDataModule, SyntheticShapes
from icasc.data.voc2012 import VOC_CLASSES, VOC2012DataModule

__all__ = [
    "VOC_CLASSES",
    "CIFAR100DataModule",
    "CUB200DataModule",
    "Caltech256DataModule",
    "CentredDataset",
    "ClutteredDataset",
    "DictDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "SyntheticDataModule",
    "SyntheticShapes",
    "VOC2012DataModule",
]
