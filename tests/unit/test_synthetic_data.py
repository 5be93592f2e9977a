"""Tests of the embedded synthetic dataset (icasc.data.synthetic)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import RandomSampler

from icasc.data import SyntheticDataModule, SyntheticShapes
from icasc.data.synthetic import MEAN, STD, RandomHorizontalFlip, class_parts, hflip_sample

S = 64


@pytest.fixture(scope="module")
def ds() -> SyntheticShapes:
    return SyntheticShapes(200, seed=3)


@pytest.fixture(scope="module")
def plain() -> SyntheticShapes:
    """No clutter, no distractors: everything outside the object is the flat background colour."""
    return SyntheticShapes(100, clutter=0.0, distractors=0, seed=5)


@pytest.fixture(scope="module")
def multi() -> SyntheticShapes:
    return SyntheticShapes(300, multilabel=True, max_objects=3, seed=1)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = mask.nonzero(as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_gives_identical_tensors_in_any_access_order(ds: SyntheticShapes) -> None:
    again = SyntheticShapes(200, seed=3)
    for i in reversed(range(len(ds))):
        assert _same(ds[i], again[i])
    assert torch.equal(ds.targets, again.targets)


def test_sample_depends_only_on_seed_split_and_index(ds: SyntheticShapes) -> None:
    # A shorter dataset generates the same samples for the indices it shares.
    short = SyntheticShapes(17, seed=3)
    for i in (16, 0, 9):
        assert _same(short[i], ds[i])
        assert torch.equal(short.raw(i), ds.raw(i))


def test_different_seed_or_split_gives_different_data(ds: SyntheticShapes) -> None:
    other_seed = SyntheticShapes(20, seed=4)
    other_split = SyntheticShapes(20, seed=3, split="val")
    for other in (other_seed, other_split):
        n_diff = sum(not torch.equal(ds[i]["image"], other[i]["image"]) for i in range(20))
        assert n_diff == 20
        assert not torch.equal(ds.boxes[:20], other.boxes)


# --------------------------------------------------------------------------- sample format


def test_sample_format(ds: SyntheticShapes) -> None:
    sample = ds[7]
    assert set(sample) == {"image", "target", "box"}
    assert sample["image"].shape == (3, S, S) and sample["image"].dtype == torch.float32
    assert sample["target"].shape == () and sample["target"].dtype == torch.int64
    assert sample["box"].shape == (4,) and sample["box"].dtype == torch.float32
    assert all(0 <= int(ds[i]["target"]) < 10 for i in range(len(ds)))
    # Normalised with the published constants, and the raw image is in [0, 1].
    raw = ds.raw(7)
    assert raw.min() >= 0 and raw.max() <= 1
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(sample["image"] * std + mean, raw)
    assert ds.mean == MEAN and ds.std == STD and len(ds.mean) == len(ds.std) == 3


def test_normalisation_constants_roughly_standardise(ds: SyntheticShapes) -> None:
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    per_channel = images.transpose(0, 1).reshape(3, -1)
    assert per_channel.mean(1).abs().max() < 0.15
    assert ((per_channel.std(1) - 1).abs() < 0.15).all()


def test_other_image_size() -> None:
    small = SyntheticShapes(8, image_size=32, seed=2)
    assert small[0]["image"].shape == (3, 32, 32)
    assert (small.boxes >= 0).all() and (small.boxes <= 32).all()


# --------------------------------------------------------------------------- boxes


def test_boxes_are_tight_around_object_mask(ds: SyntheticShapes) -> None:
    for i in range(len(ds)):
        box = ds[i]["box"]
        mask = ds.object_mask(i)
        assert box.tolist() == _mask_box(mask)
        x0, y0, x1, y1 = box.tolist()
        assert 0 <= x0 < x1 <= S and 0 <= y0 < y1 <= S
        # Object side between ~30% and ~55% of the image (up to pixel rounding).
        assert 0.28 * S <= x1 - x0 <= 0.57 * S and 0.28 * S <= y1 - y0 <= 0.57 * S


def test_boxes_against_plain_background(plain: SyntheticShapes) -> None:
    # Independent of object_mask: outside the box only the flat background remains, and each box edge
    # touches a non-background pixel.
    for i in range(len(plain)):
        img = plain.raw(i)
        x0, y0, x1, y1 = (int(v) for v in plain[i]["box"])
        background = img[:, 0, 0]
        differs = (img != background[:, None, None]).any(0)
        inside = torch.zeros(S, S, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert not differs[~inside].any()
        assert differs[y0, x0:x1].any() and differs[y1 - 1, x0:x1].any()
        assert differs[y0:y1, x0].any() and differs[y0:y1, x1 - 1].any()


def test_distractors_are_present_and_do_not_occlude_the_object() -> None:
    data = SyntheticShapes(40, clutter=0.0, distractors=2, seed=8)
    with_distractor = 0
    for i in range(len(data)):
        img, mask = data.raw(i), data.object_mask(i)
        differs = (img != img[:, 0, 0, None, None]).any(0)
        with_distractor += bool((differs & ~mask).any())
        assert data[i]["box"].tolist() == _mask_box(mask)
    assert with_distractor >= 38


# --------------------------------------------------------------------------- flips


def test_hflip_sample_flips_box_consistently(ds: SyntheticShapes) -> None:
    for i in range(10):
        flipped = hflip_sample(ds[i])
        assert torch.equal(flipped["image"], ds[i]["image"].flip(-1))
        assert torch.equal(flipped["target"], ds[i]["target"])
        assert flipped["box"].tolist() == _mask_box(ds.object_mask(i).flip(-1))


def test_augmented_training_samples_have_flipped_boxes() -> None:
    dm = SyntheticDataModule(train_size=64, val_size=8, test_size=8, seed=2, augment=True)
    dm.setup("fit")
    assert isinstance(dm.train_dataset, RandomHorizontalFlip)
    base = dm.train_dataset.dataset
    torch.manual_seed(0)
    n_flipped = 0
    for i in range(len(base)):
        sample, orig = dm.train_dataset[i], base[i]
        if torch.equal(sample["image"], orig["image"]):
            assert torch.equal(sample["box"], orig["box"])
        else:
            assert torch.equal(sample["image"], orig["image"].flip(-1))
            assert sample["box"].tolist() == _mask_box(base.object_mask(i).flip(-1))
            n_flipped += 1
    assert 10 <= n_flipped <= 54
    # Validation samples are never flipped.
    assert _same(dm.val_dataset[3], SyntheticShapes(8, seed=2, split="val")[3])


def test_no_augmentation_when_disabled() -> None:
    dm = SyntheticDataModule(train_size=8, val_size=8, test_size=8, augment=False)
    dm.setup("fit")
    assert isinstance(dm.train_dataset, SyntheticShapes)


# --------------------------------------------------------------------------- multi-label


def test_multilabel_targets_are_multi_hot(multi: SyntheticShapes) -> None:
    counts = []
    for i in range(len(multi)):
        sample = multi[i]
        assert "box" not in sample
        target = sample["target"]
        assert target.dtype == torch.float32 and target.shape == (10,)
        assert set(target.unique().tolist()) <= {0.0, 1.0}
        counts.append(int(target.sum()))
        assert multi.object_mask(i).any()
    assert min(counts) == 1 and max(counts) == 3
    assert set(counts) == {1, 2, 3}


def test_multilabel_single_object() -> None:
    data = SyntheticShapes(20, multilabel=True, max_objects=1)
    assert (data.targets.sum(1) == 1).all()


# --------------------------------------------------------------------------- classes


def test_class_balance() -> None:
    single = SyntheticShapes(500, clutter=0.0, distractors=0)
    assert single.targets.bincount(minlength=10).tolist() == [50] * 10


def test_multilabel_class_balance(multi: SyntheticShapes) -> None:
    positives = multi.targets.sum(0)
    assert (positives > 0.6 * positives.mean()).all() and (positives < 1.4 * positives.mean()).all()


@pytest.mark.parametrize("k", range(2, 37))
def test_class_mapping_shares_parts(k: int) -> None:
    parts = class_parts(k)
    assert len(set(parts)) == k
    for i, (shape, texture) in enumerate(parts):
        assert any(j != i and (s == shape or t == texture) for j, (s, t) in enumerate(parts))


def test_default_mapping_is_5_shapes_by_2_textures(ds: SyntheticShapes) -> None:
    assert ds.class_names[0] == "disc/stripes_h"
    assert len({name.split("/")[0] for name in ds.class_names}) == 5
    assert len({name.split("/")[1] for name in ds.class_names}) == 2
    assert len(set(ds.class_names)) == 10


def test_colour_histograms_do_not_predict_the_class() -> None:
    # A ridge-regression linear probe on per-channel 8-bin colour histograms stays near chance (0.10).
    train = SyntheticShapes(1000, seed=11)
    val = SyntheticShapes(400, seed=11, split="val")

    def features(data: SyntheticShapes) -> torch.Tensor:
        n = len(data)
        images = torch.stack([data.raw(i) for i in range(n)])
        bins = (
            (images * 7.999).long()
            + 8 * torch.arange(3).view(1, 3, 1, 1)
            + 24 * torch.arange(n).view(-1, 1, 1, 1)
        )
        hist = bins.flatten().bincount(minlength=24 * n).view(n, 24).double() / (S * S)
        return torch.cat([hist, torch.ones(n, 1, dtype=torch.float64)], dim=1)

    x_train, x_val = features(train), features(val)
    y_train = torch.nn.functional.one_hot(train.targets, 10).double()
    weights = torch.linalg.solve(
        x_train.T @ x_train + 1e-3 * torch.eye(25, dtype=torch.float64), x_train.T @ y_train
    )
    train_accuracy = ((x_train @ weights).argmax(1) == train.targets).double().mean().item()
    accuracy = ((x_val @ weights).argmax(1) == val.targets).double().mean().item()
    assert accuracy < 0.25, (accuracy, train_accuracy)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_classes": 37}, r"num_classes must be in \[2, 36\], got 37"),
        ({"num_classes": 1}, r"num_classes must be in \[2, 36\], got 1"),
        ({"image_size": 16}, r"image_size must be in >= 32, got 16"),
        ({"clutter": 1.5}, r"clutter must be in \[0, 1\], got 1.5"),
        ({"clutter": -0.1}, r"clutter must be in \[0, 1\], got -0.1"),
        ({"num_samples": 0}, r"num_samples must be in >= 1, got 0"),
        ({"distractors": -1}, r"distractors must be in >= 0, got -1"),
        ({"num_classes": 4, "max_objects": 5}, r"max_objects must be in \[1, 4\], got 5"),
        ({"split": "dev"}, r"split must be one of .*'dev'"),
    ],
)
def test_dataset_rejects_bad_arguments(kwargs: dict, fragment: str) -> None:
    args = {"num_samples": 4, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        SyntheticShapes(**args)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"train_size": 0}, r"train_size must be in >= 1, got 0"),
        ({"val_size": -5}, r"val_size must be in >= 1, got -5"),
        ({"test_size": 0}, r"test_size must be in >= 1, got 0"),
        ({"batch_size": 0}, r"batch_size must be in >= 1, got 0"),
        ({"num_classes": 40}, r"num_classes must be in \[2, 36\], got 40"),
        ({"clutter": 2.0}, r"clutter must be in \[0, 1\], got 2.0"),
        ({"max_objects": 11}, r"max_objects must be in \[1, 10\], got 11"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        SyntheticDataModule(**kwargs)


def test_index_out_of_range(ds: SyntheticShapes) -> None:
    with pytest.raises(IndexError):
        ds[len(ds)]


# --------------------------------------------------------------------------- data module


def test_datamodule_loaders() -> None:
    dm = SyntheticDataModule(train_size=40, val_size=20, test_size=12, batch_size=8, seed=4)
    assert dm.num_classes == 10 and not dm.multilabel and dm.image_size == S
    assert dm.mean == MEAN and dm.std == STD and dm.class_names[0] == "disc/stripes_h"
    assert dm.hparams.batch_size == 8
    dm.setup("fit")
    train, val = dm.train_dataset, dm.val_dataset
    dm.setup("fit")  # idempotent: nothing is regenerated
    assert dm.train_dataset is train and dm.val_dataset is val
    dm.setup("test")
    assert isinstance(dm.train_dataloader().sampler, RandomSampler)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"image", "target", "box"}
        assert batch["image"].shape == (8, 3, S, S) and batch["image"].dtype == torch.float32
        assert batch["target"].shape == (8,) and batch["target"].dtype == torch.int64
        assert batch["box"].shape == (8, 4) and batch["box"].dtype == torch.float32
    # val/test are in order, and the three splits hold different samples.
    first = next(iter(dm.val_dataloader()))
    assert torch.equal(first["image"][2], dm.val_dataset[2]["image"])
    assert not torch.equal(dm.val_dataset[0]["image"], dm.test_dataset[0]["image"])
    assert not torch.equal(dm.val_dataset[0]["image"], dm.train_dataset.dataset[0]["image"])


def test_datamodule_multilabel_batches_and_workers() -> None:
    dm = SyntheticDataModule(
        train_size=16, val_size=16, test_size=16, batch_size=4, multilabel=True, num_workers=1
    )
    dm.setup(None)
    loader = dm.val_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1
    torch.manual_seed(0)
    flips = [hflip_sample(dm.train_dataset.dataset[i]) for i in range(4)]  # flipping works without a box
    assert all(set(sample) == {"image", "target"} for sample in flips)
    assert all(set(dm.train_dataset[i]) == {"image", "target"} for i in range(4))
    dm_single = SyntheticDataModule(train_size=16, val_size=16, test_size=16, batch_size=4, multilabel=True)
    dm_single.setup("validate")
    batch = next(iter(dm_single.val_dataloader()))
    assert set(batch) == {"image", "target"}
    assert batch["target"].shape == (4, 10) and batch["target"].dtype == torch.float32
    assert dm_single.train_dataset is None  # only the validation split was built


def test_loader_before_setup_raises() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        SyntheticDataModule(train_size=4, val_size=4, test_size=4).train_dataloader()
