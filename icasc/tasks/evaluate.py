"""The eval task: score a checkpoint or an export on a data split and write an evaluation report.

``python train.py -cn eval ckpt_path=<.ckpt | export dir | model.safetensors> [data=...] [split=test|val]``
scores the model with the metrics of :class:`~icasc.models.ICASCModule` (the same code as its validation and
test steps: top-1/top-5 and the KS statistic of ICASC Fig. 9, or mAP, AUC and per-class AP for multi-label
data; attention overlap, pointing game and the per-layer attention diagnostics where the batches allow) and
writes, under the run directory, ``report.json``, ``report.md``, ``ks_chart.png`` (single-label) and
``gallery.png``: the attention maps of the most confused images (smallest margin between the true class's and
the most confusing class's probability).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from icasc.data.contract import check_data_fits_model, describe_data
from icasc.data.transforms import centre_view
from icasc.losses.icasc import ICASCLoss
from icasc.metrics.descent_effects import descent_effects
from icasc.metrics.ks import most_confused, true_and_confused_probabilities
from icasc.metrics.pointing_game import resolve_tolerance
from icasc.models.export import WEIGHTS_FILE
from icasc.models.loading import load_trained
from icasc.models.module import ICASCModule
from icasc.models.record import ModelRecord
from icasc.saliency.base import normalize
from icasc.saliency.registry import LAYER_METHODS, build_method
from icasc.utils import denormalize, resolve_device
from icasc.visualize import confusion_gallery, ks_figure

__all__ = ["evaluate_module", "load_module", "mean_descent_effects", "report_markdown", "run"]

log = logging.getLogger(__name__)

SPLITS = ("test", "val")


# ---------------------------------------------------------------------------------------------- loading


def load_module(path: str | Path, multilabel: bool | None = None) -> tuple[ICASCModule, dict[str, Any]]:
    """An :class:`~icasc.models.ICASCModule` for a Lightning checkpoint or around an exported backbone.

    Args:
        path: A Lightning ``.ckpt`` of ``ICASCModule``, an export directory or its ``model.safetensors``.
        multilabel: For exports whose model card does not record it (hand-written cards): the data's.

    Returns:
        ``(module, info)`` with the module on the CPU in eval mode; ``info`` describes the checkpoint
        (``path``, ``kind``, ``backbone``, ``num_classes``, ``multilabel``, ``attention``, ``loss_weights``).

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: A file that is neither a checkpoint nor an export.
    """
    path = Path(path)
    model, module, card = load_trained(path)
    kind = "lightning checkpoint" if module is not None else "export"
    if module is None:
        record = ModelRecord.from_card(card)
        card_multilabel = record.multilabel
        if card_multilabel is None:
            if multilabel is None:
                raise ValueError(
                    f"the model card of {path} does not say whether the model is multi-label; "
                    "pass the data it was trained on"
                )
            log.info(
                "the model card of %s does not record multilabel; using the data's (%s)", path, multilabel
            )
            card_multilabel = multilabel
        # Built from the card's registry name (not around `model`, whose spec would be its class name,
        # e.g. "tinycnn" for tiny_cnn), then filled with the exported weights.
        module = ICASCModule(
            record.backbone_spec,
            record.num_classes,
            loss=ICASCLoss(weights=record.loss_weights, multilabel=bool(card_multilabel)),
            attention={
                "method": record.attention_method or "ach",
                "inner_layer": record.attention_layers.get("inner"),
                "last_layer": record.attention_layers.get("last"),
            },
            pointing_tolerance=resolve_tolerance(None, record.pointing_tolerance),
        )
        module.backbone.load_state_dict(model.state_dict(), strict=True)
    record = ModelRecord.from_module(module)
    info = {
        "path": str(path.resolve()),
        "kind": kind,
        "backbone": record.backbone,
        "num_classes": record.num_classes,
        "multilabel": record.multilabel,
        "attention": record.attention,
        "loss_weights": dict(record.loss_weights or {}),
    }
    return module.eval(), info


# ---------------------------------------------------------------------------------------------- scoring


def evaluate_module(
    module: ICASCModule,
    loader: DataLoader,
    stage: str = "test",
    device: str | torch.device = "auto",
    progress: bool = True,
    limit_batches: int | None = None,
) -> dict[str, Any]:
    """Score ``module`` on every batch of ``loader`` with its own metrics (:meth:`ICASCModule.score_batch`).

    The module is put in eval mode (as Lightning's test loop does) and moved to ``device``; the numbers
    equal those ``Trainer.test`` logs for the same batches. The loss terms are means over the images.

    Args:
        module: The model.
        loader: Batches ``{"image", "target", optional "box"}`` in a fixed order.
        stage: Whose metrics to use, ``"test"`` or ``"val"``.
        device: ``"auto"`` (CUDA when available) or a device.
        progress: Show a tqdm progress bar.
        limit_batches: Score only the first ``limit_batches`` batches (``None``: all).

    Returns:
        ``{"metrics": {name: value}, "probs": [N, C], "targets": [N] or [N, C], "num_images": N}``;
        ``probs`` and ``targets`` are in loader order (CPU), for the chart and the gallery.
    """
    if limit_batches is not None and int(limit_batches) < 1:
        raise ValueError(f"limit_batches must be a positive number of batches or null, got {limit_batches}")
    dev = resolve_device(device)
    module.to(dev).eval()
    module.reset_metrics(stage)
    sums: dict[str, float] = {}
    probs, targets = [], []
    count = 0
    total = len(loader) if limit_batches is None else min(len(loader), int(limit_batches))
    for index, batch in enumerate(tqdm(loader, total=total, desc=f"eval ({stage})", disable=not progress)):
        if index >= total:
            break
        batch = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.no_grad():  # the attention metrics enable autograd where they need it
            scored = module.score_batch(batch, stage, index)
        size = scored["batch_size"]
        for name, value in {"loss": scored["loss"], **scored["terms"]}.items():
            sums[name] = sums.get(name, 0.0) + float(value) * size
        count += size
        probs.append(scored["probs"].cpu())
        targets.append(batch["target"].cpu())
    if count == 0:
        raise ValueError(f"the {stage} split is empty: nothing to evaluate")
    metrics = module.compute_metrics(stage)
    metrics.update({name: value / count for name, value in sums.items()})
    return {"metrics": metrics, "probs": torch.cat(probs), "targets": torch.cat(targets), "num_images": count}


def mean_descent_effects(
    module: ICASCModule,
    loader: DataLoader,
    num_images: int,
    loss_overrides: Mapping[str, Any] | None = None,
    device: str | torch.device = "auto",
) -> dict[str, Any]:
    """Mean over ``num_images`` images of what each ICASC term's descent does to each map's mass in the box.

    See :func:`icasc.metrics.descent_effects.descent_effects`: positive pulls the map onto the object,
    negative pushes it off. The terms are those of the model's loss with ``loss_overrides`` (ICASCLoss
    arguments) applied, so a baseline checkpoint shows what ICASC would do to it, and variants can be
    compared on one model.

    Raises:
        ValueError: The batches carry no ``"box"`` (the effect is measured against the object's box).
    """
    loss = ICASCLoss(**{**module.loss.config(), **dict(loss_overrides or {})})
    dev = resolve_device(device)
    module.to(dev).eval()
    sums: dict[str, dict[str, float]] = {}
    seen = 0
    for batch in loader:
        if "box" not in batch:
            raise ValueError(
                "descent_effects needs data with object boxes (batch['box']), e.g. data=synthetic or "
                "data=fashion_mnist; set descent_effects.num_images=0 for this data"
            )
        take = min(num_images - seen, batch["image"].shape[0])
        images, targets = batch["image"][:take].to(dev), batch["target"][:take].to(dev)
        with torch.enable_grad():
            out = module.attention(images, targets, create_graph=False)
        effects = descent_effects(loss, out, targets, batch["box"][:take].to(dev), tuple(images.shape[-2:]))
        for term, maps in effects.items():
            for key, values in maps.items():
                sums.setdefault(term, {}).setdefault(key, 0.0)
                sums[term][key] += float(values.sum())
        seen += take
        if seen >= num_images:
            break
    return {
        "images": seen,
        "loss": loss.config(),
        "effects": {term: {k: v / max(seen, 1) for k, v in maps.items()} for term, maps in sums.items()},
    }


def _descent_table(entry: Mapping[str, Any]) -> list[str]:
    keys = ("true_inner", "true_last", "conf_inner", "conf_last")
    loss = entry["loss"]
    lines = [
        "",
        "## What each ICASC term does to the maps",
        "",
        f"Over {entry['images']} images: the change of each map's share of mass inside the box per unit step "
        "down the term's gradient (positive: onto the object; negative: off it). Loss settings: "
        f"normalize={loss['normalize']}, separation_gradient={loss['separation_gradient']}.",
        "",
        "| term | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for term, maps in entry["effects"].items():
        lines.append(f"| {term} | " + " | ".join(f"{maps[k]:+.4f}" for k in keys) + " |")
    return lines


# ---------------------------------------------------------------------------------------------- figures


def _sample_boxes(sample: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """A sample's object boxes: ``"box"`` (synthetic, CUB) or the real rows of padded ``"boxes"`` (VOC)."""
    if "box" in sample:
        return sample["box"]
    if "boxes" in sample and "box_labels" in sample:
        return sample["boxes"][sample["box_labels"] >= 0]
    return None


def _gallery(
    module: ICASCModule,
    dataset: Any,
    chosen: Mapping[str, torch.Tensor],
    names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    method: str,
    layer: str,
    path: Path,
) -> dict[str, Any]:
    """Draw ``gallery.png`` of the ``chosen`` images (see :func:`most_confused`); return its report entry."""
    samples = [dataset[int(i)] for i in chosen["index"]]
    images = torch.stack([s["image"] for s in samples])
    crops = images.dim() == 5
    # maps of the centre crop; the probabilities are those of the crop average
    images = centre_view(images)
    images = images.to(module.device)
    explainer = build_method(method, module.backbone, layer)
    true_maps = normalize(explainer.attribute(images, chosen["true_class"].to(images.device)).detach())
    confused_maps = normalize(
        explainer.attribute(images, chosen["confused_class"].to(images.device)).detach()
    )
    pictures = denormalize(images.detach().float(), mean, std).permute(0, 2, 3, 1)
    boxes = None if crops else [_sample_boxes(s) for s in samples]
    rows = [
        f"#{int(i)}  margin {float(m):+.2f}" for i, m in zip(chosen["index"], chosen["margin"], strict=True)
    ]
    true_titles = [
        f"true: {names[int(c)]}  p={float(p):.2f}"
        for c, p in zip(chosen["true_class"], chosen["true_prob"], strict=True)
    ]
    confused_titles = [
        f"confusing: {names[int(c)]}  p={float(p):.2f}"
        for c, p in zip(chosen["confused_class"], chosen["confused_prob"], strict=True)
    ]
    title = f"most confused images · {method} at {layer}" + (" · centre crop" if crops else "")
    confusion_gallery(
        pictures.cpu(), true_maps, confused_maps, rows, true_titles, confused_titles, path, boxes, title
    )
    rule = (
        " (true: the least probable positive class; most confusing: the most probable negative)"
        if module.multilabel
        else ""
    )
    return {
        "selection": (
            f"The {len(rows)} images with the smallest margin p(true) − p(most confusing){rule}; maps: "
            f"{method} at {layer}, each scaled to [0, 1]" + (", of the centre crop." if crops else ".")
        ),
        "method": method,
        "layer": layer,
        "images": [
            {
                "index": int(chosen["index"][i]),
                "true": names[int(chosen["true_class"][i])],
                "confused": names[int(chosen["confused_class"][i])],
                "true_prob": float(chosen["true_prob"][i]),
                "confused_prob": float(chosen["confused_prob"][i]),
                "margin": float(chosen["margin"][i]),
            }
            for i in range(len(rows))
        ],
    }


# ---------------------------------------------------------------------------------------------- report

_LABELS = {
    "top1": ("top-1 (%)", 100),
    "top5": ("top-5 (%)", 100),
    "map": ("mAP (%)", 100),
    "auc": ("AUC (macro)", 1),
    "ks": ("KS statistic (Fig. 9)", 1),
    "ks_threshold": ("KS threshold (probability)", 1),
    "ks_sign": ("KS direction (+1: true class above the confusing one)", 1),
    "attention_overlap": ("attention overlap (L_AS^la) ↓", 1),
    "pointing_game": ("pointing game (%)", 100),
    "loss": ("loss", 1),
}

# The attention diagnostics (ICASCModule: attn_{layer}_{class}_{stat}), shown as one compact table.
_ATTENTION_PREFIX = "attn_"
_ATTENTION_CLASSES = {"true": "true", "conf": "most confusing"}
_ATTENTION_COLUMNS = (
    ("in_box", "mass in box (%)", 100),
    ("pointing", "pointing game (%)", 100),
    ("peak", "peakedness", 1),
)


def _attention_table(report: Mapping[str, Any]) -> list[str]:
    """The ``## Attention diagnostics`` section of ``report.md``; empty without attention metrics."""
    metrics = report["metrics"]
    if not any(key.startswith(_ATTENTION_PREFIX) for key in metrics):
        return []
    layers = report["checkpoint"]["attention"]["layers"]
    tolerance = report["settings"]["pointing_tolerance"]
    lines = [
        "",
        "## Attention diagnostics",
        "",
        "Means over the images, for the model's attention maps of the true and the most confusing class: the "
        "share of the map's mass inside the object's box, the pointing game "
        f"(tolerance {tolerance:g} px) and the peakedness (1 − normalised entropy: 0 uniform, 1 one pixel). "
        "Mass and pointing need boxes in the data.",
        "",
        "| layer | class | " + " | ".join(label for _, label, _ in _ATTENTION_COLUMNS) + " |",
        "|---|---|" + "---:|" * len(_ATTENTION_COLUMNS),
    ]
    for layer in ("inner", "last"):
        for kind, kind_label in _ATTENTION_CLASSES.items():
            cells = []
            for stat, _, scale in _ATTENTION_COLUMNS:
                value = metrics.get(f"{_ATTENTION_PREFIX}{layer}_{kind}_{stat}")
                if value is None:  # a box statistic on data without boxes
                    cells.append("–")
                elif scale == 100:
                    cells.append(f"{value * scale:.2f}")
                else:
                    cells.append(f"{value:.4f}")
            lines.append(f"| {layer} (`{layers[layer]}`) | {kind_label} | " + " | ".join(cells) + " |")
    return lines


def report_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the metrics, the attention diagnostics, per-class AP (multi-label) and the figures."""
    ckpt, data, metrics = report["checkpoint"], report["data"], report["metrics"]
    lines = [
        "# Evaluation report",
        "",
        f"- checkpoint: `{ckpt['path']}` ({ckpt['kind']}; {ckpt['backbone']}, {ckpt['num_classes']} classes, "
        f"{ckpt['attention']['method']} attention)",
        f"- data: `{data['datamodule']}`, split `{report['split']}`, {report['num_images']} images",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    for key, value in metrics.items():
        if isinstance(value, Mapping) or key.startswith(_ATTENTION_PREFIX):
            continue
        label, scale = _LABELS.get(key, (key, 1))
        if isinstance(value, int):
            lines.append(f"| {label} | {value:+d} |")
        else:
            lines.append(
                f"| {label} | {value * scale:.2f} |" if scale == 100 else f"| {label} | {value:.4f} |"
            )
    lines += _attention_table(report)
    if "descent_effects" in report:
        lines += _descent_table(report["descent_effects"])
    files = report["files"]
    if "ks_chart" in files:
        lines += ["", "## KS chart", "", f"![KS chart]({files['ks_chart']})"]
    if "class_ap" in metrics:
        lines += [
            "",
            "## Per-class average precision",
            "",
            "| class | AP (%) | positives |",
            "|---|---:|---:|",
        ]
        for name, ap in metrics["class_ap"].items():
            lines.append(f"| {name} | {ap * 100:.2f} | {report['class_positives'][name]} |")
        if any(n == 0 for n in report["class_positives"].values()):
            lines.append("")
            lines.append(
                "A class without positives in the split scores AP 0 (torchmetrics) and counts in the mAP."
            )
    if "gallery" in files:
        gallery = report["gallery"]
        lines += [
            "",
            "## Most confused images",
            "",
            gallery["selection"],
            "",
            f"![gallery]({files['gallery']})",
        ]
        lines += ["", "| image | true (p) | most confusing (p) | margin |", "|---:|---|---|---:|"]
        for item in gallery["images"]:
            lines.append(
                f"| {item['index']} | {item['true']} ({item['true_prob']:.2f}) | {item['confused']} "
                f"({item['confused_prob']:.2f}) | {item['margin']:+.2f} |"
            )
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split`` of ``cfg.data`` and write the report (``conf/eval.yaml``).

    Returns:
        ``{"metrics": {"<split>/<name>": value}, "report": the report.json content, "outputs": {...}}``; the
        metric names are those the module logs in ``Trainer.test`` / ``validate``.
    """
    if not cfg.get("ckpt_path"):
        raise ValueError(
            "eval needs ckpt_path=<a Lightning .ckpt of ICASCModule, an export directory or its "
            f"{WEIGHTS_FILE}>, e.g. ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt"
        )
    split = str(cfg.get("split", "test"))
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    path = Path(cfg.ckpt_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    data = describe_data(datamodule, loaders=(split,))
    module, info = load_module(path, data.multilabel)
    check_data_fits_model(
        data,
        module.num_classes,
        module.multilabel,
        str(path),
        f"pick the data= group the model was trained on (e.g. data=cub200) or set "
        f"data.num_classes={module.num_classes}",
        "pick the data= group the model was trained on or set "
        f"data.multilabel={str(module.multilabel).lower()}",
    )
    # null: the model's own (checkpoint hyper-parameter or model card), as -cn explain
    module.pointing_tolerance = resolve_tolerance(cfg.get("pointing_tolerance"), module.pointing_tolerance)
    module.val_attention = bool(cfg.get("attention_metrics", True))
    gallery_cfg = cfg.get("gallery") or {}
    method = gallery_cfg.get("method") or module.attention.method
    if method not in LAYER_METHODS:
        raise ValueError(f"gallery.method must be one of {sorted(LAYER_METHODS)}, got {method!r}")
    layer = gallery_cfg.get("layer") or module.attention.layers["last"]
    datamodule.setup("test" if split == "test" else "validate")
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    scored = evaluate_module(
        module,
        loader,
        split,
        cfg.get("device", "auto"),
        bool(cfg.get("progress", True)),
        cfg.get("limit_batches"),
    )
    metrics, probs, targets = scored["metrics"], scored["probs"], scored["targets"]
    names = data.names()
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {"report_json": "report.json", "report_md": "report.md"}
    report: dict[str, Any] = {
        "split": split,
        "num_images": scored["num_images"],
        "checkpoint": info,
        "data": {
            "datamodule": str(cfg.data.get("_target_", data.source)),
            "num_classes": module.num_classes,
            "multilabel": module.multilabel,
            "config": OmegaConf.to_container(cfg.data, resolve=True),
        },
        "settings": {
            "device": str(cfg.get("device", "auto")),
            "limit_batches": cfg.get("limit_batches"),
            "pointing_tolerance": module.pointing_tolerance,
            "attention_metrics": module.val_attention,
        },
        "metrics": dict(metrics),
    }
    if "class_ap" in metrics:
        report["metrics"]["class_ap"] = dict(zip(names, metrics["class_ap"], strict=True))
        positives = (targets > 0.5).sum(dim=0).tolist()
        report["class_positives"] = dict(zip(names, (int(n) for n in positives), strict=True))
    else:
        true_p, confused_p = true_and_confused_probabilities(probs, targets)
        ks_figure(
            true_p, confused_p, out / "ks_chart.png", f"KS chart · {split} split · {len(true_p)} images"
        )
        files["ks_chart"] = "ks_chart.png"
    descent_cfg = cfg.get("descent_effects") or {}
    if int(descent_cfg.get("num_images") or 0) > 0:
        report["descent_effects"] = mean_descent_effects(
            module,
            loader,
            int(descent_cfg["num_images"]),
            OmegaConf.to_container(descent_cfg.loss, resolve=True) if descent_cfg.get("loss") else {},
            cfg.get("device", "auto"),
        )
    k = int(gallery_cfg.get("num_images") or 0)
    if k > 0:
        chosen = most_confused(probs, targets, k)
        report["gallery"] = _gallery(
            module,
            loader.dataset,
            chosen,
            names,
            data.display_mean,
            data.display_std,
            method,
            layer,
            out / "gallery.png",
        )
        files["gallery"] = "gallery.png"
    report["files"] = files
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    markdown = report_markdown(report)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    print(markdown, flush=True)
    log.info("evaluation report written to %s", out / "report.md")
    flat = {f"{split}/{k}": v for k, v in metrics.items() if isinstance(v, float)}
    return {"metrics": flat, "report": report, "outputs": {k: str(out / v) for k, v in files.items()}}
