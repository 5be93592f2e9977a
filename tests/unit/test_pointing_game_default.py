"""One pointing-game definition and one default tolerance for training, -cn eval and -cn explain."""

from __future__ import annotations

import inspect

import pytest
import torch
from omegaconf import OmegaConf

from icasc.data.contract import DataInfo
from icasc.metrics.pointing_game import (
    POINTING_TOLERANCE,
    PointingGame,
    pointing_game_hits,
    resolve_tolerance,
)
from icasc.models import ICASCModule
from icasc.models.export import export_backbone
from icasc.models.loading import load_classifier
from icasc.tasks import evaluate, explain
from icasc.tasks.export import model_card
from tests.conftest import compose_config, compose_train
from tests.helpers import save_tiny_checkpoint

# Synthetic data for the 5-class tiny checkpoint, a handful of images: the tasks run in seconds.
TINY_DATA = [
    "data.num_classes=5",
    "data.train_size=4",
    "data.val_size=4",
    "data.test_size=4",
    "data.batch_size=4",
    "progress=false",
]


def test_the_default_is_inside_the_box():
    # Group-CAM §4.4: "if the most salient pixel lies inside the annotated bounding boxes ... a hit".
    assert POINTING_TOLERANCE == 0.0
    assert resolve_tolerance(None) == POINTING_TOLERANCE and resolve_tolerance(15) == 15.0
    maps = torch.zeros(1, 10, 10)
    maps[0, 2, 3] = 1.0  # maximum at the pixel centre (3.5, 2.5)
    next_to = torch.tensor([[4.0, 2.0, 6.0, 4.0]])  # 0.5 px to the right of it
    assert not pointing_game_hits(maps, next_to, (10, 10)).item()
    assert pointing_game_hits(maps, next_to, (10, 10), tolerance=15).item()
    assert PointingGame(3).tolerance == POINTING_TOLERANCE
    for bad in (-1.0, "15", True):
        with pytest.raises(ValueError, match="tolerance must be >= 0 pixels or None"):
            resolve_tolerance(bad)


def test_train_eval_and_explain_share_the_default():
    # Training and validation logging: the module's default and conf/model/icasc.yaml.
    assert inspect.signature(ICASCModule).parameters["pointing_tolerance"].default == POINTING_TOLERANCE
    module = ICASCModule("tiny_cnn", num_classes=3)
    assert module.pointing_tolerance == POINTING_TOLERANCE
    assert compose_train().model.pointing_tolerance == POINTING_TOLERANCE
    # -cn eval: null keeps the model's setting, whose default is the one above.
    assert compose_config("eval").pointing_tolerance is None
    # -cn explain: null means the model's too, the default for a model that records none.
    explain_cfg = compose_config("explain")
    assert explain_cfg.pointing_tolerance is None
    assert resolve_tolerance(explain_cfg.get("pointing_tolerance")) == POINTING_TOLERANCE


def test_eval_and_explain_use_the_tolerance_the_checkpoint_was_validated_with(tmp_path):
    # 1000 px covers every image: with the checkpoint's tolerance every map's maximum is a hit.
    ckpt = tmp_path / "tiny.ckpt"
    save_tiny_checkpoint(ckpt, pointing_tolerance=1000.0)
    assert load_classifier(ckpt)[1]["pointing_tolerance"] == 1000.0
    eval_args = [f"ckpt_path={ckpt}", *TINY_DATA, "gallery.num_images=0", "device=cpu"]
    result = evaluate.run(compose_config("eval", eval_args, tmp_path / "eval"))
    assert result["report"]["settings"]["pointing_tolerance"] == 1000.0
    pointing = [k for k in result["metrics"] if k.endswith("_pointing") or k.endswith("pointing_game")]
    assert len(pointing) == 5 and all(result["metrics"][k] == 1.0 for k in pointing), result["metrics"]
    explain_args = [
        f"ckpt_path={ckpt}",
        *TINY_DATA,
        "num_images=2",
        "batch_size=2",
        "methods=[gradcam]",
        "faithfulness.step_fraction=0.5",
    ]
    summary = explain.run(compose_config("explain", explain_args, tmp_path / "explain"))
    assert summary["pointing_tolerance"] == 1000.0 and summary["methods"]["gradcam"]["pointing_game"] == 1.0
    # the config overrides the model's
    result = evaluate.run(compose_config("eval", [*eval_args, "pointing_tolerance=2"], tmp_path / "eval2"))
    assert result["report"]["settings"]["pointing_tolerance"] == 2.0
    summary = explain.run(
        compose_config("explain", [*explain_args, "pointing_tolerance=2"], tmp_path / "explain2")
    )
    assert summary["pointing_tolerance"] == 2.0


# what the model card reads from a DataModule (icasc.data.contract.describe_data)
_DATA = DataInfo("tests.Data", 3, class_names=("a", "b", "c"), image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_an_export_records_its_tolerance_for_eval_and_explain(tmp_path):
    module = ICASCModule("tiny_cnn", num_classes=3, pointing_tolerance=4.0)
    card = model_card(module, _DATA, {}, OmegaConf.create({}))
    assert card["pointing_tolerance"] == 4.0
    export_backbone(module.backbone, tmp_path / "export", card)
    assert load_classifier(tmp_path / "export")[1]["pointing_tolerance"] == 4.0  # explain
    assert evaluate.load_module(tmp_path / "export")[0].pointing_tolerance == 4.0  # eval
    # a card from before the tolerance was recorded: the default
    del card["pointing_tolerance"]
    export_backbone(module.backbone, tmp_path / "old", card)
    assert load_classifier(tmp_path / "old")[1]["pointing_tolerance"] is None
    assert evaluate.load_module(tmp_path / "old")[0].pointing_tolerance == POINTING_TOLERANCE
    assert resolve_tolerance(None, None) == POINTING_TOLERANCE and resolve_tolerance(None, 4.0) == 4.0
    assert resolve_tolerance(2, 4.0) == 2.0
