"""ImageNetDataModule on a tiny fake ImageFolder tree written as real JPEG files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from icasc.data import ImageNetDataModule
from icasc.data.imagenet import eval_transform
from icasc.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import compose_train

WNIDS = ["n01440764", "n01443537", "n01484850"]
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def write_fake_imagenet(root: Path, train_per_class: int = 4, val_per_class: int = 2) -> Path:
    """``root/{train,val}/<wnid>/*.JPEG``: 3 classes of 32x32 (and one 40x32) single-colour JPEGs."""
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for wnid, colour in zip(WNIDS, COLOURS):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                size = (40, 32) if i == 0 else (32, 32)
                Image.new("RGB", size, colour).save(folder / f"{wnid}_{i}.JPEG", quality=95)
    return root


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    return write_fake_imagenet(tmp_path / "imagenet")


def _module(root: Path, **kwargs: object) -> ImageNetDataModule:
    options = {"batch_size": 4, "num_workers": 0, "image_size": 24, "resize": 28, "pin_memory": False}
    return ImageNetDataModule(root, **{**options, **kwargs})


def test_batches_are_dicts_of_the_configured_size(fake_root):
    dm = _module(fake_root, num_classes=3)
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.class_names == WNIDS and dm.multilabel is False
    assert dm.mean == IMAGENET_MEAN and dm.std == IMAGENET_STD and dm.image_size == 24
    for loader, n in ((dm.train_dataloader(), 12), (dm.val_dataloader(), 6)):
        seen = 0
        for batch in loader:
            assert set(batch) == {"image", "target"}
            assert batch["image"].shape[1:] == (3, 24, 24) and batch["image"].dtype == torch.float32
            assert batch["target"].dtype == torch.int64
            assert int(batch["target"].min()) >= 0 and int(batch["target"].max()) < 3
            seen += batch["image"].shape[0]
        assert seen == n


def test_labels_follow_the_sorted_class_folders(fake_root):
    dm = _module(fake_root)
    dm.setup("validate")
    dataset = dm.val_dataloader().dataset
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for i in range(len(dataset)):
        sample = dataset[i]
        label = int(sample["target"])
        # single-colour images: the normalised pixels give the class's colour back (JPEG: within a few levels)
        rgb = (sample["image"] * std + mean).mean(dim=(1, 2)) * 255
        torch.testing.assert_close(rgb, torch.tensor(COLOURS[label], dtype=torch.float32), atol=6.0, rtol=0)


def test_eval_transform_resizes_the_shorter_side_then_centre_crops():
    # left third red, the rest blue: resize(28) gives 35x28 with red columns 0..11.7, and the centre crop of
    # 24 starts at column 5.5, so about 6 red columns remain (a crop without the resize would keep 2)
    image = Image.new("RGB", (60, 48), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 48))
    out = eval_transform(24, 28, mean=(0, 0, 0), std=(1, 1, 1))(image)
    assert out.shape == (3, 24, 24)
    assert int((out[0, 12] > 0.5).sum()) == 6
    assert out[0, 12, 23] < 0.1 and out[2, 12, 23] > 0.9  # blue at the right edge


def test_subsets_are_seeded_random_draws(fake_root):
    dm = _module(fake_root, train_subset=5, val_subset=4, seed=1)
    dm.setup("fit")
    assert len(dm.train_dataloader().dataset) == 5 and len(dm.val_dataloader().dataset) == 4
    again = _module(fake_root, train_subset=5, val_subset=4, seed=1)
    again.setup("fit")
    assert dm.val_dataset.dataset.indices == again.val_dataset.dataset.indices
    other = _module(fake_root, train_subset=5, val_subset=4, seed=2)
    other.setup("fit")
    assert dm.train_dataset.dataset.indices != other.train_dataset.dataset.indices


def test_missing_root_or_split_says_what_is_expected_where(tmp_path, fake_root):
    with pytest.raises(FileNotFoundError, match=r"root/train/<wnid>/\*\.JPEG.*cannot\s+download"):
        _module(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"data\.root"):
        _module(None)
    shutil.rmtree(fake_root / "val")
    dm = _module(fake_root)
    with pytest.raises(FileNotFoundError, match=r"imagenet/val is missing.*root/val/<wnid>"):
        dm.setup("fit")


def test_class_folders_must_agree(fake_root):
    (fake_root / "train" / "n99999999").mkdir()
    Image.new("RGB", (32, 32)).save(fake_root / "train" / "n99999999" / "x.JPEG")
    with pytest.raises(ValueError, match=r"different classes.*only in train: \['n99999999'\]"):
        _module(fake_root).setup("fit")
    dm = _module(fake_root, num_classes=1000)
    with pytest.raises(ValueError, match=r"holds 3 class folders but data.num_classes=1000.*num_classes=3"):
        dm.setup("validate")


def test_bad_arguments(fake_root):
    with pytest.raises(ValueError, match="resize"):
        _module(fake_root, resize=16)
    with pytest.raises(ValueError, match="single-label"):
        _module(fake_root, multilabel=True)
    with pytest.raises(ValueError, match="train_subset"):
        _module(fake_root, train_subset=0)
    with pytest.raises(ValueError, match="batch_size"):
        _module(fake_root, batch_size=0)


def test_config_composes_and_instantiates(fake_root):
    cfg = compose_train(["data=imagenet", f"data.root={fake_root}", "data.num_classes=3"], tiny=False)
    assert cfg.data.image_size == 224 and cfg.data.resize == 256 and cfg.data.batch_size == 256
    assert cfg.model.num_classes == 3
    dm = instantiate(cfg.data)
    assert isinstance(dm, ImageNetDataModule) and dm.num_classes == 3
