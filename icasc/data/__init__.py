"""Datasets and data modules: the embedded synthetic default dataset, ImageNet from an ImageFolder tree."""

from icasc.data.imagenet import ImageNetDataModule
from icasc.data.synthetic import SyntheticDataModule, SyntheticShapes

__all__ = ["ImageNetDataModule", "SyntheticDataModule", "SyntheticShapes"]
