"""Each preset in conf/experiment/<dataset>/ composes with the paper's settings and trains on fake data.

The presets are found by globbing, so a new one is covered at once: it must compose, run ``fast_dev_run`` on
a tiny fake copy of its dataset (written by tests/fakedata.py in the real on-disk format), and, if it is a
row of the paper's tables, have its expected settings listed in ``ROWS`` below.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from icasc.tasks.train import run
from tests import fakedata
from tests.conftest import CONF, compose_train

pytestmark = pytest.mark.slow

# Files starting with "_" are shared bases, not rows.
PRESETS = sorted(
    p.relative_to(CONF / "experiment").with_suffix("").as_posix()
    for p in (CONF / "experiment").glob("*/*.yaml")
    if not p.name.startswith("_")
)
# Presets under conf/experiment/<dataset>/ that are not rows of the ICASC paper's tables.
NOT_ROWS = {"imagenet/resnet50_groupcam_finetune"}

PRETRAINED = "torchvision:IMAGENET1K_V1"
MULTISTEP = "torch.optim.lr_scheduler.MultiStepLR"
CYCLIC = "icasc.models.schedulers.CyclicCosineAnnealingLR"

# ICASC Table 1 (appendix A): per dataset, the settings every row shares.
DATASETS = {
    "cifar100": dict(
        data="CIFAR100DataModule", batch=128, lr=0.1, wd=5e-4, epochs=160, scheduler=MULTISTEP,
        milestones=[81, 122], init_from=None, data_extra={},
    ),
    "caltech256": dict(
        data="Caltech256DataModule", batch=16, lr=0.01, wd=1e-3, epochs=20, scheduler=CYCLIC, cycles=1,
        init_from=PRETRAINED, data_extra={"train_per_class": 60, "image_size": 299},
    ),
    "imagenet": dict(
        data="ImageNetDataModule", batch=256, lr=0.1, wd=1e-4, epochs=90, scheduler=MULTISTEP,
        milestones=[30, 60], init_from=None, data_extra={"image_size": 224, "resize": 256},
    ),
    "cub200": dict(
        data="CUB200DataModule", batch=10, lr=1e-3, wd=1e-4, epochs=90, scheduler=MULTISTEP,
        milestones=[30, 60], init_from=PRETRAINED, data_extra={"image_size": 448},
        layers=("layer3", "layer4"),
    ),
    "voc2012": dict(
        data="VOC2012DataModule", batch=16, lr=0.01, wd=1e-3, epochs=20, scheduler=CYCLIC, cycles=1,
        init_from=PRETRAINED, data_extra={"image_size": 299, "multilabel": True},
    ),
}  # fmt: skip

# (w_in, w_la, w_ac) of Eq. 6: the baseline, full ICASC and the Table 3 ablation rows
LOSSES = {
    "baseline": (0.0, 0.0, 0.0),
    "icasc": (1.0, 1.0, 1.0),
    "inner_as": (1.0, 0.0, 0.0),
    "inner_as_ac": (1.0, 0.0, 1.0),
}

# preset -> (backbone, loss, attention method, extra data settings)
ROWS: dict[str, tuple[str, str, str, dict]] = {
    "cifar100/resnet110_baseline": ("cifar_resnet110", "baseline", "ach", {}),
    "cifar100/resnet110_icasc_gradcam": ("cifar_resnet110", "icasc", "gradcam", {}),
    "cifar100/resnet110_icasc_ach": ("cifar_resnet110", "icasc", "ach", {}),
    "caltech256/resnet18_baseline": ("resnet18", "baseline", "ach", {}),
    "caltech256/resnet18_icasc_gradcam": ("resnet18", "icasc", "gradcam", {}),
    "caltech256/resnet18_icasc_ach": ("resnet18", "icasc", "ach", {}),
    "caltech256/vgg19_baseline": ("vgg19", "baseline", "ach", {}),
    "caltech256/vgg19_icasc_ach": ("vgg19", "icasc", "ach", {}),
    "imagenet/resnet18_baseline": ("resnet18", "baseline", "ach", {"ten_crop": False}),
    "imagenet/resnet18_icasc_gradcam": ("resnet18", "icasc", "gradcam", {"ten_crop": False}),
    "imagenet/resnet18_icasc_ach": ("resnet18", "icasc", "ach", {"ten_crop": False}),
    "imagenet/resnet18_tencrop_baseline": ("resnet18", "baseline", "ach", {"ten_crop": True}),
    "imagenet/resnet18_tencrop_icasc_ach": ("resnet18", "icasc", "ach", {"ten_crop": True}),
    "cub200/resnet50_baseline": ("resnet50", "baseline", "ach", {}),
    "cub200/resnet50_icasc_gradcam": ("resnet50", "icasc", "gradcam", {}),
    "cub200/resnet50_icasc_ach": ("resnet50", "icasc", "ach", {}),
    "cub200/resnet50_ablation_inner_as": ("resnet50", "inner_as", "ach", {}),
    "cub200/resnet50_ablation_inner_as_ac": ("resnet50", "inner_as_ac", "ach", {}),
    "cub200/resnet101_baseline": ("resnet101", "baseline", "ach", {}),
    "cub200/resnet101_icasc_ach": ("resnet101", "icasc", "ach", {}),
    "voc2012/resnet18_baseline": ("resnet18", "baseline", "ach", {}),
    "voc2012/resnet18_icasc_gradcam": ("resnet18", "icasc", "gradcam", {}),
    "voc2012/resnet18_icasc_ach": ("resnet18", "icasc", "ach", {}),
}


def _compose(preset: str, *overrides: str):
    return compose_train([f"experiment={preset}", *overrides], tiny=False)


def test_every_preset_is_known_and_bases_are_not_rows():
    assert set(ROWS) | NOT_ROWS == set(PRESETS), "add new presets to ROWS (or NOT_ROWS) with their settings"
    bases = sorted(p.parent.name for p in (CONF / "experiment").glob("*/_base.yaml"))
    assert bases == ["caltech256", "cifar100", "cub200", "imagenet", "voc2012"]
    assert not any(name.endswith("_base") for name in PRESETS)


@pytest.mark.parametrize("preset", sorted(ROWS))
def test_preset_has_the_papers_settings(preset):
    backbone, loss, attention, data_extra = ROWS[preset]
    expected = DATASETS[preset.split("/")[0]]
    cfg = _compose(preset)
    assert cfg.data._target_.rsplit(".", 1)[1] == expected["data"]
    assert cfg.model.backbone.name == backbone
    assert cfg.model.backbone.get("weights") is None  # pretrained weights come through init_from
    w = cfg.model.loss.weights
    assert (w.separation_inner, w.separation_last, w.consistency) == LOSSES[loss]
    if loss != "baseline":  # the derivative of Eq. 3, as the paper trains
        assert cfg.model.loss.separation_gradient == "paper"
    assert cfg.model.attention.method == attention
    if "layers" in expected:
        assert (cfg.model.attention.inner_layer, cfg.model.attention.last_layer) == expected["layers"]
    opt = cfg.model.optimizer
    assert opt._target_ == "torch.optim.SGD" and opt.momentum == 0.9 and not opt.nesterov
    assert opt.lr == pytest.approx(expected["lr"]) and opt.weight_decay == pytest.approx(expected["wd"])
    assert cfg.data.batch_size == expected["batch"]
    assert cfg.trainer.max_epochs == expected["epochs"]
    assert cfg.model.scheduler._target_ == expected["scheduler"]
    if expected["scheduler"] == MULTISTEP:
        assert (
            list(cfg.model.scheduler.milestones) == expected["milestones"]
            and cfg.model.scheduler.gamma == 0.1
        )
    else:
        assert cfg.model.scheduler.cycles == expected["cycles"]
        assert cfg.model.scheduler.total_epochs == expected["epochs"]  # follows trainer.max_epochs
    assert cfg.init_from == expected["init_from"]
    for key, value in {**expected["data_extra"], **data_extra}.items():
        assert cfg.data[key] == value, key
    assert cfg.optimized_metric == ("val/map" if cfg.data.multilabel else "val/top1")
    assert "paper" in cfg.tags and preset.split("/")[0] in cfg.tags


def _strip_loss(preset: str) -> dict:
    cfg = OmegaConf.to_container(_compose(preset), resolve=False)
    del cfg["model"]["loss"], cfg["tags"]
    return cfg


@pytest.mark.parametrize("baseline", sorted(p for p in ROWS if ROWS[p][1] == "baseline"))
def test_baseline_differs_from_its_icasc_row_in_the_loss_only(baseline):
    icasc = baseline.replace("_baseline", "_icasc_ach")
    assert icasc in ROWS
    assert _strip_loss(baseline) == _strip_loss(icasc)


def test_pretrained_start_is_overridable():
    cfg = _compose("cub200/resnet50_icasc_ach", "init_from=null")
    assert cfg.init_from is None
    cfg = _compose("caltech256/resnet18_icasc_ach", "data.train_per_class=30")
    assert cfg.data.train_per_class == 30


# ------------------------------------------------------------------------------------ fast_dev_run


# four fake VOC validation images leave most classes without positives: torchmetrics warns
@pytest.mark.filterwarnings(
    "ignore:No positive samples:UserWarning", "ignore:No negative samples:UserWarning"
)
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_fast_dev_run_on_fake_data(preset, fake_roots, tmp_path):
    dataset = preset.split("/")[0]
    root, data_overrides = fake_roots(dataset)
    cfg = compose_train(
        [
            f"experiment={preset}",
            f"data.root={root}",
            *data_overrides,
            *fakedata.SHRINK[dataset],
            "data.batch_size=4",
            "data.num_workers=0",
            "data.pin_memory=false",
            "init_from=null",  # pretrained weights cannot be downloaded here
            "+trainer.fast_dev_run=true",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "export=false",
            "figure.enabled=false",
        ],
        output_dir=tmp_path,
        tiny=False,
    )
    loss = ROWS[preset][1] if preset in ROWS else None
    result = run(cfg)
    metrics = result["metrics"]
    score = "val/map" if cfg.data.multilabel else "val/top1"
    assert 0.0 <= metrics[score] <= 1.0
    assert all(v == v for v in metrics.values() if isinstance(v, float)), metrics  # no NaN
    if loss is not None:
        # the attention terms are logged exactly when the preset switches them on (ten-crop evaluation scores
        # the crop-averaged prediction alone: no maps)
        maps = not cfg.data.get("ten_crop", False)
        weights = dict(zip(("separation_inner", "separation_last", "consistency"), LOSSES[loss], strict=True))
        for term, w in weights.items():
            assert (f"val/{term}" in metrics) == (w > 0 and maps), term
