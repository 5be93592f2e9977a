"""``python train.py model/backbone=timm model.backbone.name=<timm model>``: composes, trains, exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from icasc.tasks.train import run
from tests.conftest import compose_train

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

pytestmark = pytest.mark.slow


def test_train_py_with_a_timm_backbone(tmp_path: Path) -> None:
    cfg = compose_train(
        ["model/backbone=timm", "model.backbone.name=convnext_atto", "figure.enabled=false"], tmp_path
    )
    assert cfg.model.backbone == {"name": "convnext_atto", "source": "timm", "weights": None}
    result = run(cfg)
    assert "val/top1" in result["metrics"] and "val/separation_inner" in result["metrics"]
    assert all(v == v for v in result["metrics"].values() if isinstance(v, float))  # no NaN

    export = Path(result["outputs"]["exported model"])
    card = json.loads((export.parent / "model_card.json").read_text())
    assert card["backbone"] == "convnext_atto" and card["backbone_kwargs"] == {"source": "timm"}
    assert card["attention"]["layers"] == {"inner": "stages.2", "last": "stages.3"}
    # the export loads with timm alone
    model = timm.create_model("convnext_atto", num_classes=card["num_classes"])
    model.load_state_dict(safetensors_torch.load_file(str(export)), strict=True)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, card["num_classes"])


def test_timm_backbone_needs_a_name(tmp_path: Path) -> None:
    cfg = compose_train(["model/backbone=timm"], tmp_path)
    with pytest.raises(InstantiationException, match=r"model\.backbone\.name is required") as info:
        instantiate(cfg.model, _convert_="all")
    assert "timm.list_models('convnext*')" in str(info.value)
