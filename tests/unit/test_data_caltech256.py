"""Caltech256DataModule on a tiny fake 256_ObjectCategories tree of real JPEG files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from icasc.data import Caltech256DataModule
from icasc.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import compose_train
from tests.fakedata import write_fake_caltech256

K = 5  # object classes of the fake copy (+ clutter)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_caltech256(
        tmp_path_factory.mktemp("caltech"), num_classes=K + 1, images_per_class=6, size=24
    )


def _module(root: Path, **kwargs: object) -> Caltech256DataModule:
    options = {
        "batch_size": 4,
        "num_workers": 0,
        "pin_memory": False,
        "train_per_class": 3,
        "test_per_class": 2,
        "image_size": 20,
        "resize": 24,
        "num_classes": K,
    }
    return Caltech256DataModule(root, **{**options, **kwargs})


def _names(files: list[Path]) -> list[str]:
    return [f.name for f in files]


def test_clutter_is_dropped_and_batches_are_dicts(root):
    dm = _module(root)
    dm.setup("fit")
    assert dm.num_classes == K and dm.class_names == [f"object-{k:03d}" for k in range(K)]
    assert (dm.image_size, dm.multilabel, dm.mean, dm.std) == (20, False, IMAGENET_MEAN, IMAGENET_STD)
    splits = dm.splits()
    for files, labels in splits.values():
        assert not any("clutter" in str(f) for f in files)
        assert sorted(set(labels)) in ([], list(range(K)))
        # the label is the class folder's position among the sorted object folders
        assert all(f.parent.name == f"{k + 1:03d}.object-{k:03d}" for f, k in zip(files, labels))
    assert len(dm.train_dataset) == 3 * K and len(dm.val_dataset) == 2 * K  # val_per_class=0: val is test
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"image", "target"}
        assert batch["image"].shape == (4, 3, 20, 20) and batch["image"].dtype == torch.float32
        assert batch["target"].dtype == torch.int64


def test_greyscale_images_come_out_rgb(root):
    dm = _module(root)
    dm.setup("test")
    grey = [i for i, f in enumerate(dm.test_dataset.files) if f.name.endswith("_0001.jpg")]
    assert grey, "the split should hold some of the greyscale first images"
    sample = dm.test_dataset[grey[0]]["image"]
    assert sample.shape == (3, 20, 20)
    rgb = sample * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    torch.testing.assert_close(rgb[0], rgb[1], atol=0.02, rtol=0)  # grey: equal channels


def test_per_class_split_is_seeded_disjoint_and_nested(root):
    a = _module(root, seed=1).splits()
    assert _names(a["train"][0]) == _names(_module(root, seed=1).splits()["train"][0])
    assert _names(a["train"][0]) != _names(_module(root, seed=2).splits()["train"][0])
    for k in range(K):
        per = {s: {f for f, y in zip(*a[s]) if y == k} for s in ("train", "test")}
        assert (len(per["train"]), len(per["test"])) == (3, 2) and not per["train"] & per["test"]
    # the test images are drawn first: the same for N=1 and N=3, and N=1's training images are among N=3's
    small = _module(root, seed=1, train_per_class=1).splits()
    assert _names(small["test"][0]) == _names(a["test"][0])
    assert set(small["train"][0]) <= set(a["train"][0])
    with_val = _module(root, seed=1, train_per_class=2, val_per_class=2)
    with_val.setup("fit")
    val, others = (
        set(with_val.splits()["val"][0]),
        with_val.splits()["train"][0] + with_val.splits()["test"][0],
    )
    assert len(val) == 2 * K and not val & set(others)
    assert set(with_val.val_dataset.files) == val


def test_root_may_name_any_level(root):
    expected = _names(_module(root).splits()["train"][0])
    for level in (root / "caltech256", root / "caltech256" / "256_ObjectCategories"):
        assert _names(_module(level).splits()["train"][0]) == expected


def test_too_few_images_names_the_classes(root):
    with pytest.raises(
        ValueError, match=r"5 Caltech-256 classes have fewer than .* = 7 images: 001\.object-000 \(6\)"
    ):
        _module(root, train_per_class=5).setup("fit")


def test_missing_folder_and_wrong_class_count(tmp_path, root):
    with pytest.raises(FileNotFoundError, match=r"no 256_ObjectCategories folder.*data\.download=true"):
        _module(tmp_path).setup("fit")
    with pytest.raises(ValueError, match=r"holds 5 class folders besides clutter but data\.num_classes=256"):
        _module(root, num_classes=256).setup("fit")
    empty = tmp_path / "empty" / "256_ObjectCategories"
    empty.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"holds no class folders"):
        _module(empty).setup("fit")


def test_without_a_clutter_folder_every_folder_is_a_class(tmp_path, root):
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "caltech256" / "256_ObjectCategories" / f"{K + 1:03d}.clutter")
    assert _module(copy).num_classes == K


def test_bad_arguments():
    with pytest.raises(ValueError, match="resize"):
        Caltech256DataModule("x", image_size=299, resize=256)
    with pytest.raises(ValueError, match="train_per_class"):
        Caltech256DataModule("x", train_per_class=0)
    with pytest.raises(ValueError, match=r"data\.root"):
        Caltech256DataModule(None)


def test_config_composes_and_instantiates(root):
    cfg = compose_train(["data=caltech256", f"data.root={root}", f"data.num_classes={K}"], tiny=False)
    assert (cfg.data.batch_size, cfg.data.image_size, cfg.data.train_per_class, cfg.data.test_per_class) == (
        16,
        299,
        60,
        25,
    )
    assert cfg.model.num_classes == K
    dm = instantiate(cfg.data, train_per_class=3, test_per_class=2)
    assert isinstance(dm, Caltech256DataModule) and dm.num_classes == K
