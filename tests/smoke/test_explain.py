"""The explain command on a trained checkpoint and on an exported model, as users run it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from icasc.metrics.pointing_game import POINTING_TOLERANCE
from icasc.tasks import explain
from tests.conftest import compose_config
from tests.helpers import run_train_py, train_tiny

pytestmark = pytest.mark.slow
FAST = [
    "num_images=3",
    "batch_size=2",
    "method_options.smoothgrad.n_samples=4",
    "method_options.groupcam.groups=8",
    "faithfulness.step_fraction=0.25",
    "progress=false",
]
METHODS = ["gradcam", "guided_gradcam", "groupcam", "smoothgrad"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("trained"))


def test_explain_checkpoint_on_validation_images(trained, tmp_path):
    ckpt = next((trained / "checkpoints").glob("epoch_*.ckpt"))
    summary = explain.run(compose_config("explain", [f"ckpt_path={ckpt}", *FAST], tmp_path))
    assert summary["explained_class"] == "true" and summary["layer"] == "layer2"
    assert summary["pointing_tolerance"] == POINTING_TOLERANCE  # the default of training and eval too
    for method in METHODS:
        entry = summary["methods"][method]
        assert 0.0 <= entry["insertion_auc"] <= 1.0 and 0.0 <= entry["deletion_auc"] <= 1.0
        assert entry["overall"] == pytest.approx(entry["insertion_auc"] - entry["deletion_auc"])
        assert 0.0 <= entry["pointing_game"] <= 1.0 and entry["images"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["methods"].keys() == set(METHODS)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(METHODS)
    folders = sorted((tmp_path / "images").iterdir())
    assert len(folders) == 3
    for folder in folders:
        names = {p.name for p in folder.iterdir()}
        assert {"grid.png", "smoothgrad_difference.png", *(f"{m}.png" for m in METHODS)} <= names


def test_explain_export_on_image_files(trained, tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        array = (torch.rand(80, 96, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(array).save(pictures / f"photo{i}.png")
    out = tmp_path / "out"
    summary = explain.run(
        compose_config(
            "explain",
            [f"ckpt_path={trained / 'export'}", f"images={pictures}/*.png", "methods=[gradcam,ach]", *FAST],
            out,
        )
    )
    assert summary["explained_class"] == "predicted"
    assert "pointing_game" not in summary["methods"]["gradcam"]  # no boxes for plain files
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000_photo0", "001_photo1"]


def test_explain_bad_input(trained, tmp_path):
    with pytest.raises(ValueError, match="ckpt_path"):
        explain.run(compose_config("explain", FAST, tmp_path))
    ckpt = next((trained / "checkpoints").glob("epoch_*.ckpt"))
    with pytest.raises(ValueError, match=r"unknown saliency method 'lime'.*gradcam"):
        explain.run(compose_config("explain", [f"ckpt_path={ckpt}", "methods=[lime]", *FAST], tmp_path))
    with pytest.raises(FileNotFoundError, match="no images found"):
        explain.run(
            compose_config("explain", [f"ckpt_path={ckpt}", f"images={tmp_path}/none/*.jpg", *FAST], tmp_path)
        )
    with pytest.raises(FileNotFoundError, match="no checkpoint or export"):
        explain.run(compose_config("explain", [f"ckpt_path={tmp_path}/missing.ckpt", *FAST], tmp_path))


def test_explain_command_line(trained, tmp_path):
    ckpt = next((trained / "checkpoints").glob("epoch_*.ckpt"))
    proc = run_train_py(
        "-cn",
        "explain",
        f"ckpt_path={ckpt}",
        "methods=[gradcam,groupcam]",
        *FAST,
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"groupcam"' in proc.stdout and (tmp_path / "metrics.json").exists()
