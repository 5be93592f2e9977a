"""The export task: score a fine-tuned model against the model it started from, and export it.

``python train.py -cn export ckpt_path=<fine-tuned .ckpt or export> [init_from=...] [num_images=256]``
evaluates the initial and the fine-tuned model on the same validation images (top-1, top-5, and the
deletion and insertion AUC of Group-CAM maps of the true class, Group-CAM paper §4.3) and writes, under the
run directory, ``export/model.safetensors`` + ``export/model_card.json`` (with ``before_after``),
``before_after.json`` and ``before_after.md``. The train task writes the same report at the end of a run
that started from ``init_from``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import nn

from icasc.data.contract import DataInfo, check_data_fits_model, describe_data
from icasc.models.backbones import default_attention_layers
from icasc.models.export import config_hash, export_backbone
from icasc.models.loading import TORCHVISION_PREFIX, load_classifier_record
from icasc.models.module import ICASCModule
from icasc.models.record import ModelRecord, build_card
from icasc.tasks.before_after import (
    before_after_markdown,
    before_after_report,
    find_init_from,
    initial_model,
    resolve_init_from,
    write_before_after,
)

__all__ = ["SPLITS", "check_split", "model_card", "report_for_run", "run"]

SPLITS = ("val", "test")


def check_split(split: Any) -> None:
    """Raise ``ValueError`` unless ``split`` names a held-out split the report can draw from."""
    if split not in SPLITS:
        raise ValueError(f"before_after.split must be one of {SPLITS} (the held-out images), got {split!r}")


log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- the tasks


def model_card(module: ICASCModule, data: DataInfo, metrics: Mapping[str, Any], cfg: DictConfig) -> dict:
    """The model card of a trained :class:`~icasc.models.ICASCModule` (see ``export_backbone``).

    Args:
        module: The trained module.
        data: What its data module gives (:func:`~icasc.data.contract.describe_data`): class names, input
            size and normalisation, each ``None``/empty when the data module does not give it (unknown).
        metrics: The metrics to record.
        cfg: The composed config (hashed into ``config_hash``).
    """
    return build_card(ModelRecord.from_module(module), data, metrics, _config_hash(cfg))


def _config_hash(cfg: DictConfig) -> str:
    return config_hash(OmegaConf.to_container(cfg, resolve=True))


def _settings(node: DictConfig) -> dict[str, Any]:
    """The report options of a config node, as plain values."""
    settings = {}
    for key in ("num_images", "batch_size", "seed", "groupcam", "faithfulness", "device", "split"):
        value = node.get(key)
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if value is not None:
            settings[key] = value
    return settings


def report_for_run(
    finetuned: nn.Module,
    record: ModelRecord,
    init_from: str,
    datamodule: Any,
    settings: DictConfig,
    finetuned_source: str,
    control: tuple[nn.Module, str] | None = None,
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Build the initial model from ``init_from`` and score both (the step the train and export task share).

    Args:
        finetuned: The fine-tuned backbone.
        record: What it is (its backbone, class count and attention layers).
        init_from: The initial weights.
        datamodule: Provides the held-out split (``val_dataloader()``, or ``test_dataloader()``).
        settings: ``num_images``, ``batch_size``, ``seed``, ``groupcam``, ``faithfulness``, ``device``,
            ``split`` (``"val"``, the default, or ``"test"``), ``layer`` (``None``: the model's last
            attention layer).
        finetuned_source: What the fine-tuned model was loaded from (for the table).
        control: ``(model, source)`` of the control (the plain fine-tune of the same length), if any.
        tolerance: Pointing-game tolerance in pixels (``None``: inside the box).

    Raises:
        ValueError: ``split`` is not ``"val"`` or ``"test"``.
    """
    initial, loaded = initial_model(init_from, record.backbone, record.num_classes, record.backbone_kwargs)
    if loaded["head_replaced"]:
        log.warning(
            "the initial model's head was freshly initialised (%s has 1000 classes, the model %d): its "
            "'before' accuracy is that of a random head",
            init_from,
            record.num_classes,
        )
    layer = (
        settings.get("layer") or record.attention_layers.get("last") or default_attention_layers(finetuned)[1]
    )
    options = _settings(settings)
    split = options.pop("split", "val")
    check_split(split)
    datamodule.setup("validate" if split == "val" else "test")
    dataset = (datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()).dataset
    sources = {"initial": init_from, "finetuned": finetuned_source}
    if control is not None:
        sources["control"] = control[1]
    report = before_after_report(
        initial,
        finetuned,
        dataset,
        layer,
        **options,
        sources=sources,
        control=None if control is None else control[0],
        tolerance=tolerance,
        split=split,
    )
    report["initial_head_replaced"] = loaded["head_replaced"]
    return report


def _load_finetuned(path: Path, data: DataInfo, cfg: DictConfig) -> tuple[nn.Module, ModelRecord, dict]:
    """The fine-tuned backbone (eval mode), its record, and the base of its model card.

    An export's card keeps the hash of the config that trained it; a checkpoint's gets this task's.
    """
    model, record = load_classifier_record(path)
    trained_with = record.source_card.get("config_hash") or _config_hash(cfg)
    return model, record, build_card(record, data, {}, trained_with)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` against its initial model, export it with a model card and the report.

    Args:
        cfg: The composed ``export`` config (see ``conf/export.yaml``).

    Returns:
        ``{"metrics": the fine-tuned model's scores, "before_after": report, "outputs": {...}}``.
    """
    if not cfg.get("ckpt_path"):
        raise ValueError(
            "export needs ckpt_path=<the fine-tuned Lightning .ckpt, an export directory or its "
            "model.safetensors>"
        )
    path = Path(cfg.ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path={path}: no such file or directory")
    init_from = cfg.get("init_from")
    if not init_from:
        found = find_init_from(path)
        if found is None:
            raise ValueError(
                f"no initial model is known for {path}: neither its model card nor the run's "
                ".hydra/config.yaml records init_from; pass init_from=<the .ckpt, export or "
                "torchvision:<WEIGHTS> it started from>"
            )
        init_from, where = found
        log.info("init_from=%s (recorded in %s)", init_from, where)
        if not init_from.startswith(TORCHVISION_PREFIX) and not Path(init_from).exists():
            raise FileNotFoundError(
                f"the init_from recorded in {where}, {init_from}, does not exist (from this directory); "
                "pass init_from=<its current path>"
            )
    datamodule = hydra.utils.instantiate(cfg.data)
    split = cfg.get("split", "val")
    check_split(split)
    data = describe_data(datamodule, loaders=(split,))
    model, record, card = _load_finetuned(path, data, cfg)
    multilabel = record.multilabel
    check_data_fits_model(
        data,
        record.num_classes,
        data.multilabel if multilabel is None else bool(multilabel),  # None: a card that does not record it
        f"ckpt_path={path}",
        "pass the run's data config (e.g. data=imagenet data.root=...)",
        "pass the run's data config (the data= group it was trained on)",
    )
    control = None
    if cfg.get("control"):
        control_path = Path(cfg.control)
        if not control_path.exists():
            raise FileNotFoundError(
                f"control={control_path}: no such file or directory (the plain fine-tune to compare with: "
                "a .ckpt, an export directory or its model.safetensors)"
            )
        control_model, control_record, _ = _load_finetuned(control_path, data, cfg)
        same = (control_record.backbone, control_record.num_classes) == (record.backbone, record.num_classes)
        if not same:
            raise ValueError(
                f"control={control_path} is a {control_record.backbone} with {control_record.num_classes} "
                f"classes, the fine-tuned model a {record.backbone} with {record.num_classes}: the control "
                "must be the same fine-tune without the augmentation"
            )
        control = (control_model, str(control_path))
    tolerance = record.pointing_tolerance
    report = report_for_run(model, record, str(init_from), datamodule, cfg, str(path), control, tolerance)
    out = Path(cfg.paths.output_dir)
    written = write_before_after(report, out)
    card.update(
        {
            "metrics": dict(report["finetuned"]),
            "metrics_note": f"{report['images']} {report['split']} images, see before_after",
            "init_from": resolve_init_from(init_from),
            "before_after": report,
            "exported_from": str(path.resolve()),
        }
    )
    weights = export_backbone(model, out / "export", card)["weights"]
    print(before_after_markdown(report), flush=True)
    outputs = {"exported model": str(weights), **{f"before_after.{k}": str(v) for k, v in written.items()}}
    log.info("exported %s; before/after report in %s", weights, written["markdown"])
    return {"metrics": dict(report["finetuned"]), "before_after": report, "outputs": outputs}
