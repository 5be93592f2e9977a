"""Fashion-MNIST on tiny fake IDX files (both layouts, plain and .gz), the IDX reader, the clutter wrapper."""

from __future__ import annotations

import gzip
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.data import DataLoader
from torchvision.datasets import FashionMNIST

from icasc.data import ClutteredDataset, FashionMNISTDataModule
from icasc.data.canvas import content_boxes, nonzero_box, resize_matrix, scale_image
from icasc.data.clutter import CentredDataset, Layout
from icasc.data.fashion_mnist import CLASS_NAMES, FILES, find_files
from icasc.data.idx import read_idx
from tests.conftest import compose_train
from tests.fakedata import FASHION_MNIST_FILES, fake_fashion_mnist, write_fake_fashion_mnist, write_idx

ARRAYS = fake_fashion_mnist()
TRAIN_IMAGES, TRAIN_LABELS = ARRAYS["train-images-idx3-ubyte"], ARRAYS["train-labels-idx1-ubyte"]
TEST_IMAGES, TEST_LABELS = ARRAYS["t10k-images-idx3-ubyte"], ARRAYS["t10k-labels-idx1-ubyte"]
SIZES = {"train_size": 16, "val_size": 8, "test_size": 8}  # the fake copy holds 40 training, 20 test images


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def _module(root: Path, **kwargs: object) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(root, **{**SIZES, "batch_size": 4, **kwargs})


def _source(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random grey blobs of 3 classes: images [n, 28, 28] uint8 with black margins, labels [n]."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 5:23, 7:21] = rng.integers(1, 256, size=(n, 18, 14))
    return images, np.arange(n) % 3


# ----------------------------------------------------------------------------------------------- IDX files


def test_the_library_expects_the_official_file_names():
    assert FILES == FASHION_MNIST_FILES
    assert CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot" and len(CLASS_NAMES) == 10


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_exactly(tmp_path, suffix):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 7, 9), dtype=np.uint8)
    labels = np.array([3, 0, 9, 1, 1], dtype=np.uint8)
    got = read_idx(write_idx(tmp_path / f"images{suffix}", images), 3)
    assert got.dtype == np.uint8 and got.shape == (5, 7, 9) and np.array_equal(got, images)
    assert np.array_equal(read_idx(write_idx(tmp_path / f"labels{suffix}", labels), 1), labels)
    assert torch.from_numpy(got).sum() == int(images.astype(np.int64).sum())  # writable: no torch warning


def _corrupt(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "make", "words"),
    [
        ("short-images", lambda d: d[:-5], "truncated"),
        ("half-header", lambda d: d[:9], "truncated"),
        ("long-images", lambda d: d + b"\x00\x01", "2 bytes follow"),
        ("bad-magic", lambda d: b"\x01\x02" + d[2:], "magic number"),
        ("int32-images", lambda d: d[:2] + b"\x0c" + d[3:], "dtype code 0x0c"),
        ("2d-images", lambda d: d[:3] + b"\x02" + d[4:], "2 dimensions, expected 3"),
        ("tiny", lambda d: d[:2], "too short"),
    ],
)
def test_a_malformed_idx_file_is_refused_with_its_name(tmp_path, name, make, words):
    good = write_idx(tmp_path / "good", np.ones((2, 3, 3), dtype=np.uint8)).read_bytes()
    path = _corrupt(tmp_path, name, make(good))
    with pytest.raises(ValueError, match=words) as info:
        read_idx(path, 3)
    assert str(path) in str(info.value)


def test_a_truncated_gzip_file_is_refused_with_its_name(tmp_path):
    whole = gzip.compress(write_idx(tmp_path / "raw", np.ones((4, 28, 28), dtype=np.uint8)).read_bytes())
    path = _corrupt(tmp_path, "train-images-idx3-ubyte.gz", whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(path, 3)
    assert str(path) in str(info.value)


def test_a_truncated_file_under_root_fails_setup_naming_it(tmp_path):
    root = write_fake_fashion_mnist(tmp_path, compress=False)
    path = root / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated") as info:
        _module(root).setup("test")
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------- finding the files


@pytest.mark.parametrize(("layout", "compress"), [("flat", True), ("flat", False), ("torchvision", True)])
def test_both_layouts_plain_or_gz_are_found(tmp_path, layout, compress):
    root = write_fake_fashion_mnist(tmp_path, layout=layout, compress=compress)
    files = find_files(root)
    folder = root if layout == "flat" else root / "FashionMNIST" / "raw"
    assert files == {name: folder / (name + (".gz" if compress else "")) for name in FASHION_MNIST_FILES}
    dm = _module(root, clutter=None, image_size=28, augment=False)
    dm.setup()
    assert len(dm.train_dataset) == 16 and len(dm.val_dataset) == 8 and len(dm.test_dataset) == 8


def test_the_plain_file_wins_over_the_gz_one_as_torchvision_keeps_both(tmp_path):
    write_fake_fashion_mnist(tmp_path, layout="torchvision", compress=True)
    write_fake_fashion_mnist(tmp_path, layout="torchvision", compress=False)
    assert all(path.suffix != ".gz" for path in find_files(tmp_path).values())


def _assert_explains(message: str, root: Path) -> None:
    for name in FASHION_MNIST_FILES:
        assert name in message
    assert str(root) in message and str(root / "FashionMNIST" / "raw") in message  # both places looked in
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data.root=/usr/share/datasets/fashion-mnist" in message and "data.download=true" in message


def test_a_missing_root_names_the_files_the_places_and_the_fixes(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        _module(root).setup("fit")
    _assert_explains(str(info.value), root)


def test_an_incomplete_root_names_what_each_layout_lacks(tmp_path):
    root = write_fake_fashion_mnist(tmp_path)
    (root / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete") as info:
        _module(root).setup("fit")
    message = str(info.value)
    _assert_explains(message, root)
    assert f"{root} lacks train-labels-idx1-ubyte;" in message and "raw lacks all four" in message


def test_an_unset_root_says_where_to_point_it():
    with pytest.raises(ValueError, match=r"data.root is not set") as info:
        FashionMNISTDataModule(None)
    assert "apt-get install dataset-fashion-mnist" in str(info.value) and "data.download=true" in str(
        info.value
    )


def test_download_false_never_touches_the_network(tmp_path, monkeypatch, root):
    def offline(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(FashionMNIST, "download", offline)
    dm = _module(root)
    dm.prepare_data()
    dm.setup()
    missing = _module(tmp_path / "empty")
    missing.prepare_data()
    with pytest.raises(FileNotFoundError):
        missing.setup("fit")


# ---------------------------------------------------------------------------------------- the data module


def test_batches_and_what_the_model_reads(root):
    dm = _module(root)
    dm.setup()
    assert (dm.num_classes, dm.multilabel, dm.image_size) == (10, False, 64)
    assert dm.class_names == list(CLASS_NAMES)
    assert len(set(dm.mean)) == 1 and len(set(dm.std)) == 1 and 0 < dm.mean[0] < 1 and dm.std[0] > 0
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"image", "target", "box"}
        assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
        assert torch.equal(batch["image"][:, 0], batch["image"][:, 2])  # one channel, repeated
        assert batch["target"].dtype == torch.int64 and batch["box"].dtype == torch.float32
        box = batch["box"]
        assert (box[:, :2] >= 0).all() and (box[:, 2:] <= 64).all() and (box[:, 2:] > box[:, :2]).all()
    # the normalisation is measured on the rendered training samples, deterministically
    images = torch.stack([dm.train_dataset.dataset.dataset[i]["image"] for i in range(16)]).double()
    assert dm.mean[0] == pytest.approx(float(images.mean())) and dm.std[0] == pytest.approx(
        float(images.std())
    )
    assert _module(root).mean == dm.mean


def _which(image: torch.Tensor, dm: FashionMNISTDataModule, pool: np.ndarray) -> int:
    """The index of the pool image a plain 28 px sample shows (the fake images are unique)."""
    raw = np.rint((image[0] * dm.std[0] + dm.mean[0]).numpy() * 255).astype(np.int64)
    hits = [i for i in range(len(pool)) if np.array_equal(pool[i], raw)]
    assert len(hits) == 1
    return hits[0]


def test_plain_samples_are_the_files_pixels_and_labels_in_disjoint_seeded_splits(root):
    dm = _module(root, clutter=None, image_size=28, augment=False)
    dm.setup()
    shown = {}
    for split, pool, labels in (("train", TRAIN_IMAGES, TRAIN_LABELS), ("val", TRAIN_IMAGES, TRAIN_LABELS)):
        dataset = getattr(dm, f"{split}_dataset")
        shown[split] = [_which(dataset[i]["image"], dm, pool) for i in range(len(dataset))]
        assert [int(dataset[i]["target"]) for i in range(len(dataset))] == [labels[j] for j in shown[split]]
    shown["test"] = [_which(s["image"], dm, TEST_IMAGES) for s in dm.test_dataset]
    assert [int(s["target"]) for s in dm.test_dataset] == [TEST_LABELS[j] for j in shown["test"]]
    assert not set(shown["train"]) & set(shown["val"])
    assert all(len(set(v)) == len(v) for v in shown.values())
    # the same seed draws the same splits; another seed others
    again = _module(root, clutter=None, image_size=28, augment=False)
    again.setup()
    assert [_which(s["image"], again, TRAIN_IMAGES) for s in again.val_dataset] == shown["val"]
    other = _module(root, clutter=None, image_size=28, augment=False, seed=1)
    other.setup()
    assert [_which(s["image"], other, TRAIN_IMAGES) for s in other.val_dataset] != shown["val"]


def test_plain_samples_are_centred_on_a_larger_canvas_with_their_box(root):
    dm = _module(root, clutter=None, image_size=64, augment=False)
    dm.setup("validate")
    sample = dm.val_dataset[0]
    x0, y0, x1, y1 = sample["box"].int().tolist()
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    lit = sample["image"][0] > sample["image"][0].min()
    assert lit[inside].all() and not lit[~inside].any()  # the fake garments are solid rectangles
    assert x0 >= 18 and x1 <= 18 + 28 and y0 >= 18 and y1 <= 18 + 28


def test_a_canvas_smaller_than_the_garment_scales_it_down(root):
    dm = _module(root, clutter=None, image_size=20, augment=False)
    dm.setup("validate")
    sample = dm.val_dataset[0]
    assert sample["image"].shape == (3, 20, 20) and (sample["box"][2:] <= 20).all()


def test_images_and_labels_that_disagree_are_named(tmp_path):
    root = write_fake_fashion_mnist(tmp_path)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", TEST_LABELS[:-1])
    with pytest.raises(ValueError, match="holds 20 images but") as info:
        _module(root).setup("test")
    assert str(root / "t10k-labels-idx1-ubyte.gz") in str(info.value)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", TEST_LABELS + 10)
    with pytest.raises(ValueError, match="holds label 19; Fashion-MNIST has 10 classes"):
        _module(root).setup("test")


def test_split_sizes_that_do_not_fit_are_named(root):
    with pytest.raises(ValueError, match=r"data.train_size=40 exceeds the 32 training images"):
        _module(root, train_size=40).setup("fit")
    with pytest.raises(ValueError, match=r"data.test_size=21 exceeds the 20 test images"):
        _module(root, test_size=21).setup("test")
    with pytest.raises(ValueError, match=r"data.val_size=40 must be smaller"):
        _module(root, val_size=40).setup("fit")
    dm = _module(root, train_size=None, test_size=None)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (32, 8, 20)


def test_augmentation_flips_the_box_with_the_image(root):
    dm = _module(root, augment=True)
    dm.setup("fit")
    plain = dm.train_dataset.dataset[3]
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        sample = dm.train_dataset[3]
        flipped = not torch.equal(sample["image"], plain["image"])
        if flipped:
            assert torch.equal(sample["image"], plain["image"].flip(-1))
            x0, y0, x1, y1 = plain["box"].tolist()
            assert sample["box"].tolist() == [64 - x1, y0, 64 - x0, y1]
        seen.add(flipped)
    assert seen == {True, False}


def test_the_config_composes_and_clutter_null_turns_it_off(root, tmp_path):
    cfg = compose_train(["data=fashion_mnist", f"data.root={root}"], tmp_path, tiny=False)
    assert cfg.data.clutter.distractors == 4 and cfg.model.num_classes == 10
    assert (cfg.data.train_size, cfg.data.val_size, cfg.data.test_size) == (5000, 1000, 2000)
    dm = instantiate(cfg.data, train_size=16, val_size=8, test_size=8)
    dm.setup("validate")
    assert isinstance(dm.val_dataset.dataset, ClutteredDataset)
    assert dm.val_dataset.dataset.object_range == (28, 44) and dm.val_dataset.dataset.fragment_range == (
        10,
        16,
    )
    cfg = compose_train(
        ["data=fashion_mnist", f"data.root={root}", "data.clutter=null"], tmp_path, tiny=False
    )
    dm = instantiate(cfg.data, train_size=16, val_size=8, test_size=8)
    dm.setup("validate")
    assert isinstance(dm.val_dataset.dataset, CentredDataset)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (
            {"image_size": 20},
            r"data.image_size=20 is smaller than the object \(data.clutter.object_size max 44",
        ),
        ({"clutter": {"distractors": -1}}, "data.clutter.distractors must be an int >= 0"),
        ({"clutter": {"fragment_size": [10, 30]}}, "data.clutter.fragment_size max 30 px is larger"),
        (
            {"clutter": {"object_size": [40, 30]}},
            "data.clutter.object_size=.*low 40 px is larger than high 30",
        ),
        ({"clutter": {"object_size": [0.5, 1.5]}}, "data.clutter.object_size=1.5 is a fraction"),
        ({"clutter": {"object_size": "big"}}, "data.clutter.object_size must hold ints"),
        ({"clutter": {"distractor": 3}}, "data.clutter has no option distractor"),
        ({"num_classes": 5}, "data.num_classes=10"),
        ({"multilabel": True}, "single-label"),
        ({"val_size": 0}, "data.val_size must be an int >= 1"),
    ],
)
def test_options_out_of_range_are_named_before_reading_files(tmp_path, options, words):
    with pytest.raises(ValueError, match=words):
        FashionMNISTDataModule(tmp_path / "not-read", **options)


# -------------------------------------------------------------------------------------------------- clutter


def test_cluttered_samples_are_deterministic_per_index():
    images, labels = _source()
    a = ClutteredDataset(images, labels, canvas_size=64, seed=3, split="train")
    b = ClutteredDataset(images, labels, canvas_size=64, seed=3, split="train")
    order = [7, 2, 7, 0]
    first = {i: a[i] for i in order}
    for i in reversed(order):  # another instance, another order: the same samples
        assert all(torch.equal(first[i][k], b[i][k]) for k in ("image", "target", "box"))
    assert not torch.equal(a[2]["image"], a[3]["image"])
    assert a[-1]["box"].tolist() == a[len(a) - 1]["box"].tolist()
    for other in (
        ClutteredDataset(images, labels, seed=4),
        ClutteredDataset(images, labels, seed=3, split="val"),
    ):
        assert not torch.equal(other[2]["image"], a[2]["image"])
    with pytest.raises(IndexError):
        a[len(a)]


def test_cluttered_samples_do_not_depend_on_dataloader_workers():
    images, labels = _source(n=12)
    dataset = ClutteredDataset(images, labels, canvas_size=48, object_size=(20, 28), seed=1)
    batch = next(iter(DataLoader(dataset, batch_size=12, num_workers=2)))
    assert torch.equal(batch["image"], torch.stack([dataset[i]["image"] for i in range(12)]))


def test_the_box_is_the_tight_box_of_the_object_drawn_last():
    images, labels = _source()
    dataset = ClutteredDataset(images, labels, canvas_size=64, distractors=6)
    for i in range(len(dataset)):
        sample, layout = dataset[i], dataset.layout(i)
        x0, y0, x1, y1 = box = sample["box"].int().tolist()
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        alone, alone_box = dataset.render(Layout(layout.object, ()))
        assert alone_box == tuple(box) and nonzero_box(alone[0] > 0) == tuple(box)
        mask = torch.from_numpy(alone[0] > 0)
        assert torch.equal(sample["image"][0][mask], torch.from_numpy(alone[0])[mask])  # nothing covers it
        assert int(sample["target"]) == labels[i] and layout.object.source == i


def test_distractors_come_from_other_classes_and_show():
    images, labels = _source()
    dataset = ClutteredDataset(images, labels, canvas_size=64, distractors=5, fragment_size=(12, 12))
    sources = [f.source for i in range(len(dataset)) for f in dataset.layout(i).fragments]
    assert len(sources) == 5 * len(dataset)
    for i in range(len(dataset)):
        layout = dataset.layout(i)
        assert all(labels[f.source] != labels[i] for f in layout.fragments)
        assert all(f.crop is not None and f.crop[2] == 12 for f in layout.fragments)
    assert len(set(sources)) > len(dataset) // 2  # drawn across the source, not a few favourites
    sample = dataset[0]
    x0, y0, x1, y1 = sample["box"].int().tolist()
    outside = sample["image"][0].clone()
    outside[y0:y1, x0:x1] = 0
    assert outside.count_nonzero() > 0


def test_a_float_colour_source_of_another_shape_works():
    rng = np.random.default_rng(0)
    images = rng.random((10, 3, 20, 30), dtype=np.float32)  # no black background: whole rectangles
    dataset = ClutteredDataset(
        torch.from_numpy(images), torch.arange(10) % 2, canvas_size=40, object_size=0.5
    )
    sample = dataset[1]
    assert sample["image"].shape == (3, 40, 40) and sample["image"].min() >= 0 and sample["image"].max() <= 1
    x0, y0, x1, y1 = sample["box"].tolist()
    assert (x1 - x0, y1 - y0) == (20, 13)  # longer side 0.5 x 40, aspect kept


def test_resize_matches_torch_antialiased_bilinear():
    image = np.random.default_rng(0).random((2, 28, 21), dtype=np.float32)
    for side in (12, 28, 44):
        h, w = scale_image(image, side).shape[-2:]
        expected = F.interpolate(torch.from_numpy(image)[None], size=(h, w), mode="bilinear", antialias=True)[
            0
        ]
        assert torch.allclose(torch.from_numpy(scale_image(image, side)), expected, atol=1e-5)
    crop = scale_image(image, 40, window=(3, 5, 10))
    assert np.allclose(crop, scale_image(image, 40)[:, 3:13, 5:15], atol=1e-6)
    assert (resize_matrix(28, 44) >= 0).all() and np.allclose(resize_matrix(28, 13).sum(axis=1), 1)


def test_content_boxes_are_the_tight_boxes_of_each_image():
    images, _ = _source(n=4)
    images[1] = 0  # an empty image: its whole frame
    images[2, :, :] = 0
    images[2, 3, 9] = 7
    expected = [nonzero_box(image > 0) for image in images]
    assert [tuple(b) for b in content_boxes(images[:, None]).tolist()] == expected
    assert expected[:3] == [(7, 5, 21, 23), (0, 0, 28, 28), (9, 3, 10, 4)]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"canvas_size": 20}, r"canvas_size=20 is smaller than the object \(object_size max 44 px\)"),
        ({"distractors": -2}, "distractors must be an int >= 0"),
        ({"fragment_size": (0, 5)}, "fragment_size must be >= 1 pixel"),
        ({"fragment_size": (10, 29)}, "fragment_size max 29 px is larger than the smallest object"),
        ({"object_size": (1, 2, 3)}, "object_size must be one size or a"),
        ({"split": "dev"}, "split must be one of"),
    ],
)
def test_clutter_options_out_of_range_are_named(options, words):
    images, labels = _source()
    with pytest.raises(ValueError, match=words):
        ClutteredDataset(images, labels, **options)


def test_a_single_class_source_cannot_give_distractors():
    images, _ = _source()
    with pytest.raises(ValueError, match=r"needs images of other classes.*set distractors=0"):
        ClutteredDataset(images, np.zeros(len(images), dtype=np.int64))
    assert len(ClutteredDataset(images, np.zeros(len(images), dtype=np.int64), distractors=0)[0]["box"]) == 4
