"""ImageFolderDataModule on tiny folders of real PNG/JPEG files, in both layouts, with CSV and COCO boxes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from icasc.data.boxes import enclosing_boxes, read_coco_boxes, read_csv_boxes
from icasc.data.contract import DataContractError, describe_data
from icasc.data.folder_layout import find_split_folders
from icasc.data.image_folder import ImageFolderDataModule, count_image_folder_classes
from icasc.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import compose_config

OPTIONS = {"batch_size": 2, "num_workers": 0, "pin_memory": False, "image_size": 16, "resize": 20}


def _image(path: Path, size: tuple[int, int] = (80, 40), colour: tuple[int, int, int] = (90, 90, 90)) -> Path:
    """Write a solid ``size = (W, H)`` image at ``path`` (PNG or JPEG by suffix)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _folder(root: Path, classes: dict[str, int], suffix: str = ".png") -> Path:
    """``root/<class>/<i><suffix>``: ``classes[name]`` images per class."""
    for name, n in classes.items():
        for i in range(n):
            _image(root / name / f"{i}{suffix}")
    return root


def _split_folder(root: Path, splits: dict[str, dict[str, int]]) -> Path:
    for split, classes in splits.items():
        _folder(root / split, classes, ".jpg" if split == "val" else ".png")
    return root


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(["filename,x1,y1,x2,y2", *rows]) + "\n")
    return path


def _module(root: Path, **kwargs: object) -> ImageFolderDataModule:
    return ImageFolderDataModule(root, **{**OPTIONS, **kwargs})


def _rgb(image: torch.Tensor) -> torch.Tensor:
    return image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


@pytest.fixture
def split_root(tmp_path: Path) -> Path:
    return _split_folder(tmp_path / "images", {"train": {"cat": 3, "dog": 2}, "val": {"cat": 1, "dog": 1}})


# -- layouts, classes, splits -----------------------------------------------------------------------------


def test_train_val_layout_infers_classes_and_gives_dict_batches(split_root):
    dm = _module(split_root)
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2 and dm.multilabel is False
    assert (dm.image_size, dm.mean, dm.std) == (16, IMAGENET_MEAN, IMAGENET_STD)
    dm.setup("fit")
    assert dm.train_dataset.targets.tolist() == [0, 0, 0, 1, 1]
    assert [f.relative_to(split_root).as_posix() for f in dm.val_dataset.files] == [
        "val/cat/0.jpg",
        "val/dog/0.jpg",
    ]
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"image", "target"} and batch["image"].shape == (2, 3, 16, 16)
    assert batch["target"].tolist() == [0, 1]


def test_without_test_folder_the_test_loader_says_how_to_add_one(split_root):
    dm = _module(split_root)
    dm.setup("test")  # nothing to build; the loader tells
    with pytest.raises(ValueError, match=r"no test split: add .*images/test/<class>/\*"):
        dm.test_dataloader()
    _folder(split_root / "test", {"cat": 1, "dog": 2})
    dm = _module(split_root)
    dm.setup("test")
    assert dm.test_dataset.targets.tolist() == [0, 1, 1]
    assert len(next(iter(dm.test_dataloader()))["target"]) == 2


def test_the_contract_checks_the_test_split_before_any_work(split_root):
    """describe_data asks the module's check_split: a run with test=true fails before training."""
    with pytest.raises(DataContractError, match=r"test split: data.root=.* has no test split: add "):
        describe_data(_module(split_root), loaders=("train", "val", "test"))
    assert describe_data(_module(split_root), loaders=("train", "val")).num_classes == 2
    _folder(split_root / "test", {"cat": 1, "dog": 1})
    assert describe_data(_module(split_root), loaders=("train", "val", "test")).num_classes == 2


def test_single_folder_split_is_seeded_stratified_and_disjoint(tmp_path):
    root = _folder(tmp_path / "images", {"a": 10, "b": 10, "c": 5})
    dm = _module(root, val_fraction=0.2, test_fraction=0.1, seed=3)
    splits = dm.splits()
    files = {s: set(splits[s][0]) for s in ("train", "val", "test")}
    assert not (files["train"] & files["val"]) and not (files["train"] & files["test"])
    assert not (files["val"] & files["test"])
    assert set.union(*files.values()) == set(root.rglob("*.png"))
    counts = {s: [splits[s][1].count(k) for k in range(3)] for s in splits}
    assert counts == {"train": [7, 7, 3], "val": [2, 2, 1], "test": [1, 1, 1]}  # at least one each
    for s, (paths, labels) in splits.items():  # labels are the folders' classes
        assert [dm.class_names[k] for k in labels] == [p.parent.name for p in paths], s
    assert _module(root, val_fraction=0.2, test_fraction=0.1, seed=3).splits() == splits
    assert _module(root, val_fraction=0.2, test_fraction=0.1, seed=4).splits()["val"] != splits["val"]


def test_single_folder_without_test_fraction_has_no_test_split(tmp_path):
    root = _folder(tmp_path / "images", {"a": 3, "b": 3})
    dm = _module(root)
    dm.setup()
    assert set(dm.splits()) == {"train", "val"} and len(dm.val_dataset) == 2
    with pytest.raises(ValueError, match=r"no test split: set data.test_fraction"):
        dm.test_dataloader()


def test_classes_too_small_to_split_are_named(tmp_path):
    root = _folder(tmp_path / "images", {"a": 5, "tiny": 2})
    with pytest.raises(ValueError, match=r"too few images .* tiny \(2\).*data.val_fraction"):
        _module(root, val_fraction=0.2, test_fraction=0.2).splits()


def test_resolver_counts_the_class_folders_for_data_and_model(split_root):
    cfg = compose_config("train", ["data=image_folder", f"data.root={split_root}"])
    assert cfg.data.num_classes == 2 and cfg.model.num_classes == 2
    assert count_image_folder_classes(split_root) == 2
    unset = compose_config("train", ["data=image_folder"])
    with pytest.raises(Exception, match=r"data.root is not set"):
        OmegaConf.to_container(unset.data, resolve=True)


def test_explicit_num_classes_is_checked_and_multilabel_refused(split_root):
    assert _module(split_root, num_classes=2).num_classes == 2
    with pytest.raises(
        ValueError, match=r"holds 2 class folders but data.num_classes=3; set data.num_classes=2"
    ):
        _module(split_root, num_classes=3)
    with pytest.raises(ValueError, match=r"single-label .* data.multilabel=false"):
        _module(split_root, multilabel=True)


def test_mean_std_are_configurable_and_checked(split_root):
    dm = _module(split_root, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert dm.mean == (0.5, 0.5, 0.5) and dm.std == (0.25, 0.25, 0.25)
    dm.setup("validate")
    grey = 90 / 255
    torch.testing.assert_close(dm.val_dataset[0]["image"], torch.full((3, 16, 16), (grey - 0.5) / 0.25))
    with pytest.raises(ValueError, match=r"data.std must be 3 positive numbers"):
        _module(split_root, std=[0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match=r"data.test_fraction=0.1 splits a single folder.*root/test/<class>"):
        _module(split_root, test_fraction=0.1)


# -- errors: root and layout --------------------------------------------------------------------------------


def test_root_unset_or_missing(tmp_path):
    with pytest.raises(ValueError, match=r"data.root is not set: .*root/train/<class>"):
        _module(None)
    with pytest.raises(FileNotFoundError, match=r"data.root=.*nowhere does not exist"):
        _module(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda r: _split_folder(r, {"train": {"a": 1}, "val": {"a": 1}}) and _folder(r, {"cat": 1}),
            r"mixes split folders \(train, val\) with class folders cat",
        ),
        (
            lambda r: _split_folder(r, {"train": {"a": 1, "b": 1}}),
            r"mixes split folders \(train\) with no val/",
        ),
        (
            lambda r: _folder(r, {"a": 1, "b": 1}) and _image(r / "loose.png"),
            r"holds 1 image\(s\) outside class folders \(e.g. loose.png\)",
        ),
        (lambda r: r.mkdir(), r"has no folders"),
        (lambda r: _folder(r, {"only": 2}), r"holds one class folder \(only\)"),
    ],
)
def test_wrong_layouts_name_both_accepted_layouts(tmp_path, make, message):
    root = tmp_path / "images"
    make(root)
    with pytest.raises(ValueError, match=message) as error:
        _module(root)
    assert "root/train/<class>/* and root/val/<class>/*" in str(error.value)
    assert "root/<class>/*" in str(error.value)


def test_class_sets_that_differ_between_splits_are_named(tmp_path):
    root = _split_folder(
        tmp_path / "images", {"train": {"cat": 1, "dog": 1, "emu": 1}, "val": {"cat": 1, "fox": 1}}
    )
    with pytest.raises(ValueError, match=r"only in train/: \['dog', 'emu'\]; only in val/: \['fox'\]"):
        _module(root)
    assert find_split_folders(root) == {"train": root / "train", "val": root / "val"}


def test_empty_class_folder_is_named(split_root):
    (split_root / "val" / "dog" / "0.jpg").unlink()
    (split_root / "val" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"class folder .*val/dog holds no image"):
        _module(split_root).setup("fit")


def test_unreadable_images_are_skipped_with_one_warning_naming_them(split_root, caplog):
    (split_root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    (split_root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="icasc.data.image_folder"):
        dm = _module(split_root)
        dm.setup("fit")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "broken.png" in warnings[0].getMessage() and "empty.jpg" in warnings[0].getMessage()
    assert len(dm.train_dataset) == 5 and not any(f.name == "broken.png" for f in dm.train_dataset.files)
    (split_root / "val" / "dog" / "0.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"no readable image in the class folder .*val/dog"):
        _module(split_root).setup("fit")


# -- boxes --------------------------------------------------------------------------------------------------


def test_csv_box_lands_where_the_eval_resize_and_centre_crop_put_it(split_root):
    # 80 x 40 image, shorter side 40 -> 20 (scale 0.5): 40 x 20, centre crop 16: offset (12, 2)
    rows = [f"{s}/{c}/{i}.{'jpg' if s == 'val' else 'png'},30,8,50,32" for s, c, i in _all(split_root)]
    _csv(split_root / "boxes.csv", rows)
    dm = _module(split_root, boxes="boxes.csv")
    dm.setup("fit")
    sample = dm.val_dataset[0]
    torch.testing.assert_close(sample["box"], torch.tensor([3.0, 2.0, 13.0, 14.0]))
    batch = next(iter(dm.val_dataloader()))
    assert batch["box"].shape == (2, 4) and batch["box"].dtype == torch.float32
    assert set(next(iter(dm.train_dataloader()))) == {"image", "target", "box"}


def test_box_is_clamped_to_the_centre_crop(split_root):
    _all_boxes(split_root, "0,0,80,40")
    dm = _module(split_root, boxes=split_root / "boxes.csv")  # absolute path too
    dm.setup("validate")
    torch.testing.assert_close(dm.val_dataset[1]["box"], torch.tensor([0.0, 0.0, 16.0, 16.0]))


def test_train_boxes_follow_random_crops_and_flips(tmp_path):
    from PIL import Image, ImageDraw

    root = _split_folder(tmp_path / "images", {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 1}})
    image = Image.new("RGB", (64, 48))
    draw = ImageDraw.Draw(image)
    draw.rectangle([8, 8, 23, 39], fill=(255, 0, 0))  # left half of the object red, right half green
    draw.rectangle([24, 8, 39, 39], fill=(0, 255, 0))
    image.save(root / "train" / "a" / "0.png")
    _csv(root / "boxes.csv", ["train/a/0.png,8,8,40,40", "train/b/0.png,0,0,80,40"])
    dm = _module(root, boxes="boxes.csv", image_size=32, resize=32)
    dm.setup("fit")
    orientations = set()
    for seed in range(24):
        torch.manual_seed(seed)
        sample = dm.train_dataset[0]
        rgb, box = _rgb(sample["image"]), sample["box"]
        red, green = (rgb[0] > 0.5) & (rgb[1] < 0.5), (rgb[1] > 0.5) & (rgb[0] < 0.5)
        seen = (rgb[0] + rgb[1]) > 0.5
        if not red.any() or not green.any():
            continue  # the crop cut one half away
        ys, xs = torch.nonzero(seen, as_tuple=True)
        region = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        torch.testing.assert_close(box, region, atol=1.01, rtol=0)
        orientations.add(
            bool(torch.nonzero(green)[:, 1].float().mean() < torch.nonzero(red)[:, 1].float().mean())
        )
    assert orientations == {False, True}  # some crops were flipped, and the box went with them


def test_coco_json_boxes_several_per_image_give_the_enclosing_box(split_root):
    coco = {
        "images": [{"id": 7, "file_name": "val/cat/0.jpg"}, {"id": 8, "file_name": "val/dog/0.jpg"}],
        "annotations": [
            {"image_id": 7, "bbox": [30, 8, 10, 10], "category_id": 1},
            {"image_id": 7, "bbox": [44, 20, 6, 12]},
            {"image_id": 8, "bbox": [0, 0, 80, 40]},
        ],
        "categories": [{"id": 1, "name": "cat"}],
    }
    (split_root / "boxes.json").write_text(json.dumps(coco))
    rows = read_coco_boxes(split_root / "boxes.json")
    assert [(r.filename, r.box) for r in rows][:2] == [
        ("val/cat/0.jpg", (30, 8, 40, 18)),
        ("val/cat/0.jpg", (44, 20, 50, 32)),
    ]
    torch.testing.assert_close(enclosing_boxes(rows)["val/cat/0.jpg"], torch.tensor([30.0, 8.0, 50.0, 32.0]))
    dm = _module(split_root, boxes="boxes.json")
    dm.setup("fit")  # train has no box at all: fine, its samples carry none
    assert "box" not in dm.train_dataset[0]
    torch.testing.assert_close(dm.val_dataset[0]["box"], torch.tensor([3.0, 2.0, 13.0, 14.0]))


def test_csv_rows_several_boxes_and_normalised_names(tmp_path):
    path = _csv(tmp_path / "b.csv", ["./train/a/0.png, 1, 2, 3, 4", "", "train\\a\\0.png,0,5,2,9"])
    rows = read_csv_boxes(path)
    assert [r.filename for r in rows] == ["train/a/0.png", "train/a/0.png"]
    assert [r.where for r in rows] == [f"{path}:2", f"{path}:4"]
    torch.testing.assert_close(enclosing_boxes(rows)["train/a/0.png"], torch.tensor([0.0, 2.0, 3.0, 9.0]))


def test_split_without_boxes_warns_and_partial_split_is_an_error(split_root, caplog):
    _csv(split_root / "boxes.csv", ["train/cat/0.png,0,0,8,8"])
    dm = _module(split_root, boxes="boxes.csv")
    with pytest.raises(
        ValueError, match=r"boxes for 1 of the 5 train images but none for 4: train/cat/1.png"
    ):
        dm.setup("fit")
    _csv(
        split_root / "boxes.csv",
        [f"train/{c}/{i}.png,0,0,8,8" for c, n in (("cat", 3), ("dog", 2)) for i in range(n)],
    )
    with caplog.at_level(logging.WARNING, logger="icasc.data.image_folder"):
        dm = _module(split_root, boxes="boxes.csv")
        dm.setup("fit")
    assert "box" in dm.train_dataset[0] and "box" not in dm.val_dataset[0]
    assert any("no box for any of the 2 val images" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "content, error, message",
    [
        ("filename,x1,y1,x2\nval/cat/0.jpg,1,2,3\n", ValueError, r"boxes.csv:1: the header lacks y2"),
        (
            "filename,x1,y1,x2,y2\nval/cat/0.jpg,1,2,3,4\nval/dog/0.jpg,1,a,3,4\n",
            ValueError,
            r"boxes.csv:3: x1,y1,x2,y2 must be numbers",
        ),
        ("filename,x1,y1,x2,y2\nval/cat/0.jpg,5,2,3,4\n", ValueError, r"boxes.csv:2: the box .* inverted"),
        (
            "filename,x1,y1,x2,y2\nval/cat/0.jpg,1,2,3,4\nval/cow/9.jpg,1,2,3,4\n",
            FileNotFoundError,
            r"1 box\(es\) in data.boxes=.*boxes.csv name files that are not images .*:3: val/cow/9.jpg",
        ),
    ],
)
def test_malformed_csv_rows_name_the_line(split_root, content, error, message):
    (split_root / "boxes.csv").write_text(content)
    with pytest.raises(error, match=message):
        _module(split_root, boxes="boxes.csv").setup("fit")


@pytest.mark.parametrize(
    "coco, message",
    [
        ("{not json", r"boxes.json is not a JSON file"),
        ({"images": []}, r"needs a list 'annotations'"),
        ({"images": [{"id": 1}], "annotations": []}, r"images\[0\] lacks 'file_name'"),
        (
            {
                "images": [{"id": 1, "file_name": "val/cat/0.jpg"}],
                "annotations": [{"image_id": 2, "bbox": [0, 0, 1, 1]}],
            },
            r"annotations\[0\]: image_id 2 is not the id",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "val/cat/0.jpg"}],
                "annotations": [{"image_id": 1, "bbox": [0, 0, 1]}],
            },
            r"annotations\[0\]: bbox must be 4 numbers",
        ),
    ],
)
def test_malformed_coco_json_names_the_entry(split_root, coco, message):
    (split_root / "boxes.json").write_text(coco if isinstance(coco, str) else json.dumps(coco))
    with pytest.raises(ValueError, match=message):
        _module(split_root, boxes="boxes.json").setup("fit")


def test_box_file_missing_or_of_unknown_format(split_root):
    with pytest.raises(FileNotFoundError, match=r"data.boxes=.*images/missing.csv does not exist"):
        _module(split_root, boxes="missing.csv")
    (split_root / "boxes.txt").write_text("")
    with pytest.raises(ValueError, match=r"data.boxes=.*boxes.txt: unknown box file format '.txt'"):
        _module(split_root, boxes="boxes.txt")


def _all(root: Path) -> list[tuple[str, str, int]]:
    return [
        (s, c, int(p.stem))
        for s in ("train", "val")
        for c in ("cat", "dog")
        for p in sorted((root / s / c).iterdir())
    ]


def _all_boxes(root: Path, box: str) -> Path:
    rows = [f"{s}/{c}/{i}.{'jpg' if s == 'val' else 'png'},{box}" for s, c, i in _all(root)]
    return _csv(root / "boxes.csv", rows)
