"""VOC2012DataModule on a tiny fake VOCdevkit tree: real XML annotations, image-set lists and JPEG files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from icasc.data import VOC_CLASSES, VOC2012DataModule
from tests.conftest import compose_train
from tests.fakedata import VOC_CLASSES as DEVKIT_ORDER
from tests.fakedata import voc_fake_objects, write_fake_voc2012

SIZE, TRAIN, VAL = 40, 4, 3  # fake images are 60 x 40


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_voc2012(tmp_path_factory.mktemp("voc"), num_train=TRAIN, num_val=VAL, size=SIZE)


def _module(root: Path, **kwargs: object) -> VOC2012DataModule:
    options = {"batch_size": 2, "num_workers": 0, "pin_memory": False, "image_size": 32, "resize": 32}
    return VOC2012DataModule(root, **{**options, **kwargs})


def _expected_target(index: int, include_difficult: bool) -> torch.Tensor:
    target = torch.zeros(20)
    for name, _, difficult in voc_fake_objects(index, SIZE):
        if include_difficult or not difficult:
            target[DEVKIT_ORDER.index(name)] = 1.0
    return target


def test_classes_splits_and_batches(root):
    dm = _module(root)
    dm.setup("fit")
    assert list(VOC_CLASSES) == list(DEVKIT_ORDER) and dm.class_names == list(DEVKIT_ORDER)
    assert (dm.num_classes, dm.multilabel, dm.image_size) == (20, True, 32)
    assert len(dm.train_dataset) == TRAIN and len(dm.val_dataset) == VAL
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "target", "boxes", "box_labels"}
    assert batch["image"].shape == (2, 3, 32, 32) and batch["target"].shape == (2, 20)
    assert batch["target"].dtype == torch.float32 and set(batch["target"].unique().tolist()) <= {0.0, 1.0}
    assert batch["boxes"].shape == (2, 64, 4) and batch["box_labels"].shape == (2, 64)
    assert batch["box_labels"].dtype == torch.int64
    dm.setup("test")
    assert (
        dm.test_dataset is dm.val_dataset
    )  # VOC 2012 test labels are not public: the paper evaluates on val


@pytest.mark.parametrize("include_difficult", [False, True])
def test_targets_count_difficult_objects_only_when_asked(root, include_difficult):
    dm = _module(root, include_difficult=include_difficult)
    dm.setup("fit")
    for i in range(TRAIN):
        torch.testing.assert_close(dm.train_dataset[i]["target"], _expected_target(i, include_difficult))
    for i in range(VAL):
        torch.testing.assert_close(
            dm.val_dataset[i]["target"], _expected_target(TRAIN + i, include_difficult)
        )
    cat = DEVKIT_ORDER.index("cat")
    assert float(dm.train_dataset[0]["target"][cat]) == float(include_difficult)  # image 0: a difficult cat


def test_boxes_follow_the_resize_and_are_padded(root):
    dm = _module(root, image_size=32, resize=32)
    dm.setup("validate")
    for i in range(VAL):
        sample = dm.val_dataset[i]
        kept = [(n, b) for n, b, d in voc_fake_objects(TRAIN + i, SIZE) if not d]
        n = len(kept)
        labels = [DEVKIT_ORDER.index(name) for name, _ in kept]
        assert sample["box_labels"][:n].tolist() == labels and (sample["box_labels"][n:] == -1).all()
        sx, sy = 32 / (SIZE + 20), 32 / SIZE
        # VOC corners are 1-based and inclusive: the pixel-edge box is (xmin - 1, ymin - 1, xmax, ymax)
        expected = torch.tensor(
            [[(x0 - 1) * sx, (y0 - 1) * sy, x1 * sx, y1 * sy] for _, (x0, y0, x1, y1) in kept]
        )
        torch.testing.assert_close(sample["boxes"][:n], expected, atol=1e-4, rtol=0)
        assert (sample["boxes"][n:] == 0).all()
    with_difficult = _module(root, include_difficult=True)
    with_difficult.setup("validate")
    assert int((with_difficult.val_dataset[1]["box_labels"] >= 0).sum()) == 3  # image 5: a difficult person


def test_training_flips_move_the_boxes(root):
    dm = _module(root)
    dm.setup("fit")
    torch.manual_seed(0)
    lefts = {round(float(dm.train_dataset[1]["boxes"][0, 0]), 3) for _ in range(10)}
    person = voc_fake_objects(1, SIZE)[0][1]
    sx = 32 / (SIZE + 20)
    assert lefts == {round((person[0] - 1) * sx, 3), round(32 - person[2] * sx, 3)}


def test_too_many_objects_for_max_boxes(root):
    with pytest.raises(ValueError, match=r"2012_000000\.xml holds 3 objects but data\.max_boxes=2"):
        _module(root, max_boxes=2, include_difficult=True).setup("fit")


def test_root_may_name_vocdevkit_or_voc2012(root):
    for level in (root / "VOCdevkit", root / "VOCdevkit" / "VOC2012"):
        assert _module(level).root == root


def test_missing_or_malformed_data(tmp_path, root):
    with pytest.raises(FileNotFoundError, match=r"no VOCdevkit/VOC2012 under .*data\.download=true"):
        _module(tmp_path).setup("fit")
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/val\.txt is missing"):
        _module(copy).setup("validate")
    xml = copy / "VOCdevkit" / "VOC2012" / "Annotations" / "2012_000000.xml"
    xml.write_text(xml.read_text().replace("<name>person</name>", "<name>persn</name>"))
    with pytest.raises(
        ValueError, match=r"2012_000000\.xml: unknown VOC class 'persn'; expected one of aeroplane"
    ):
        _module(copy).setup("fit")
    xml.write_text("<annotation><object>")
    with pytest.raises(ValueError, match=r"is not a VOC annotation XML file"):
        _module(copy).setup("fit")


def test_bad_arguments(root):
    with pytest.raises(ValueError, match=r"multi-label: set data\.multilabel=true"):
        _module(root, multilabel=False)
    with pytest.raises(ValueError, match=r"20 classes: set data\.num_classes=20"):
        _module(root, num_classes=21)
    with pytest.raises(ValueError, match=r"train_set must be one of 'train', 'val', 'trainval'; got 'test'"):
        _module(root, train_set="test")
    with pytest.raises(ValueError, match="max_boxes"):
        _module(root, max_boxes=0)


def test_config_composes_and_instantiates(root):
    cfg = compose_train(["data=voc2012", f"data.root={root}"], tiny=False)
    assert (cfg.data.batch_size, cfg.data.image_size, cfg.data.max_boxes) == (16, 299, 64)
    assert cfg.data.multilabel is True and cfg.model.loss.multilabel is True and cfg.model.num_classes == 20
    assert cfg.optimized_metric == "val/map"
    dm = instantiate(cfg.data)
    assert isinstance(dm, VOC2012DataModule) and dm.multilabel
