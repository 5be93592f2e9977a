"""ImageNetDataModule on a tiny fake ImageFolder tree written as real JPEG files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from icasc.data import ImageNetDataModule
from icasc.data.imagenet import eval_transform, ten_crop_transform
from icasc.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import compose_train
from tests.fakedata import class_colour, fake_wnids, write_fake_imagenet

WNIDS = fake_wnids(3)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    # 3 classes, 4 training and 2 validation images each; the first image of a class is 40 x 32
    return write_fake_imagenet(tmp_path / "imagenet", num_classes=3, per_class=4, val_per_class=2, size=32)


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
        torch.testing.assert_close(
            rgb, torch.tensor(class_colour(label), dtype=torch.float32), atol=6.0, rtol=0
        )


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
    assert cfg.data.ten_crop is False
    assert cfg.model.num_classes == 3
    dm = instantiate(cfg.data)
    assert isinstance(dm, ImageNetDataModule) and dm.num_classes == 3


def test_ten_crop_transform_is_the_four_corners_and_centre_of_the_image_and_its_mirror():
    # a gradient image, so that every crop differs; reference: torchvision's functional resize + ten_crop
    # (56 x 48 resizes to 32 x 28: even margins, so mirrored centre crops line up exactly)
    pixels = torch.arange(48 * 56 * 3, dtype=torch.float32).reshape(48, 56, 3) % 251
    image = Image.fromarray(pixels.to(torch.uint8).numpy())
    out = ten_crop_transform(24, 28, mean=(0, 0, 0), std=(1, 1, 1))(image)
    assert out.shape == (10, 3, 24, 24) and out.dtype == torch.float32
    resized = TF.resize(TF.pil_to_tensor(image), [28], antialias=True)
    expected = torch.stack(TF.ten_crop(resized, [24, 24])).float() / 255
    torch.testing.assert_close(out, expected)
    # the mirror's top-left crop is the original's top-right crop mirrored; its centre crop, the centre's
    torch.testing.assert_close(out[5], out[1].flip(-1))
    torch.testing.assert_close(out[9], out[4].flip(-1))
    assert not torch.equal(out[0], out[1])


def test_ten_crop_batches_are_b_10_3_h_w_for_val_and_test_only(fake_root):
    dm = _module(fake_root, ten_crop=True)
    dm.setup("fit")
    assert dm.ten_crop is True
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (4, 3, 24, 24)
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert batch["image"].shape == (4, 10, 3, 24, 24) and batch["target"].shape == (4,)
    # crop 4 is the centre crop: the same image as without ten-crop
    plain = _module(fake_root)
    plain.setup("validate")
    torch.testing.assert_close(dm.val_dataset[1]["image"][4], plain.val_dataset[1]["image"])
    with pytest.raises(ValueError, match="ten_crop must be true or false"):
        _module(fake_root, ten_crop="yes")
