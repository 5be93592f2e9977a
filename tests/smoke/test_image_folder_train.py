"""`python train.py data=image_folder data.root=...` on a tiny folder of the user's own images, with boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.helpers import run_train_py

pytestmark = pytest.mark.slow

TINY = [
    "model/backbone=tiny_cnn",
    "data.image_size=32",
    "data.resize=36",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.pin_memory=false",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "figure.num_images=2",
]


def _write_folder(root: Path) -> None:
    """root/{train,val,test}/{circle,square}/*.png, a dark object on a light ground, and boxes.csv."""
    rows = ["filename,x1,y1,x2,y2"]
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for k, name in enumerate(("circle", "square")):
            for i in range(n):
                image = Image.new("RGB", (48, 40), (200, 200, 200))
                box = (4 + 6 * i, 6, 28 + 6 * i, 30)
                shape = ImageDraw.Draw(image).ellipse if k == 0 else ImageDraw.Draw(image).rectangle
                shape([box[0], box[1], box[2] - 1, box[3] - 1], fill=(40, 40, 160))
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
                rows.append(f"{split}/{name}/{i}.png,{','.join(str(v) for v in box)}")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")


def test_train_py_on_an_image_folder_with_boxes_scores_the_pointing_game(tmp_path):
    root = tmp_path / "my_images"
    _write_folder(root)
    out = tmp_path / "run"
    proc = run_train_py(
        "data=image_folder",
        f"data.root={root}",
        "data.boxes=boxes.csv",
        "test=true",
        *TINY,
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for key in ("val/top1", "val/pointing_game", "test/pointing_game", "exported model"):
        assert key in proc.stdout, key
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/pointing_game" in header and "val/attn_last_true_in_box" in header
    card = json.loads((out / "export" / "model_card.json").read_text())
    # counted and named from the folders: nobody typed them
    assert card["num_classes"] == 2 and card["class_names"] == ["circle", "square"]
    assert card["input"] == {"image_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_test_true_without_a_test_split_fails_before_training(tmp_path):
    """The data's missing test split is found by the contract's check, not after a whole training run."""
    root = tmp_path / "my_images"
    _write_folder(root)
    for path in sorted((root / "test").rglob("*"), reverse=True):  # train/ and val/ only
        path.unlink() if path.is_file() else path.rmdir()
    (root / "test").rmdir()
    out = tmp_path / "run"
    proc = run_train_py("data=image_folder", f"data.root={root}", "test=true", *TINY, f"hydra.run.dir={out}")
    assert proc.returncode != 0
    assert "test split: data.root=" in proc.stderr and f"add {root / 'test'}/<class>/*" in proc.stderr
    assert not (out / "checkpoints").exists() and not (out / "csv" / "metrics.csv").exists()
