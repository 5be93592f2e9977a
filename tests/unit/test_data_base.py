"""DictDataModule: batch_size is the global batch, split across the DDP world; argument checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from icasc.data.base import DictDataModule
from icasc.utils import check_choice, check_int
from tests.helpers import FixedData


class TinyModule(DictDataModule):
    def __init__(self, batch_size: int = 8, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = self.val_dataset = self.test_dataset = FixedData(n=16)


def _with_world(dm: DictDataModule, world_size: int) -> DictDataModule:
    dm.trainer = SimpleNamespace(world_size=world_size)  # what the loaders read from a Lightning Trainer
    return dm


def test_without_a_trainer_the_batch_is_the_whole_batch():
    dm = TinyModule(batch_size=8)
    dm.setup()
    assert dm.world_size == 1 and dm.per_device_batch_size == 8
    assert next(iter(dm.train_dataloader()))["image"].shape[0] == 8


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_each_process_loads_its_share_of_the_global_batch(world_size):
    dm = _with_world(TinyModule(batch_size=8), world_size)
    dm.setup()
    assert dm.per_device_batch_size == 8 // world_size
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        assert loader.batch_size == 8 // world_size
        assert next(iter(loader))["image"].shape[0] == 8 // world_size


def test_a_batch_not_divisible_by_the_world_size_names_sizes_that_are():
    dm = _with_world(TinyModule(batch_size=10), 4)
    dm.setup()
    with pytest.raises(ValueError, match=r"batch_size=10 is the global batch.*world size 4.*e\.g\. 8 or 12"):
        dm.train_dataloader()
    small = _with_world(TinyModule(batch_size=3), 4)
    with pytest.raises(ValueError, match=r"multiple of 4, e\.g\. 4 or 8"):
        _ = small.per_device_batch_size


def test_loaders_before_setup_say_so():
    with pytest.raises(RuntimeError, match=r"train dataset is not built; call setup\(\)"):
        TinyModule().train_dataloader()


def test_argument_checks_name_the_argument_and_the_valid_values():
    check_int("n", 3, 1)
    check_int("n", None, 1, optional=True)
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(ValueError, match=r"n must be an int >= 1"):
            check_int("n", bad, 1)
    with pytest.raises(ValueError, match=r"n must be None or an int >= 1, got 0"):
        check_int("n", 0, 1, optional=True)
    check_choice("mode", "a", ("a", "b"))
    with pytest.raises(ValueError, match=r"mode must be one of 'a', 'b'; got 'c'"):
        check_choice("mode", "c", ("a", "b"))
