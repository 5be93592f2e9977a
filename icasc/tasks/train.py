"""The train task: (init_from,) fit, (test), export the best model, draw attention maps, print a summary.

A run with ``init_from`` starts from those weights (a checkpoint, an export or ``torchvision:<WEIGHTS>``),
records them in the model card, and ends with the before/after report of the initial and the final model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from icasc.callbacks.run_state import RunState
from icasc.data.transforms import centre_view
from icasc.models.export import export_backbone
from icasc.models.files import check_checkpoint_file
from icasc.models.loading import load_module_checkpoint, load_weights_into
from icasc.models.module import ICASCModule
from icasc.tasks.before_after import before_after_markdown, resolve_init_from, write_before_after
from icasc.tasks.export import model_card, report_for_run
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
    module: ICASCModule,
    datamodule: Any,
    metrics: dict[str, float],
    cfg: DictConfig,
    out: Path,
    extra: dict[str, Any],
) -> Path:
    card = {**model_card(module, datamodule, metrics, cfg), **extra}
    return export_backbone(module.backbone, out / "export", card)["weights"]


def _init_from(cfg: DictConfig) -> str | None:
    value = cfg.get("init_from")
    return str(value) if value else None


def _before_after(
    module: ICASCModule, datamodule: Any, init_from: str, cfg: DictConfig, out: Path, source: str
) -> dict[str, Any] | None:
    """The before/after report of a run that started from ``init_from`` (``None`` when switched off)."""
    settings = cfg.get("before_after")
    if not settings or not settings.get("num_images"):
        return None
    spec = dict(module.backbone_spec)
    info = {
        "backbone": spec.pop("name"),
        "backbone_kwargs": spec,
        "num_classes": module.num_classes,
        "attention_layers": dict(module.attention.layers),
    }
    return report_for_run(module.backbone, info, init_from, datamodule, settings, source)


def _figure(module: ICASCModule, datamodule: Any, n: int, path: Path) -> Path:
    batch = next(iter(datamodule.val_dataloader()))
    images = centre_view(batch["image"][:n]).to(module.device)
    targets = batch["target"][:n].to(module.device)
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


def _check_output_dir(out: Path, resume: str | None) -> None:
    """Refuse to start a new run in a folder that holds another run's checkpoints or metrics."""
    if resume:
        return
    taken = [p for p in (out / "checkpoints" / "last.ckpt", out / "csv" / "metrics.csv") if p.exists()]
    if taken:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(str(p) for p in taken)}). Resume it with "
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'} (same hydra.run.dir), or start a new run in "
            "another folder (leave hydra.run.dir unset, or give a new one)."
        )


def _release_process_group() -> None:
    """Destroy the DDP process group when the run is over.

    Lightning destroys only NCCL groups at exit; a gloo group (DDP on CPUs) left alive has its threads
    torn down at interpreter shutdown, which can abort the process (SIGABRT).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank leaves while another still uses the group
        torch.distributed.destroy_process_group()


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
        ``{"metrics": {...}, "outputs": {...}, "before_after": report or None}``; the value named by
        ``cfg.optimized_metric`` is in metrics; the report exists for runs with ``init_from`` (rank 0).

    Raises:
        ValueError: ``init_from`` is required by the preset (``icasc_required``) but not given, or its weights
            do not fit the configured backbone (see :func:`~icasc.models.loading.load_weights_into`).
        FileExistsError: A new run (no ``ckpt_path``) would write into a folder that holds another run.
    """
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    init_from = _init_from(cfg)
    resume = cfg.get("ckpt_path") if cfg.get("train", True) else None
    if cfg.get("train", True):
        _check_output_dir(out, resume)
    if resume:
        check_checkpoint_file(resume, "ckpt_path")  # before any work: a truncated file fails now
    # _convert_="all": plain dicts and lists reach the constructors, so checkpoints hold no DictConfig
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    module: ICASCModule = hydra.utils.instantiate(cfg.model, _convert_="all")
    if init_from:
        loaded = load_weights_into(module.backbone, init_from, arch=module.backbone_spec["name"])
        log.info("initialised the backbone from %s (%d tensors)", init_from, loaded["tensors"])
    # RunState: RNG states and logger rows in every checkpoint, so a resumed run continues exactly
    callbacks = [*_instantiate_dict(cfg.get("callbacks")), RunState()]
    loggers = _instantiate_dict(cfg.get("logger"))
    if not loggers and any(isinstance(c, LearningRateMonitor) for c in callbacks):
        # logger=none: the learning-rate monitor has nowhere to write (Lightning refuses it without a logger)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        log.info("no logger: the learning-rate monitor is left out")
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        best = _best_checkpoint(trainer)
    else:
        # train=false: score (and export) the given checkpoint.
        best = cfg.get("ckpt_path")
        if not best:
            raise ValueError("train=false needs ckpt_path=<a Lightning checkpoint> to evaluate and export")
    # Score the model that gets exported: the best checkpoint where one exists.
    if best:
        module = load_module_checkpoint(best, "ckpt_path")
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
    report = None
    if trainer.is_global_zero:
        extra: dict[str, Any] = {"init_from": resolve_init_from(init_from) if init_from else None}
        if init_from:
            report = _before_after(module, datamodule, init_from, cfg, out, best or "the final weights")
        if report is not None:
            extra["before_after"] = report
            outputs["before/after report"] = str(write_before_after(report, out)["markdown"])
        if cfg.get("export", True):
            outputs["exported model"] = str(_export(module, datamodule, metrics, cfg, out, extra))
        if cfg.get("figure") and cfg.figure.get("enabled", True):
            n = int(cfg.figure.get("num_images", 6))
            outputs["attention figure"] = str(_figure(module, datamodule, n, out / "attention_maps.png"))
        print(_summary(metrics, outputs), flush=True)
        if report is not None:
            print(before_after_markdown(report), flush=True)
    _release_process_group()
    return {"metrics": metrics, "outputs": outputs, "before_after": report}
