"""The train task: fit, (test), export the best model, draw attention maps, print a summary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from icasc.models.export import config_hash, export_backbone
from icasc.models.module import ICASCModule
from icasc.visualize import attention_figure

__all__ = ["run"]

log = logging.getLogger(__name__)


def _instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def _as_float(value: Any) -> Any:
    return float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else value


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    path = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
    return path or None


def _export(
    module: ICASCModule, datamodule: Any, metrics: dict[str, float], cfg: DictConfig, out: Path
) -> Path:
    card = {
        "backbone": module.backbone_spec["name"],
        # `weights` only initialised training; the exported file holds the trained weights.
        "backbone_kwargs": {k: v for k, v in module.backbone_spec.items() if k not in ("name", "weights")},
        "init_weights": module.backbone_spec.get("weights"),
        "num_classes": module.num_classes,
        "multilabel": module.multilabel,
        "class_names": list(getattr(datamodule, "class_names", []) or []),
        "input": {
            "image_size": getattr(datamodule, "image_size", None),
            "mean": list(datamodule.mean),
            "std": list(datamodule.std),
        },
        "attention": {"method": module.attention.method, "layers": dict(module.attention.layers)},
        "loss_weights": dict(module.loss.weights),
        "metrics": metrics,
        "config_hash": config_hash(OmegaConf.to_container(cfg, resolve=True)),
    }
    return export_backbone(module.backbone, out / "export", card)["weights"]


def _figure(module: ICASCModule, datamodule: Any, n: int, path: Path) -> Path:
    batch = next(iter(datamodule.val_dataloader()))
    images, targets = batch["image"][:n].to(module.device), batch["target"][:n].to(module.device)
    boxes = batch["box"][:n] if "box" in batch else None
    was_training = module.training
    module.eval()
    try:
        return attention_figure(
            module.attention,
            images,
            targets,
            path,
            datamodule.mean,
            datamodule.std,
            getattr(datamodule, "class_names", None),
            boxes,
        )
    finally:
        module.train(was_training)


def _summary(metrics: dict[str, float], outputs: dict[str, str | None]) -> str:
    rows = [(k, f"{v:.4f}") for k, v in sorted(metrics.items()) if isinstance(v, float)]
    rows += [(k, v or "-") for k, v in outputs.items()]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([line, *(f"{k:<{width}}  {v}" for k, v in rows), line])


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured module on the configured data and return the final metrics and outputs.

    Args:
        cfg: The composed ``train`` config (see ``conf/train.yaml``).

    Returns:
        ``{"metrics": {...}, "outputs": {...}}``; the value named by ``cfg.optimized_metric`` is in metrics.
    """
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    module: ICASCModule = hydra.utils.instantiate(cfg.model)
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        best = _best_checkpoint(trainer)
    else:
        # train=false: score (and export) the given checkpoint.
        best = cfg.get("ckpt_path")
        if not best:
            raise ValueError("train=false needs ckpt_path=<a Lightning checkpoint> to evaluate and export")
    # Score the model that gets exported: the best checkpoint where one exists.
    if best:
        module = ICASCModule.load_from_checkpoint(best, map_location="cpu", weights_only=False)
    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {k: _as_float(v) for k, v in (results[0] if results else {}).items()}
    if cfg.get("test"):
        tested = trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: _as_float(v) for k, v in (tested[0] if tested else {}).items()})

    outputs: dict[str, str | None] = {
        "best checkpoint": best,
        "exported model": None,
        "attention figure": None,
    }
    if trainer.is_global_zero:
        if cfg.get("export", True):
            outputs["exported model"] = str(_export(module, datamodule, metrics, cfg, out))
        if cfg.get("figure") and cfg.figure.get("enabled", True):
            n = int(cfg.figure.get("num_images", 6))
            outputs["attention figure"] = str(_figure(module, datamodule, n, out / "attention_maps.png"))
        print(_summary(metrics, outputs), flush=True)
    return {"metrics": metrics, "outputs": outputs}
