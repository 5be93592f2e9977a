"""Datasets and data modules: the embedded synthetic default dataset."""

from icasc.data.synthetic import SyntheticDataModule, SyntheticShapes

__all__ = ["SyntheticDataModule", "SyntheticShapes"]
