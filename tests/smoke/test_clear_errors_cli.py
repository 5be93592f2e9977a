"""Clear errors as users meet them on the command line (issue 10): a damaged checkpoint given to -cn eval,
an unset data.root, unreadable files among -cn explain images=, and the backbone name in the eval report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from icasc.models.backbones import build_backbone
from icasc.models.export import export_backbone
from icasc.tasks import evaluate, explain
from tests.conftest import compose_config
from tests.helpers import run_train_py

pytestmark = pytest.mark.slow
DATA = ["data.train_size=32", "data.val_size=16", "data.test_size=16", "data.batch_size=16"]
EXPLAIN = [
    "methods=[gradcam]",
    "num_images=8",
    "batch_size=4",
    "faithfulness.step_fraction=0.25",
    "progress=false",
]


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    """A hand-made export of a tiny_cnn for the synthetic data (10 classes, 64 px)."""
    torch.manual_seed(0)
    card = {
        "backbone": "tiny_cnn",
        "num_classes": 10,
        "multilabel": False,
        "backbone_kwargs": {"width": 8},
        "input": {"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    model = build_backbone("tiny_cnn", 10, width=8)
    return export_backbone(model, tmp_path / "export", card)["weights"].parent


def test_eval_of_a_truncated_checkpoint_names_it(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 500)  # the start of a zip archive, cut short
    result = run_train_py("-cn", "eval", f"ckpt_path={path}", f"paths.output_dir={tmp_path / 'out'}")
    assert result.returncode != 0
    assert f"ckpt_path={path} is truncated or not a Lightning checkpoint" in result.stderr
    assert "PytorchStreamReader" not in result.stderr


def test_unset_data_root_names_the_option_and_download(tmp_path):
    result = run_train_py("data=cifar100", f"paths.output_dir={tmp_path}")
    assert result.returncode != 0
    assert "data.root is not set: set data.root to the directory holding cifar-100-python" in result.stderr
    assert "data.download=true" in result.stderr
    assert "MissingMandatoryValue" not in result.stderr


def test_explain_skips_an_unreadable_file_among_good_ones(export_dir, tmp_path, caplog):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i in range(2):
        Image.new("RGB", (80, 70), (90 * i, 120, 30)).save(pictures / f"photo{i}.png")
    (pictures / "notes.png").write_text("this is not an image\n")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        summary = explain.run(
            compose_config("explain", [f"ckpt_path={export_dir}", f"images={pictures}", *EXPLAIN], out)
        )
    assert summary["methods"]["gradcam"]["images"] == 2
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000_photo0", "001_photo1"]
    assert json.loads((out / "metrics.json").read_text())["methods"]["gradcam"]["images"] == 2
    assert any(str(pictures / "notes.png") in r.getMessage() for r in caplog.records)


def test_explain_fails_when_no_image_is_readable(export_dir, tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for name in ("a.png", "b.jpg"):
        (pictures / name).write_text("not an image\n")
    with pytest.raises(ValueError, match=r"none of the 2 image file\(s\) could be read") as caught:
        explain.run(
            compose_config("explain", [f"ckpt_path={export_dir}", f"images={pictures}", *EXPLAIN], tmp_path)
        )
    assert str(pictures / "a.png") in str(caught.value) and str(pictures / "b.jpg") in str(caught.value)


def test_eval_report_of_an_export_names_the_registry_backbone(export_dir, tmp_path):
    cfg = compose_config(
        "eval", [f"ckpt_path={export_dir}", *DATA, "progress=false", "gallery.num_images=0"], tmp_path
    )
    result = evaluate.run(cfg)
    assert result["report"]["checkpoint"]["backbone"] == "tiny_cnn"
    assert "(export; tiny_cnn, 10 classes" in (tmp_path / "report.md").read_text()
