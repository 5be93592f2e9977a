"""Checkpoints hold plain data (weights_only loading), rebuild the module, carry what a resume needs."""

from __future__ import annotations

import functools
import random

import lightning as L
import numpy as np
import pytest
import torch

from icasc.callbacks.run_state import rng_state, set_rng_state
from icasc.loggers import ResumableCSVLogger
from icasc.losses import ICASCLoss
from icasc.models import ICASCModule
from icasc.models.hparams import build_factory, factory_spec, plain
from icasc.models.loading import load_module_checkpoint
from icasc.models.schedulers import CyclicCosineAnnealingLR


def _module(**kwargs) -> ICASCModule:
    defaults = dict(
        backbone={"name": "tiny_cnn", "width": 8},
        num_classes=4,
        loss=ICASCLoss(weights={"consistency": 0.5}, sigma=0.4),
        optimizer=functools.partial(torch.optim.SGD, lr=0.3, momentum=0.9),
        scheduler=functools.partial(CyclicCosineAnnealingLR, total_epochs=4, cycles=2),
    )
    return ICASCModule(**{**defaults, **kwargs})


def _save(module: ICASCModule, path) -> None:
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


def test_hyper_parameters_are_plain_data_and_rebuild_the_module(tmp_path):
    module = _module()
    path = tmp_path / "m.ckpt"
    _save(module, path)
    hp = torch.load(path, weights_only=True)["hyper_parameters"]  # no allow-list needed
    assert hp["loss"]["weights"] == {"separation_inner": 1.0, "separation_last": 1.0, "consistency": 0.5}
    assert hp["optimizer"] == {"target": "torch.optim.sgd.SGD", "kwargs": {"lr": 0.3, "momentum": 0.9}}
    assert hp["scheduler"]["target"] == "icasc.models.schedulers.CyclicCosineAnnealingLR"

    loaded = load_module_checkpoint(path)
    assert loaded.loss.config() == module.loss.config()
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    optimizer = loaded.optimizer_factory(loaded.parameters())
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.3
    scheduler = loaded.scheduler_factory(optimizer)
    assert isinstance(scheduler, CyclicCosineAnnealingLR) and scheduler.cycles == 2


def test_loading_does_not_download_pretrained_weights_again(tmp_path, monkeypatch):
    module = _module(backbone={"name": "resnet18"}, num_classes=3)
    module.hparams["backbone"]["weights"] = "IMAGENET1K_V1"  # as a run that started from them records it
    path = tmp_path / "m.ckpt"
    _save(module, path)

    def no_network(*args, **kwargs):
        raise AssertionError("loading a checkpoint must not fetch pretrained weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    loaded = load_module_checkpoint(path)
    assert torch.equal(loaded.backbone.conv1.weight, module.backbone.conv1.weight)


def test_factory_records_refuse_other_classes_and_non_data():
    assert factory_spec(None) is None and factory_spec({}) is None
    with pytest.raises(ValueError, match=r"is not a torch\.optim\.optimizer\.Optimizer; refused"):
        build_factory({"target": "os.system", "kwargs": {}}, torch.optim.Optimizer, "optimizer")
    with pytest.raises(ValueError, match=r"cannot import 'no\.such\.Thing'"):
        build_factory({"target": "no.such.Thing", "kwargs": {}}, torch.optim.Optimizer, "optimizer")
    spec = factory_spec(lambda params: torch.optim.SGD(params, lr=1.0))
    assert spec["target"] is None and "lambda" in spec["repr"]
    with pytest.raises(ValueError, match="pass optimizer= to load_from_checkpoint"):
        build_factory(spec, torch.optim.Optimizer, "optimizer")


def test_an_empty_scheduler_config_means_no_scheduler():
    module = _module(scheduler={})  # what model/scheduler=none composes to
    assert module.scheduler_factory is None and module.hparams["scheduler"] is None
    assert isinstance(module.configure_optimizers(), torch.optim.SGD)


def test_plain_converts_nested_configs():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"a": [1, {"b": (2, 3)}], "c": {"d": None}})
    assert plain(cfg) == {"a": [1, {"b": [2, 3]}], "c": {"d": None}}


def test_rng_state_round_trip_and_loads_with_weights_only(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_csv_logger_appends_and_truncates_to_a_checkpoint(tmp_path):
    logger = ResumableCSVLogger(tmp_path, name="csv", version="")
    for step in range(4):
        logger.log_metrics({"loss": float(step), "epoch": step // 2}, step=step)
    logger.save()
    assert logger.rows == 4

    resumed = ResumableCSVLogger(tmp_path, name="csv", version="")  # Lightning's would delete the file
    assert resumed.rows == 4
    resumed.truncate(1, keep_epoch=0)  # a checkpoint after row 1; row 2 is its epoch's aggregate (epoch 0)
    resumed.log_metrics({"loss": 10.0, "epoch": 1, "acc": 0.5}, step=2)  # a new column rewrites the header
    resumed.save()
    text = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert text[0] == "acc,epoch,loss,step"
    assert [line.split(",")[-1] for line in text[1:]] == ["0", "1", "2"]
    assert text[-1] == "0.5,1,10.0,2"


def test_a_kill_while_metrics_csv_is_rewritten_loses_no_logged_row(tmp_path, monkeypatch):
    """A new column makes the logger write metrics.csv anew; a crash half-way must leave the old file whole.

    Lightning rewrites the file in place (truncate, then write): SIGKILL in between emptied it, and the
    resumed run then lacked every row logged before the crash (seen once in the resume test under load).
    """
    import csv as csv_module

    logger = ResumableCSVLogger(tmp_path, name="csv", version="")
    for step in range(3):
        logger.log_metrics({"loss": float(step), "epoch": 0}, step=step)
    logger.save()
    path = tmp_path / "csv" / "metrics.csv"
    before = path.read_text()

    def killed(self, rows):
        raise KeyboardInterrupt("killed while writing")

    logger.log_metrics({"loss": 3.0, "epoch": 1, "acc": 0.5}, step=3)  # a new column: the file is rewritten
    with monkeypatch.context() as patch:
        patch.setattr(csv_module.DictWriter, "writerows", killed)
        with pytest.raises(KeyboardInterrupt):
            logger.save()
        assert path.read_text() == before
        with pytest.raises(KeyboardInterrupt):
            ResumableCSVLogger(tmp_path, name="csv", version="").truncate(2)
        assert path.read_text() == before
    resumed = ResumableCSVLogger(tmp_path, name="csv", version="")
    resumed.truncate(2)
    assert [r["step"] for r in csv_module.DictReader(path.open())] == ["0", "1"]
