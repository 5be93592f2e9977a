"""GroupCAMAugmentation in real runs: the composed train config, and DDP on CPU (gloo, 2 processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from icasc.callbacks import GroupCAMAugmentation
from icasc.losses import ICASCLoss
from icasc.models import ICASCModule
from icasc.tasks.train import run
from tests.conftest import ROOT, compose_train
from tests.helpers import FixedData

pytestmark = pytest.mark.slow


def test_train_config_with_groupcam_augmentation_trains_and_logs_grids(tmp_path: Path) -> None:
    # callbacks=groupcam_augmentation holds the defaults the fine-tuning study chose: the paper's procedure
    # with a blur relative to the image size, ending the fit on original images
    study = compose_train(["callbacks=groupcam_augmentation"], tmp_path).callbacks.groupcam_augmentation
    assert (study.blur_relative, study.blur_kernel, study.blur_sigma) == (True, 0.25, 0.05)
    assert (study.p, study.p_end, study.mode, study.mask_class, study.threshold) == (
        1.0,
        0.0,
        "replace",
        "target",
        "image_mean",
    )
    cfg = compose_train(
        [
            "callbacks=groupcam_augmentation_paper",
            "callbacks.groupcam_augmentation.log_every_n_steps=1",
            "callbacks.groupcam_augmentation.log_images=2",
            "figure.enabled=false",
        ],
        tmp_path,
    )
    # The default callbacks stay; the augmentation is added with the paper's settings.
    assert {"model_checkpoint", "learning_rate_monitor", "groupcam_augmentation"} <= set(cfg.callbacks)
    node = cfg.callbacks.groupcam_augmentation
    assert (node.groups, node.threshold, node.compose, node.p, node.mode) == (
        16,
        "image_mean",
        "paper",
        1.0,
        "replace",
    )
    assert (node.blur_kernel, node.blur_sigma, node.blur_relative, node.p_end) == (51, 50.0, False, None)
    result = run(cfg)
    assert result["metrics"]["val/top1"] >= 0.0
    grids = tmp_path / "csv" / "groupcam_augmentation"
    assert sorted(p.name for p in grids.iterdir()) == ["step_000000.png", "step_000001.png"]
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("groupcam_augmentation/kept_fraction")
    kept = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert len(kept) == 2 and all(0.0 < k < 1.0 for k in kept)


# ------------------------------------------------------------------------------------------------ DDP


class Before(L.Callback):
    """Placed before the augmentation: keeps the batch as the loader delivered it."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.delivered.append(batch["image"].clone())


class Report(L.Callback):
    """Placed after it: hooks on the layer during training, and a per-rank JSON report at teardown."""

    def __init__(self, out: Path, cb: GroupCAMAugmentation) -> None:
        self.out, self.cb, self.hooks = out, cb, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.hooks.append(len(pl_module.backbone.layer2._forward_hooks))

    def teardown(self, trainer, pl_module, stage) -> None:
        pairs = zip(pl_module.delivered, pl_module.trained_on, strict=True)
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "hooks_during": self.hooks,
            "hooks_after": len(pl_module.backbone.layer2._forward_hooks),
            "augmented_batches": self.cb.augmented_batches,
            "changed": [not torch.equal(a, b) for a, b in pairs],
            "grids": self.cb.logged_grids,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


class Module(ICASCModule):
    def __init__(self) -> None:
        off = {"separation_inner": 0.0, "separation_last": 0.0, "consistency": 0.0}
        super().__init__(
            {"name": "tiny_cnn", "width": 4}, 4, loss=ICASCLoss(weights=off), val_attention=False
        )
        self.delivered: list[torch.Tensor] = []
        self.trained_on: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.trained_on.append(batch["image"].clone())
        return super().training_step(batch, batch_idx)


def test_ddp_each_rank_augments_its_shard_and_removes_its_hook(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = GroupCAMAugmentation(groups=4, log_every_n_steps=1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        default_root_dir=tmp_path,
        callbacks=[Before(), cb, Report(tmp_path, cb)],
    )
    trainer.fit(Module(), train_dataloaders=DataLoader(FixedData(), batch_size=2, shuffle=False))
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["rank"] == rank and report["world_size"] == 2
        assert report["hooks_during"] == [1, 1] and report["hooks_after"] == 0
        assert report["augmented_batches"] == 2 and report["changed"] == [True, True]
    assert [r["grids"] for r in reports] == [2, 0]  # only global rank 0 logs pictures
    assert sorted(p.name for p in (tmp_path / "groupcam_augmentation").iterdir()) == [
        "step_000000.png",
        "step_000001.png",
    ]


def test_bench_augment_prints_json_last_line() -> None:
    args = "augment --backbone tiny_cnn --image-size 32 --batch-size 2 --groups 4 --repeats 1 --warmup 0"
    proc = subprocess.run(
        [sys.executable, "-m", "icasc.bench", *args.split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    keys = {"plain_s", "callback_s", "per_image_s", "overhead", "speedup", "essential_s", "essential_ratio"}
    assert keys <= set(result) and result["speedup"] == pytest.approx(
        result["per_image_s"] / result["callback_s"]
    )
