"""The data-module contract: what icasc reads from any DataModule, checked in one place."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from icasc.data import SyntheticDataModule
from icasc.data.contract import (
    ClassificationDataModule,
    DataContractError,
    DataInfo,
    check_batch,
    check_data_fits_model,
    describe_data,
)


class Minimal(L.LightningDataModule):
    num_classes = 4

    def train_dataloader(self):
        return []

    def val_dataloader(self):
        return []


def test_a_builtin_datamodule_gives_everything():
    dm = SyntheticDataModule(num_classes=5, image_size=32, train_size=8, val_size=8)
    info = describe_data(dm)
    assert info.source == "icasc.data.synthetic.SyntheticDataModule"
    assert (info.num_classes, info.multilabel, info.image_size) == (5, False, 32)
    assert info.mean == tuple(dm.mean) and info.std == tuple(dm.std) and len(info.mean) == 3
    assert info.class_names is not None and len(info.class_names) == 5
    assert info.card_input() == {"image_size": 32, "mean": list(dm.mean), "std": list(dm.std)}


def test_the_minimal_module_follows_the_contract_with_unknowns():
    assert isinstance(Minimal(), ClassificationDataModule)
    info = describe_data(Minimal())
    assert info == DataInfo(source=f"{__name__}.Minimal", num_classes=4)
    assert info.card_input() == {"image_size": None, "mean": None, "std": None}
    assert info.display_mean == (0.0, 0.0, 0.0) and info.display_std == (1.0, 1.0, 1.0)
    assert info.names() == ["0", "1", "2", "3"]


def test_an_optional_check_split_is_asked_for_each_loader_used():
    class Splits(Minimal):
        def __init__(self):
            super().__init__()
            self.asked: list[str] = []

        def test_dataloader(self):
            return []

        def check_split(self, name):
            self.asked.append(name)
            if name == "test":
                raise ValueError("no test images: add test/")

    dm = Splits()
    assert describe_data(dm).num_classes == 4 and dm.asked == ["train", "val"]
    with pytest.raises(DataContractError, match=r"\n  - test split: no test images: add test/$"):
        describe_data(dm, loaders=("train", "val", "test"))


def test_every_problem_is_listed_in_one_message():
    class Bad(L.LightningDataModule):
        num_classes = 0
        multilabel = "no"
        class_names = ("a", "b")
        image_size = 0.5
        mean = (0.5, 0.5, 0.5)

        def train_dataloader(self):
            return []

    with pytest.raises(DataContractError) as error:
        describe_data(Bad(), loaders=("train", "val", "test"))
    lines = str(error.value).splitlines()
    assert "Bad does not follow icasc's contract" in lines[0] and "Bring your own data" in lines[0]
    problems = [line.strip() for line in lines[1:]]
    assert problems == [
        "- num_classes must be an int >= 1, got 0",
        "- val_dataloader() is missing: define it, returning a DataLoader of dict batches",
        "- test_dataloader() is missing: define it, returning a DataLoader of dict batches",
        "- multilabel must be True or False (or absent: False), got 'no'",
        "- image_size must be an int >= 1 (the side of the model's input), got 0.5",
        "- mean is given but std is not: give both (the loaders' normalisation) or neither",
    ]


def test_malformed_optional_fields():
    class Odd(Minimal):
        class_names = ("a", "b")
        mean = "grey"
        std = (0.2, 0.0, 0.2)

        @property
        def image_size(self):
            raise RuntimeError("not set up yet")

    with pytest.raises(DataContractError) as error:
        describe_data(Odd())
    message = str(error.value)
    assert "class_names has 2 names but num_classes is 4" in message
    assert "reading image_size raised RuntimeError: not set up yet" in message
    assert "mean must be a sequence of per-channel floats" in message
    # std is reported once mean is fixed
    Odd.mean = (0.5, 0.5, 0.5)
    Odd.class_names = None
    Odd.image_size = 32
    with pytest.raises(DataContractError, match=r"std must be > 0 in every channel, got \[0.2, 0.0, 0.2\]"):
        describe_data(Odd())


def _batch(**entries):
    batch = {"image": torch.zeros(2, 3, 8, 8), "target": torch.tensor([0, 3])}
    batch.update(entries)
    return {k: v for k, v in batch.items() if v is not None}


def test_check_batch_accepts_the_format():
    check_batch(_batch(), 4, False)
    check_batch(_batch(box=torch.tensor([[0.0, 0, 4, 4], [1, 1, 8, 8]])), 4, False)
    check_batch(_batch(target=torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])), 4, True)
    check_batch(_batch(image=torch.zeros(2, 10, 3, 8, 8)), 4, False)  # ten-crop evaluation


@pytest.mark.parametrize(
    ("batch", "multilabel", "expected"),
    [
        ((torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])), False, r"first training batch is a tuple.*dicts"),
        (_batch(target=None), False, r"missing key\(s\) \['target'\]"),
        (_batch(image=torch.zeros(2, 3, 8, 8, dtype=torch.uint8)), False, "image must be a float tensor"),
        (_batch(image=torch.zeros(2, 8, 8, 3)), False, r"image must be \[B, 3, H, W\].*got \[2, 8, 8, 3\]"),
        (_batch(target=torch.tensor([0, 4])), False, r"classes 0..4 outside 0..3: num_classes is too small"),
        (_batch(target=torch.tensor([0.0, 1.0])), False, r"target must be \[B\] int64 class indices"),
        (_batch(target=torch.eye(4)[:2]), False, r"multi-hot targets need multilabel=True"),
        (_batch(), True, r"target must be \[B, 4\] multi-hot for multi-label data, got \[2\]"),
        (_batch(box=torch.zeros(2, 2, 4)), False, r"box must be \[B, 4\]"),
        (
            _batch(target=torch.tensor([0, 1, 2])),
            False,
            r"different batch sizes: \{'image': 2, 'target': 3\}",
        ),
    ],
)
def test_check_batch_names_the_problem(batch, multilabel, expected):
    with pytest.raises(DataContractError, match=expected):
        check_batch(batch, 4, multilabel, "the first training batch")


def test_check_data_fits_model():
    info = DataInfo(source="my.Data", num_classes=3)
    check_data_fits_model(info, 3, False, "the model", "fix classes", "fix labels")
    with pytest.raises(
        ValueError, match=r"^m was built for 5 classes but the data \(my.Data\) has 3: fix c$"
    ):
        check_data_fits_model(info, 5, False, "m", "fix c", "fix l")
    with pytest.raises(
        ValueError, match=r"^m is a multi-label model but the data \(my.Data\) is single-label: l$"
    ):
        check_data_fits_model(info, 3, True, "m", "c", "l")
