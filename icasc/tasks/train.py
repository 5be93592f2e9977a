"""The train task: (init_from,) fit, (test), export the best model, draw attention maps, print a summary.

A run with ``init_from`` starts from those weights (a checkpoint, an export or ``torchvision:<WEIGHTS>``),
records them in the model card, and ends with the before/after report of the initial and the final model;
with ``before_after.control=true`` it also trains the control (the same run without the Group-CAM
augmentation callback) in ``<run dir>/control`` and scores it beside them.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict

from icasc.callbacks.run_state import RunState
from icasc.data.contract import DataInfo, check_data_fits_model, describe_data
from icasc.data.transforms import centre_view
from icasc.models.export import export_backbone
from icasc.models.files import check_checkpoint_file
from icasc.models.loading import load_classifier, load_module_checkpoint, load_weights_into
from icasc.models.module import ICASCModule
from icasc.models.record import ModelRecord
from icasc.tasks.before_after import before_after_markdown, resolve_init_from, write_before_after
from icasc.tasks.export import check_split, model_card, report_for_run
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
    data: DataInfo,
    metrics: dict[str, float],
    cfg: DictConfig,
    out: Path,
    extra: dict[str, Any],
) -> Path:
    card = {**model_card(module, data, metrics, cfg), **extra}
    return export_backbone(module.backbone, out / "export", card)["weights"]


def _init_from(cfg: DictConfig) -> str | None:
    value = cfg.get("init_from")
    return str(value) if value else None


# the report's metrics of the final model that join the run's metrics, as ``{split}/groupcam_<name>``
_REPORT_METRICS = ("deletion_auc", "insertion_auc", "pointing_game", "mass_in_box")


def _wants_report(cfg: DictConfig) -> bool:
    settings = cfg.get("before_after")
    return bool(settings and settings.get("num_images"))


def _augmentation_callbacks(cfg: DictConfig) -> list[str]:
    """Names of the configured callbacks that augment training images (what a control leaves out)."""
    callbacks = cfg.get("callbacks") or {}
    return [
        name
        for name, node in callbacks.items()
        if node is not None and str(node.get("_target_", "")).endswith("GroupCAMAugmentation")
    ]


def _check_before_after(cfg: DictConfig, init_from: str | None, trainer: L.Trainer) -> Any:
    """The report's options checked before training; returns the control: ``True``, a path, or ``None``."""
    settings = cfg.get("before_after") or {}
    split = settings.get("split", "val")
    if init_from and _wants_report(cfg):
        check_split(split)
    control = settings.get("control")
    if not control:
        return None
    if not init_from or not _wants_report(cfg):
        raise ValueError(
            "before_after.control compares fine-tunes in the before/after report: it needs init_from=<the "
            "model to fine-tune> and before_after.num_images > 0 (or set before_after.control=false)"
        )
    if control is True:
        if not _augmentation_callbacks(cfg):
            raise ValueError(
                "before_after.control=true trains the same run without the Group-CAM augmentation "
                "callback, but this run has none: add callbacks=groupcam_augmentation, or set "
                "before_after.control=false"
            )
        if trainer.world_size > 1:
            raise ValueError(
                "before_after.control=true trains the control in this process, which DDP does not allow: "
                "train the control as its own run (callbacks=default) and pass before_after.control=<its "
                "checkpoint or export>"
            )
        return True
    if not Path(str(control)).exists():
        raise FileNotFoundError(
            f"before_after.control={control}: no such file or directory (true, false, or the plain "
            "fine-tune's .ckpt, export directory or model.safetensors)"
        )
    return str(control)


def _train_control(cfg: DictConfig, out: Path) -> str:
    """Train the control -- this run without its augmentation callbacks -- in ``out/control``.

    Same seed, data order, initial weights, optimiser, schedule and epochs; no export, figure or report of
    its own. A control interrupted earlier is resumed from its ``last.ckpt``.

    Returns:
        Its best checkpoint.
    """
    control = copy.deepcopy(cfg)
    folder = out / "control"
    last = folder / "checkpoints" / "last.ckpt"
    with open_dict(control):
        for name in _augmentation_callbacks(cfg):
            del control.callbacks[name]
        control.paths.output_dir = str(folder)
        control.train = True
        control.ckpt_path = str(last) if last.is_file() else None
        control.export = False
        if control.get("figure") is not None:
            control.figure.enabled = False
        control.before_after.num_images = 0
        control.before_after.control = False
    log.info("training the control (no augmentation) in %s", folder)
    best = run(control)["outputs"].get("best checkpoint")
    return best or str(last)


def _before_after(
    module: ICASCModule,
    datamodule: Any,
    init_from: str,
    cfg: DictConfig,
    source: str,
    control: str | None,
) -> dict[str, Any] | None:
    """The before/after report of a run that started from ``init_from`` (``None`` when switched off)."""
    if not _wants_report(cfg):
        return None
    control_model = None if control is None else (load_classifier(control)[0], control)
    return report_for_run(
        module.backbone,
        ModelRecord.from_module(module),
        init_from,
        datamodule,
        cfg.before_after,
        source,
        control_model,
        module.pointing_tolerance,
    )


def _figure(module: ICASCModule, datamodule: Any, data: DataInfo, n: int, path: Path) -> Path:
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
            data.display_mean,
            data.display_std,
            data.class_names,
            boxes,
        )
    finally:
        module.train(was_training)


def _loaders(cfg: DictConfig) -> tuple[str, ...]:
    """The data module's loaders this run uses (what :func:`describe_data` checks it has)."""
    loaders = ["train", "val"] if cfg.get("train", True) else ["val"]
    report_split = (cfg.get("before_after") or {}).get("split", "val")
    if cfg.get("test") or (_init_from(cfg) and _wants_report(cfg) and report_split == "test"):
        loaders.append("test")
    return tuple(loaders)


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
    # the contract, before any work: one message lists everything the data module lacks
    data = describe_data(datamodule, _loaders(cfg))
    module: ICASCModule = hydra.utils.instantiate(cfg.model, _convert_="all")
    check_data_fits_model(
        data,
        module.num_classes,
        module.multilabel,
        "the model",
        "set model.num_classes to the data's (the configs use ${data.num_classes})",
        f"set model.loss.multilabel={data.multilabel}",
    )
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
    control = _check_before_after(cfg, init_from, trainer)
    if control is True and not cfg.get("train", True):
        raise ValueError(
            "before_after.control=true trains the control, and train=false trains nothing: pass "
            "before_after.control=<the plain fine-tune's checkpoint or export> to score one"
        )
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
            if control is True:
                control = _train_control(cfg, out)
            report = _before_after(module, datamodule, init_from, cfg, best or "the final weights", control)
        if report is not None:
            split = report["split"]
            for name in _REPORT_METRICS:
                if name in report["finetuned"]:
                    metrics.setdefault(f"{split}/groupcam_{name}", report["finetuned"][name])
            extra["before_after"] = report
            outputs["before/after report"] = str(write_before_after(report, out)["markdown"])
        if cfg.get("export", True):
            outputs["exported model"] = str(_export(module, data, metrics, cfg, out, extra))
        if cfg.get("figure") and cfg.figure.get("enabled", True):
            n = int(cfg.figure.get("num_images", 6))
            outputs["attention figure"] = str(
                _figure(module, datamodule, data, n, out / "attention_maps.png")
            )
        print(_summary(metrics, outputs), flush=True)
        if report is not None:
            print(before_after_markdown(report), flush=True)
    _release_process_group()
    return {"metrics": metrics, "outputs": outputs, "before_after": report}
