"""Compose the real configs and train a few steps for each preset; check the outputs of a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from icasc.models import ICASCModule
from icasc.models.export import load_exported
from icasc.tasks.train import run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "experiment, attention, enabled",
    [
        ("synthetic_icasc", "ach", True),
        ("synthetic_icasc_gradcam", "gradcam", True),
        ("synthetic_baseline", "ach", False),
    ],
)
def test_experiment_presets_train_and_export(train_cfg, tmp_path, experiment, attention, enabled, capsys):
    cfg = train_cfg(f"experiment={experiment}")
    result = run(cfg)
    metrics, outputs = result["metrics"], result["outputs"]
    for key in (
        "val/top1",
        "val/top5",
        "val/loss",
        "val/classification",
        "val/attention_overlap",
        "val/pointing_game",
    ):
        assert (key in metrics and metrics[key] >= 0.0) or key.endswith("loss"), key
    assert ("val/separation_inner" in metrics) == enabled
    for key in ("best checkpoint", "exported model", "attention figure"):
        assert outputs[key] and Path(outputs[key]).exists(), key
    printed = capsys.readouterr().out
    assert "val/top1" in printed and outputs["exported model"] in printed

    card = json.loads((tmp_path / "export" / "model_card.json").read_text())
    assert card["backbone"] == "tiny_cnn" and card["num_classes"] == 10
    assert card["attention"] == {"method": attention, "layers": {"inner": "layer1", "last": "layer2"}}
    assert card["metrics"]["val/top1"] == pytest.approx(metrics["val/top1"])
    assert len(card["config_hash"]) == 64 and card["input"]["image_size"] == 64

    # The exported weights are those of the best checkpoint.
    exported, _ = load_exported(tmp_path / "export")
    module = ICASCModule.load_from_checkpoint(
        outputs["best checkpoint"], map_location="cpu", weights_only=False
    )
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(exported(x), module.eval()(x))
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "train/classification", "train/top1", "train/top5", "val/attention_overlap"):
        assert key in header, key
    assert ("train/separation_inner" in header) == enabled


def test_baseline_override_turns_every_attention_term_off(train_cfg):
    cfg = train_cfg("model/loss=baseline")
    loss = instantiate(cfg.model.loss)
    assert loss.weights == {"separation_inner": 0.0, "separation_last": 0.0, "consistency": 0.0}
    assert not loss.attention_enabled


def test_baseline_training_computes_no_attention(train_cfg, monkeypatch):
    module = instantiate(train_cfg("model/loss=baseline").model)
    calls = []
    monkeypatch.setattr(type(module.attention), "__call__", lambda *a, **k: calls.append(1))
    batch = {"image": torch.randn(4, 3, 64, 64), "target": torch.tensor([0, 1, 2, 3])}
    total, terms, _ = module.compute_loss(batch["image"], batch["target"])
    assert not calls and set(terms) == {"classification"} and torch.isfinite(total)


@pytest.mark.parametrize(
    "override, key, value",
    [
        ("trainer=cpu", "accelerator", "cpu"),
        ("trainer=gpu", "accelerator", "gpu"),
        ("trainer=ddp", "strategy", "ddp"),
    ],
)
def test_trainer_presets_compose(train_cfg, override, key, value):
    cfg = train_cfg(override, "trainer.devices=4", "trainer.num_nodes=2")
    assert cfg.trainer[key] == value
    assert cfg.trainer.devices == 4 and cfg.trainer.num_nodes == 2
    assert cfg.trainer.inference_mode is False  # validation computes attention maps with autograd


def test_cpu_trainer_preset_trains(train_cfg):
    result = run(train_cfg("trainer=cpu", "export=false", "figure.enabled=false"))
    assert "val/top1" in result["metrics"] and result["outputs"]["exported model"] is None


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb"])
def test_logger_presets(train_cfg, logger):
    cfg = train_cfg(f"logger={logger}")
    node = next(iter(cfg.logger.values()))
    # Lightning's loggers, but CSV through its resumable subclass (appends to metrics.csv on resume)
    if logger == "csv":
        assert node._target_ == "icasc.loggers.ResumableCSVLogger"
    else:
        assert node._target_.startswith("lightning.pytorch.loggers.")
    if logger == "wandb":
        assert node.offline is True  # never prompts, never uploads unless the user turns it online
    target = node._target_.rsplit(".", 1)[1]
    pytest.importorskip({"csv": "lightning", "tensorboard": "tensorboard", "wandb": "wandb"}[logger])
    assert type(instantiate(node)).__name__ == target


def test_multilabel_synthetic_trains_with_map(train_cfg):
    cfg = train_cfg("data.multilabel=true", "figure.enabled=false")
    # The best checkpoint follows mAP on multi-label data without being told.
    assert cfg.optimized_metric == "val/map" and cfg.callbacks.model_checkpoint.monitor == "val/map"
    assert train_cfg().optimized_metric == "val/top1"
    result = run(cfg)
    assert 0.0 <= result["metrics"]["val/map"] <= 1.0
    assert "val/separation_last" in result["metrics"]
    assert "val/pointing_game" not in result["metrics"]  # multi-label samples carry no box


@pytest.mark.parametrize("backbone, inner", [("cifar_resnet20", "layer2"), ("resnet18", "layer3")])
def test_registry_backbones_train_a_step(train_cfg, backbone, inner):
    cfg = train_cfg(f"model/backbone={backbone}", "export=false", "figure.enabled=false")
    result = run(cfg)
    assert "val/top1" in result["metrics"] and "val/separation_inner" in result["metrics"]
    assert instantiate(cfg.model).attention.layers["inner"] == inner


def test_evaluate_and_export_a_checkpoint_without_training(train_cfg, tmp_path):
    first = run(train_cfg("figure.enabled=false", "export=false"))
    ckpt = first["outputs"]["best checkpoint"]
    again = run(train_cfg("train=false", f"ckpt_path={ckpt}", "figure.enabled=false"))
    assert again["outputs"]["best checkpoint"] == ckpt
    assert again["metrics"]["val/top1"] == pytest.approx(first["metrics"]["val/top1"])
    with pytest.raises(ValueError, match="ckpt_path"):
        run(train_cfg("train=false"))
