"""What icasc's datamodules share: dict batches and the loaders built from the same hyper-parameters."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset

__all__ = ["DictDataModule"]


class DictDataModule(L.LightningDataModule):
    """Base of the datamodules: ``train/val/test_dataset`` built in ``setup``, loaders over them.

    Subclasses call ``save_hyperparameters()`` with ``batch_size``, ``num_workers`` and ``pin_memory`` among
    their arguments (``batch_size`` is per device) and fill the three dataset attributes in ``setup``.
    """

    train_dataset: Dataset | None = None
    val_dataset: Dataset | None = None
    test_dataset: Dataset | None = None

    def _loader(self, dataset: Dataset | None, name: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"the {name} dataset is not built; call setup() with the matching stage first")
        hp = self.hparams
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
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
