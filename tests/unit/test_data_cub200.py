"""CUB200DataModule on a tiny fake CUB_200_2011 tree: the official text files and real JPEG files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from icasc.data import CUB200DataModule
from icasc.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import compose_train
from tests.fakedata import class_colour, write_fake_cub200

K, PER_CLASS = 3, 3  # the first image of each class is a test image: 3 test, 6 train
SIZE = 60  # fake images are 80 x 60


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_cub200(tmp_path_factory.mktemp("cub"), num_classes=K, per_class=PER_CLASS, size=SIZE)


def _module(root: Path, **kwargs: object) -> CUB200DataModule:
    options = {"batch_size": 3, "num_workers": 0, "pin_memory": False, "image_size": 48, "resize": 48}
    return CUB200DataModule(root, **{**options, "num_classes": K, **kwargs})


def _xywh(root: Path) -> dict[int, list[float]]:
    rows = (line.split() for line in (root / "bounding_boxes.txt").read_text().splitlines())
    return {int(r[0]): [float(v) for v in r[1:]] for r in rows}


def _rgb(image: torch.Tensor) -> torch.Tensor:
    return image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


def test_official_split_labels_and_batches(root):
    dm = _module(root)
    dm.setup("fit")
    assert dm.num_classes == K and dm.class_names[0] == "Black_footed_Albatross"
    assert (dm.image_size, dm.multilabel) == (48, False)
    assert len(dm.train_dataset) == K * (PER_CLASS - 1) and len(dm.val_dataset) == K  # val_split=0: test
    assert all(f.name.split("_")[-2] == "0001" for f in dm.val_dataset.files)  # is_training 0 in the files
    assert dm.train_dataset.targets.tolist() == [k for k in range(K) for _ in range(PER_CLASS - 1)]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "target", "box"}
    assert batch["image"].shape == (3, 3, 48, 48) and batch["box"].shape == (3, 4)
    assert batch["box"].dtype == torch.float32 and batch["target"].dtype == torch.int64
    dm.setup("test")
    assert dm.test_dataset.files == dm.val_dataset.files


def test_eval_box_lands_where_the_square_resize_and_centre_crop_put_it(root):
    xywh = _xywh(root)
    for resize, crop in ((48, 48), (56, 48)):
        dm = _module(root, image_size=crop, resize=resize)
        dm.setup("validate")
        offset = (resize - crop) / 2
        for i, image_id in enumerate((1, 4, 7)):  # the test images
            x, y, w, h = xywh[image_id]
            sx, sy = resize / (SIZE + 20), resize / SIZE
            expected = torch.tensor(
                [x * sx - offset, y * sy - offset, (x + w) * sx - offset, (y + h) * sy - offset]
            )
            sample = dm.val_dataset[i]
            torch.testing.assert_close(sample["box"], expected.clamp(0, crop), atol=1e-4, rtol=0)
            # the pixels agree: black inside the box, the class colour at the bottom-right corner
            rgb = _rgb(sample["image"])
            cx, cy = int(expected[0::2].mean()), int(expected[1::2].mean())
            assert float(rgb[:, cy, cx].max()) < 0.1
            colour = torch.tensor(class_colour(i), dtype=torch.float32) / 255
            torch.testing.assert_close(rgb[:, -2, -2], colour, atol=0.06, rtol=0)


def test_training_boxes_follow_random_crops_and_flips(root):
    dm = _module(root, image_size=40, resize=56)
    dm.setup("fit")
    torch.manual_seed(0)
    flipped = 0
    for _ in range(12):
        sample = dm.train_dataset[0]
        x0, y0, x1, y1 = sample["box"].tolist()
        assert 0 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 40
        rgb = _rgb(sample["image"])
        # the box's inside is the black object, and one pixel beyond its left and right edges is not
        assert float(rgb[:, int((y0 + y1) / 2), int((x0 + x1) / 2)].max()) < 0.1
        inside_left = rgb[:, int((y0 + y1) / 2), int(x0) + 1].max()
        assert float(inside_left) < 0.15
        if x0 >= 2:
            assert float(rgb[:, int((y0 + y1) / 2), int(x0) - 2].max()) > 0.3
        # the fake box (centre at 29% of the width) sits left of centre exactly when the image is not mirrored
        flipped += (x0 + x1) / 2 > 20
    assert 0 < flipped < 12


def test_held_out_validation_from_train(root):
    dm = _module(root, val_split=2, seed=5)
    dm.setup("fit")
    train, val = set(dm.train_dataset.files), set(dm.val_dataset.files)
    assert len(train) == K * (PER_CLASS - 1) - 2 and len(val) == 2 and not train & val
    assert all(f.name.split("_")[-2] != "0001" for f in val)  # drawn from the training images
    again = _module(root, val_split=2, seed=5)
    again.setup("validate")
    assert again.val_dataset.files == dm.val_dataset.files
    with pytest.raises(ValueError, match=r"val_split=6 must be smaller than the 6 training images"):
        _module(root, val_split=6).setup("fit")


def test_root_may_be_the_parent_of_cub_200_2011(root):
    assert _module(root.parent).root == root


def test_missing_files_list_what_and_where_to_download(tmp_path, root):
    with pytest.raises(
        FileNotFoundError, match=r"missing images\.txt.*data\.caltech\.edu/records/65de6-vp158"
    ):
        _module(tmp_path).setup("fit")
    copy = tmp_path / "CUB_200_2011"
    shutil.copytree(root, copy)
    (copy / "bounding_boxes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing bounding_boxes\.txt;"):
        _module(copy).setup("fit")


def test_malformed_files_are_reported_with_file_and_line(tmp_path, root):
    copy = tmp_path / "CUB_200_2011"
    shutil.copytree(root, copy)
    lines = (copy / "bounding_boxes.txt").read_text().splitlines()
    lines[1] = "2 10.0 20.0"
    (copy / "bounding_boxes.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bounding_boxes\.txt:2 is malformed"):
        _module(copy).setup("fit")
    shutil.copy(root / "bounding_boxes.txt", copy / "bounding_boxes.txt")
    (copy / "train_test_split.txt").write_text("1 0\n")
    with pytest.raises(ValueError, match=r"train_test_split\.txt and images\.txt list different image ids"):
        _module(copy).setup("fit")
    with pytest.raises(ValueError, match=r"lists 3 classes but data\.num_classes=200"):
        _module(root, num_classes=200).setup("fit")


def test_config_composes_and_instantiates(root):
    cfg = compose_train(["data=cub200", f"data.root={root}", f"data.num_classes={K}"], tiny=False)
    assert (cfg.data.batch_size, cfg.data.image_size, cfg.data.resize) == (10, 448, 512)
    assert cfg.model.num_classes == K
    dm = instantiate(cfg.data)
    assert isinstance(dm, CUB200DataModule) and dm.num_classes == K
