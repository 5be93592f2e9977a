"""CIFAR100DataModule on tiny fake pickles written in the official python format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from icasc.data import CIFAR100DataModule
from tests.conftest import compose_train
from tests.fakedata import write_fake_cifar100

C = 5  # classes of the fake copy


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_cifar100(
        tmp_path_factory.mktemp("cifar"), train_per_class=4, test_per_class=2, num_classes=C
    )


def _raw(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 3, 32, 32] in [0, 1] and labels, read independently of the module (bytes keys)."""
    with open(root / "cifar-100-python" / split, "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    return entry[b"data"].reshape(-1, 3, 32, 32).astype(np.float64) / 255.0, np.array(entry[b"fine_labels"])


def _module(root: Path, **kwargs: object) -> CIFAR100DataModule:
    options = {"batch_size": 4, "num_workers": 0, "pin_memory": False, "num_classes": C}
    return CIFAR100DataModule(root, **{**options, **kwargs})


def test_the_fake_pickles_have_the_official_keys(root):
    with open(root / "cifar-100-python" / "train", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"} <= set(entry)
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (4 * C, 3072)
    with open(root / "cifar-100-python" / "meta", "rb") as f:
        assert len(pickle.load(f, encoding="bytes")[b"fine_label_names"]) == C


def test_batches_splits_and_what_the_model_reads(root):
    dm = _module(root)
    dm.setup("fit")
    assert (dm.num_classes, dm.image_size, dm.multilabel) == (C, 32, False)
    assert dm.class_names == [f"class_{k:03d}" for k in range(C)]
    assert len(dm.train_dataset) == 4 * C and len(dm.val_dataset) == 2 * C  # val_split=0: val is the test set
    for loader, n in ((dm.train_dataloader(), 4 * C), (dm.val_dataloader(), 2 * C)):
        seen = 0
        for batch in loader:
            assert set(batch) == {"image", "target"}
            assert batch["image"].shape[1:] == (3, 32, 32) and batch["image"].dtype == torch.float32
            assert batch["target"].dtype == torch.int64
            assert int(batch["target"].min()) >= 0 and int(batch["target"].max()) < C
            seen += len(batch["target"])
        assert seen == n
    dm.setup("test")
    _, labels = _raw(root, "test")
    assert dm.test_dataset.targets.tolist() == labels.tolist()


def test_per_pixel_mean_of_the_training_images_is_subtracted(root):
    dm = _module(root)
    dm.setup("fit")
    train, _ = _raw(root, "train")
    test, _ = _raw(root, "test")
    mean = train.mean(axis=0)  # the [3, 32, 32] mean image, [0, 1] scale
    torch.testing.assert_close(dm.mean_image, torch.from_numpy(mean).float(), atol=1e-6, rtol=0)
    assert dm.std == (1.0, 1.0, 1.0)
    assert dm.mean == pytest.approx(tuple(mean.mean(axis=(1, 2))), abs=1e-6)
    for i in (0, 3):  # evaluation samples: exactly image - mean image
        torch.testing.assert_close(dm.val_dataset[i]["image"], torch.from_numpy(test[i] - mean).float())


def test_channel_normalisation_uses_the_training_mean_and_std(root):
    dm = _module(root, normalization="channel")
    dm.setup("validate")
    train, _ = _raw(root, "train")
    test, _ = _raw(root, "test")
    mean, std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3), ddof=1)
    assert dm.mean == pytest.approx(tuple(mean), abs=1e-6) and dm.std == pytest.approx(tuple(std), abs=1e-6)
    expected = (test[1] - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(dm.val_dataset[1]["image"], torch.from_numpy(expected).float())


def test_training_samples_are_zero_padded_random_crops_or_their_mirror(root):
    dm = _module(root)
    dm.setup("fit")
    train, _ = _raw(root, "train")
    normalised = torch.from_numpy(train[2] - train.mean(axis=0)).float()
    padded = F.pad(normalised, (4, 4, 4, 4))  # zeros after mean subtraction
    candidates = [
        view[:, y : y + 32, x : x + 32]
        for view in (padded, padded.flip(-1))
        for y in range(9)
        for x in range(9)
    ]
    torch.manual_seed(0)
    for _ in range(6):
        sample = dm.train_dataset[2]["image"]
        assert any(torch.allclose(sample, c, atol=1e-6) for c in candidates)


def test_held_out_validation_is_a_seeded_part_of_train(root):
    dm = _module(root, val_split=6, seed=3)
    dm.setup("fit")
    assert len(dm.train_dataset) == 4 * C - 6 and len(dm.val_dataset) == 6
    train, labels = _raw(root, "train")
    # the validation images are training images, not augmented, and the statistics skip them
    val_images = torch.stack([dm.val_dataset[i]["image"] for i in range(6)]) + dm.mean_image
    matches = [int(np.argmin(((train - v.numpy()[None]) ** 2).sum(axis=(1, 2, 3)))) for v in val_images]
    assert len(set(matches)) == 6
    assert dm.val_dataset.targets.tolist() == labels[matches].tolist()
    kept = np.setdiff1d(np.arange(len(train)), matches)
    torch.testing.assert_close(dm.mean_image, torch.from_numpy(train[kept].mean(axis=0)).float())
    again = _module(root, val_split=6, seed=3)
    again.setup("fit")
    assert torch.equal(again.val_dataset.images, dm.val_dataset.images)
    other = _module(root, val_split=6, seed=4)
    other.setup("fit")
    assert not torch.equal(other.val_dataset.images, dm.val_dataset.images)
    with pytest.raises(ValueError, match=r"val_split=20 must be smaller than the 20 training images"):
        _module(root, val_split=20).setup("fit")


def test_missing_files_say_what_is_expected_and_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/\{train,test,meta\}.*data\.download=true"):
        _module(tmp_path).setup("fit")
    write_fake_cifar100(tmp_path, 1, 1, num_classes=C)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing meta;"):
        _module(tmp_path).setup("fit")
    with pytest.raises(ValueError, match=r"data\.root"):
        _module("???")


def test_malformed_pickles_and_wrong_class_counts_are_reported(tmp_path):
    write_fake_cifar100(tmp_path, 1, 1, num_classes=C)
    with pytest.raises(ValueError, match=r"names 5 classes but data\.num_classes=100.*num_classes=5"):
        _module(tmp_path, num_classes=100).setup("fit")
    (tmp_path / "cifar-100-python" / "train").write_bytes(pickle.dumps({"images": [1, 2]}))
    with pytest.raises(ValueError, match=r"is not a CIFAR-100 python pickle"):
        _module(tmp_path).setup("fit")


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"normalization must be one of 'pixel_mean', 'channel'"):
        CIFAR100DataModule("x", normalization="zca")
    with pytest.raises(ValueError, match="single-label"):
        CIFAR100DataModule("x", multilabel=True)
    with pytest.raises(ValueError, match="val_split"):
        CIFAR100DataModule("x", val_split=-1)


def test_config_composes_and_instantiates(root):
    cfg = compose_train(["data=cifar100", f"data.root={root}", f"data.num_classes={C}"], tiny=False)
    assert cfg.data.batch_size == 128 and cfg.data.normalization == "pixel_mean" and cfg.data.val_split == 0
    assert cfg.model.num_classes == C and cfg.data.multilabel is False
    dm = instantiate(cfg.data)
    assert isinstance(dm, CIFAR100DataModule) and dm.num_classes == C
