"""Fine-tune with init_from + Group-CAM augmentation, the before/after report, and the export task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader

from icasc.data import SyntheticDataModule
from icasc.metrics.attention_stats import attention_stats
from icasc.metrics.insertion_deletion import insertion_deletion
from icasc.models.backbones import build_backbone
from icasc.models.export import export_backbone, load_exported
from icasc.saliency.groupcam import GroupCAM
from icasc.tasks import export as export_task
from icasc.tasks.before_after import (
    before_after_markdown,
    before_after_report,
    score_classifier,
    validation_subset,
)
from icasc.tasks.train import run
from tests.conftest import ROOT, TINY, compose_config, compose_train

pytestmark = pytest.mark.slow
CLI_TINY = [o.lstrip("+") if "limit_" not in o else o for o in TINY]
QUIET = ["figure.enabled=false"]


def _base_export(out: Path, seed: int = 0) -> Path:
    """A tiny_cnn export for the synthetic data (10 classes), as a trained run would leave it."""
    torch.manual_seed(seed)
    model = build_backbone("tiny_cnn", 10, width=16, batchnorm=True)
    card = {"backbone": "tiny_cnn", "num_classes": 10, "backbone_kwargs": {"width": 16, "batchnorm": True}}
    return export_backbone(model, out, card)["weights"]


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )


def test_synthetic_preset_composes_as_the_paper_recipe_in_small():
    cfg = compose_train(["experiment=synthetic_groupcam_finetune", "init_from=x.ckpt"], tiny=False)
    assert cfg.callbacks.groupcam_augmentation._target_ == "icasc.callbacks.GroupCAMAugmentation"
    assert "model_checkpoint" in cfg.callbacks  # the default callbacks stay
    assert dict(cfg.model.loss.weights) == {
        "separation_inner": 0.0,
        "separation_last": 0.0,
        "consistency": 0.0,
    }
    assert cfg.model.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    assert cfg.model.optimizer._target_ == "torch.optim.SGD" and cfg.model.backbone.name == "tiny_cnn"
    assert cfg.optimized_metric == "val/top1" and cfg.init_from == "x.ckpt"


def test_finetune_then_export_from_the_command_line(tmp_path):
    """train.py fine-tunes from an export (callback on) and reports; -cn export finds init_from by itself."""
    base = _base_export(tmp_path / "base" / "export")
    run_dir, export_dir = tmp_path / "finetune", tmp_path / "exported"
    proc = _cli(
        [
            "experiment=synthetic_groupcam_finetune",
            f"init_from={base}",
            *CLI_TINY,
            "before_after.num_images=6",
            "figure.enabled=false",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| initial (`" in proc.stdout and "| fine-tuned (`" in proc.stdout and "| change |" in proc.stdout
    report = json.loads((run_dir / "before_after.json").read_text())
    assert report["images"] == 6 and report["sources"]["initial"] == str(base)
    assert (run_dir / "before_after.md").read_text().startswith("| model | top-1 (%)")
    card = json.loads((run_dir / "export" / "model_card.json").read_text())
    assert card["init_from"] == str(base.resolve()) and card["before_after"] == report

    # The initial row is the base model's own score, the fine-tuned row the exported model's.
    dm = SyntheticDataModule(val_size=32, batch_size=16)
    dm.setup("validate")
    loader = DataLoader(validation_subset(dm.val_dataloader().dataset, 6), batch_size=32)
    for row, path in (("initial", base), ("finetuned", run_dir / "export")):
        model, _ = load_exported(path)
        expected = score_classifier(model, loader, "layer2", report["groupcam"], report["faithfulness"])
        for key in ("top1", "top5", "deletion_auc", "insertion_auc"):
            assert report[row][key] == pytest.approx(expected[key], abs=1e-6), (row, key)

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    proc = _cli(
        [
            "-cn",
            "export",
            f"ckpt_path={ckpt}",
            "num_images=6",
            "data.val_size=32",
            f"hydra.run.dir={export_dir}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| change |" in proc.stdout
    again = json.loads((export_dir / "before_after.json").read_text())
    assert again["sources"]["initial"] == str(base.resolve())  # read from the run's .hydra/config.yaml
    assert again["initial"] == pytest.approx(report["initial"])
    card = json.loads((export_dir / "export" / "model_card.json").read_text())
    assert card["init_from"] == str(base.resolve()) and card["before_after"]["images"] == 6
    assert card["backbone"] == "tiny_cnn" and card["num_classes"] == 10
    exported, _ = load_exported(export_dir / "export")
    finetuned, _ = load_exported(run_dir / "export")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(exported(x), finetuned(x))


def test_score_classifier_matches_a_direct_computation():
    torch.manual_seed(0)
    model = build_backbone("tiny_cnn", 10, width=8).eval()
    data = [{"image": torch.randn(3, 32, 32), "target": torch.tensor(i % 10)} for i in range(6)]
    scores = score_classifier(model, DataLoader(data, batch_size=4), "layer2", {"groups": 8}, device="cpu")
    images, targets = torch.stack([d["image"] for d in data]), torch.stack([d["target"] for d in data])
    with torch.no_grad():
        logits = model(images)
    top5 = logits.topk(5, dim=1).indices
    assert scores["images"] == 6
    assert scores["top1"] == pytest.approx(float((logits.argmax(1) == targets).float().mean()))
    assert scores["top5"] == pytest.approx(float((top5 == targets[:, None]).any(1).float().mean()))
    maps = GroupCAM(model, "layer2", groups=8, theta=70.0).attribute(images, targets)
    games = insertion_deletion(model, images, maps, targets)
    assert scores["deletion_auc"] == pytest.approx(float(games["deletion_auc"].mean()), abs=1e-6)
    assert scores["insertion_auc"] == pytest.approx(float(games["insertion_auc"].mean()), abs=1e-6)


def test_init_from_is_applied_before_fit(train_cfg, tmp_path):
    """With lr 0 the fine-tuned conv/linear weights are the initial ones (BN statistics still move)."""
    base = _base_export(tmp_path / "base", seed=3)
    cfg = train_cfg(
        "experiment=synthetic_groupcam_finetune",
        f"init_from={base}",
        "model.optimizer.lr=0.0",
        "model.optimizer.weight_decay=0.0",
        "before_after.num_images=0",
        *QUIET,
    )
    result = run(cfg)
    assert result["before_after"] is None and not (tmp_path / "before_after.json").exists()
    initial, _ = load_exported(base)
    finetuned, card = load_exported(tmp_path / "export")
    assert card["init_from"] == str(base.resolve())
    for key, value in initial.state_dict().items():
        if key.endswith("weight") and "bn" not in key and value.dim() > 1:
            torch.testing.assert_close(finetuned.state_dict()[key], value, msg=key)


def test_finetune_preset_requires_init_from(train_cfg):
    with pytest.raises(ValueError, match="pass init_from="):
        run(train_cfg("experiment=synthetic_groupcam_finetune", *QUIET))


def test_mismatched_init_from_stops_before_training(train_cfg, tmp_path):
    torch.manual_seed(0)
    weights = export_backbone(
        build_backbone("tiny_cnn", 5), tmp_path / "five", {"backbone": "tiny_cnn", "num_classes": 5}
    )
    with pytest.raises(ValueError, match=r"fc\.weight \[5, 64\] in the source vs \[10, 64\]"):
        run(train_cfg(f"init_from={weights['weights']}", *QUIET))
    assert not (tmp_path / "checkpoints").exists()


def test_export_without_a_known_initial_model_says_what_to_pass(train_cfg, tmp_path):
    first = run(train_cfg("export=false", *QUIET))
    cfg = compose_config("export", [f"ckpt_path={first['outputs']['best checkpoint']}"], tmp_path / "ex")
    with pytest.raises(ValueError, match="pass init_from="):
        export_task.run(cfg)


# ------------------------------------------------------------------------------------------------ ImageNet


def _fake_imagenet(root: Path) -> Path:
    for split, n in (("train", 4), ("val", 2)):
        for k, wnid in enumerate(["n01440764", "n01443537", "n01484850"]):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                colour = (80 * k, 255 - 80 * k, 40 * i)
                Image.new("RGB", (40, 32), colour).save(root / split / wnid / f"{i}.JPEG")
    return root


def test_imagenet_preset_composes_to_the_paper_recipe():
    cfg = compose_train(["experiment=imagenet/resnet50_groupcam_finetune", "data.root=/data/x"], tiny=False)
    assert cfg.data._target_ == "icasc.data.ImageNetDataModule"
    assert (cfg.data.batch_size, cfg.data.image_size, cfg.data.resize) == (256, 224, 256)
    assert cfg.model.backbone.name == "resnet50" and cfg.init_from == "torchvision:IMAGENET1K_V1"
    opt = cfg.model.optimizer
    assert (opt._target_, opt.lr, opt.momentum, opt.weight_decay) == ("torch.optim.SGD", 1e-3, 0.9, 1e-4)
    sched = cfg.model.scheduler
    assert (sched._target_, sched.step_size, sched.gamma) == ("torch.optim.lr_scheduler.StepLR", 15, 0.1)
    assert cfg.trainer.max_epochs == 20 and cfg.optimized_metric == "val/top1"
    assert cfg.callbacks.groupcam_augmentation._target_ == "icasc.callbacks.GroupCAMAugmentation"
    assert not instantiate(cfg.model.loss).attention_enabled


def test_imagenet_preset_runs_on_a_fake_tree(tmp_path, monkeypatch):
    root = _fake_imagenet(tmp_path / "imagenet")
    original = torchvision.models.resnet18
    calls = []

    def pretrained(*, weights=None, **kwargs):  # torchvision's weights, without the download
        calls.append(weights)
        torch.manual_seed(7)
        return original(weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "resnet18", pretrained)
    cfg = compose_train(
        [
            "experiment=imagenet/resnet50_groupcam_finetune",
            f"data.root={root}",
            "data.num_classes=3",
            "model/backbone=resnet18",
            "data.image_size=32",
            "data.resize=36",
            "data.batch_size=3",
            "data.num_workers=0",
            "data.pin_memory=false",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=1",
            "+trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false",
            "before_after.num_images=3",
            "before_after.groupcam.groups=8",
            *QUIET,
        ],
        tmp_path / "run",
        tiny=False,
    )
    result = run(cfg)
    assert "IMAGENET1K_V1" in calls
    report = result["before_after"]
    assert report["images"] == 3 and report["initial_head_replaced"] is True and report["layer"] == "layer4"
    card = json.loads((tmp_path / "run" / "export" / "model_card.json").read_text())
    assert card["init_from"] == "torchvision:IMAGENET1K_V1" and card["num_classes"] == 3
    assert card["input"] == {"image_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.mark.parametrize(
    ("preset", "attention_terms"),
    [("synthetic_finetune_icasc", True), ("synthetic_finetune_baseline", False)],
)
def test_icasc_fine_tuning_regime_and_its_control(train_cfg, tmp_path, preset, attention_terms):
    """Continuing a converged model with ICASC, and the control: the same continuation without the losses."""
    with pytest.raises(Exception, match="init_from"):
        compose_train([f"experiment={preset}"], tiny=False).init_from  # noqa: B018 (resolving raises)
    full = compose_train([f"experiment={preset}", "init_from=x.ckpt"], tiny=False)
    assert full.trainer.max_epochs == 4 and full.model.scheduler.T_max == 4
    base = _base_export(tmp_path / "base" / "export")
    cfg = train_cfg(f"experiment={preset}", f"init_from={base}", "before_after.num_images=6", *QUIET)
    assert cfg.model.optimizer.lr == pytest.approx(5e-3)
    result = run(cfg)
    assert result["before_after"]["sources"]["initial"] == str(base)
    assert ("val/separation_last" in result["metrics"]) is attention_terms


# ---------------------------------------------------------------- attention metrics, split and control


def test_score_classifier_adds_pointing_game_and_mass_in_box_where_there_are_boxes():
    torch.manual_seed(0)
    model = build_backbone("tiny_cnn", 10, width=8).eval()
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 32.0, 32.0]]).repeat(3, 1)
    data = [
        {"image": torch.randn(3, 32, 32), "target": torch.tensor(i % 10), "box": boxes[i]} for i in range(6)
    ]
    scores = score_classifier(model, DataLoader(data, batch_size=4), "layer2", {"groups": 8}, device="cpu")
    images, targets = torch.stack([d["image"] for d in data]), torch.stack([d["target"] for d in data])
    maps = GroupCAM(model, "layer2", groups=8, theta=70.0).attribute(images, targets)
    stats = attention_stats(maps, (32, 32), boxes)
    assert scores["pointing_game"] == pytest.approx(float(stats["pointing"].mean()), abs=1e-6)
    assert scores["mass_in_box"] == pytest.approx(float(stats["in_box"].mean()), abs=1e-6)
    plain = [{k: v for k, v in d.items() if k != "box"} for d in data]
    unboxed = score_classifier(model, DataLoader(plain, batch_size=4), "layer2", {"groups": 8}, device="cpu")
    assert "pointing_game" not in unboxed and "mass_in_box" not in unboxed


def test_report_with_a_control_scores_it_on_the_same_images():
    torch.manual_seed(0)
    models = [build_backbone("tiny_cnn", 10, width=8).eval() for _ in range(3)]
    data = [
        {
            "image": torch.randn(3, 32, 32),
            "target": torch.tensor(i % 10),
            "box": torch.tensor([0.0, 0, 20, 20]),
        }
        for i in range(6)
    ]
    report = before_after_report(
        *models[:2], data, "layer2", num_images=6, groupcam={"groups": 8}, control=models[2], split="test"
    )
    assert report["split"] == "test" and set(report["control"]) == set(report["finetuned"])
    loader = DataLoader(data, batch_size=32)
    expected = score_classifier(models[2], loader, "layer2", report["groupcam"], report["faithfulness"])
    for key, value in report["control"].items():
        assert value == pytest.approx(expected[key], abs=1e-6), key
        assert report["vs_control"][key] == pytest.approx(report["finetuned"][key] - value)
    table = before_after_markdown(report)
    assert "| control: plain fine-tune, same epochs |" in table and "| fine-tuned − control |" in table
    assert "pointing game (%)" in table and "6 test images" in table


def test_control_true_trains_the_same_run_without_the_augmentation(train_cfg, tmp_path):
    """The control is the run minus its callback: its weights equal a separate callbacks=default run."""
    base = _base_export(tmp_path / "base" / "export")
    common = [
        "experiment=synthetic_groupcam_finetune",
        f"init_from={base}",
        "before_after.num_images=6",
        "before_after.split=test",
        *QUIET,
    ]
    callback = [
        "callbacks.groupcam_augmentation.groups=4",
        "callbacks.groupcam_augmentation.log_every_n_steps=null",
    ]
    result = run(train_cfg(*common, *callback, "before_after.control=true", "test=true"))
    report = result["before_after"]
    control_ckpt = report["sources"]["control"]
    assert Path(control_ckpt).is_relative_to(tmp_path / "control" / "checkpoints")
    assert not (tmp_path / "control" / "export").exists()  # the control exports nothing of its own
    assert result["metrics"]["test/groupcam_deletion_auc"] == report["finetuned"]["deletion_auc"]
    assert "test/groupcam_pointing_game" in result["metrics"]  # the synthetic data has boxes
    plain = run(compose_train([*common, "callbacks=default", "export=false"], output_dir=tmp_path / "plain"))
    control = torch.load(control_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    separate = torch.load(plain["outputs"]["best checkpoint"], map_location="cpu", weights_only=True)
    for key, value in separate["state_dict"].items():
        torch.testing.assert_close(control[key], value, rtol=0, atol=0, msg=key)
    augmented = torch.load(result["outputs"]["best checkpoint"], map_location="cpu", weights_only=True)
    assert not torch.equal(augmented["state_dict"]["backbone.fc.weight"], control["backbone.fc.weight"])
    # a finished control scored by path: the same numbers
    again = export_task.run(
        compose_config(
            "export",
            [
                f"ckpt_path={result['outputs']['best checkpoint']}",
                f"init_from={base}",
                f"control={control_ckpt}",
                "num_images=6",
                "split=test",
                "groupcam.groups=32",
                *[o for o in TINY if o.startswith("data.")],
            ],
            tmp_path / "export_again",
        )
    )
    assert again["before_after"]["control"] == pytest.approx(report["control"])


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["before_after.control=true"], ValueError, "has none: add callbacks=groupcam_augmentation"),
        (["before_after.control=/no/such/run.ckpt"], FileNotFoundError, "before_after.control=/no/such"),
        (["before_after.split=train"], ValueError, r"before_after.split must be one of \('val', 'test'\)"),
        (
            [
                "callbacks=groupcam_augmentation",
                "before_after.control=true",
                "train=false",
                "ckpt_path=x.ckpt",
            ],
            ValueError,
            "train=false trains nothing",
        ),
    ],
)
def test_bad_report_options_fail_before_training(train_cfg, tmp_path, overrides, error, match):
    base = _base_export(tmp_path / "base" / "export")
    with pytest.raises(error, match=match):
        run(train_cfg(f"init_from={base}", "before_after.num_images=6", *overrides, *QUIET))
    assert not (tmp_path / "checkpoints").exists()


def test_control_needs_init_from(train_cfg, tmp_path):
    with pytest.raises(ValueError, match=r"before_after.control .* needs init_from"):
        run(train_cfg("callbacks=groupcam_augmentation", "before_after.control=true", *QUIET))
    assert not (tmp_path / "checkpoints").exists()


def test_control_true_is_refused_under_ddp_with_the_way_out(train_cfg, tmp_path):
    from types import SimpleNamespace

    from icasc.tasks.train import _check_before_after

    base = _base_export(tmp_path / "base" / "export")
    cfg = train_cfg("callbacks=groupcam_augmentation", f"init_from={base}", "before_after.control=true")
    assert _check_before_after(cfg, str(base), SimpleNamespace(world_size=1)) is True
    with pytest.raises(ValueError, match=r"DDP .* pass before_after.control=<its checkpoint or export>"):
        _check_before_after(cfg, str(base), SimpleNamespace(world_size=2))
