"""Before/after report of a fine-tuning: the initial and the fine-tuned model on the same held-out images.

Both models are scored on ``num_images`` validation (or test) images drawn with a seed: top-1 and top-5
accuracy, the deletion and insertion AUC (Group-CAM paper §4.3) of Group-CAM maps of the true class, and,
where the data has boxes, those maps' pointing game and mass in the box. A *control* -- the same fine-tune
without the augmentation, for the same epochs -- can be scored beside them, so the report shows whether the
augmentation, not the extra epochs, made the difference. The train task writes the report at the end of a
run that started from ``init_from``; the export task for any checkpoint.

Example:
    >>> initial, _ = initial_model("torchvision:IMAGENET1K_V1", "resnet50", 1000)  # doctest: +SKIP
    >>> report = before_after_report(initial, finetuned, val_set, "layer4")  # doctest: +SKIP
    >>> print(before_after_markdown(report))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from icasc.data.transforms import centre_view
from icasc.metrics.attention_stats import attention_stats
from icasc.metrics.insertion_deletion import insertion_deletion
from icasc.models.backbones import build_backbone
from icasc.models.loading import TORCHVISION_PREFIX, load_weights_into
from icasc.saliency.groupcam import GroupCAM
from icasc.utils import eval_mode, resolve_device

__all__ = [
    "ATTENTION_METRICS",
    "FAITHFULNESS_DEFAULTS",
    "GROUPCAM_DEFAULTS",
    "METRICS",
    "before_after_markdown",
    "before_after_report",
    "find_init_from",
    "initial_model",
    "resolve_init_from",
    "score_classifier",
    "validation_subset",
    "write_before_after",
]

METRICS = ("top1", "top5", "deletion_auc", "insertion_auc")
# scored where the images have boxes: the Group-CAM maps' pointing game and share of mass in the box
ATTENTION_METRICS = ("pointing_game", "mass_in_box")
# Group-CAM's evaluation setting (paper §4) and the deletion/insertion protocol (§4.3)
GROUPCAM_DEFAULTS: dict[str, Any] = {"groups": 32, "theta": 70.0}
FAITHFULNESS_DEFAULTS: dict[str, Any] = {"step_fraction": 0.036, "substrate": "blur"}
_RUN_CONFIG = Path(".hydra") / "config.yaml"


# ------------------------------------------------------------------------------------------------ scoring


def validation_subset(dataset: Dataset, num_images: int, seed: int = 0) -> Dataset:
    """``num_images`` images of ``dataset`` drawn at random with ``seed`` (in index order), or all of them."""
    n = len(dataset)  # type: ignore[arg-type]
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if num_images >= n:
        return dataset
    generator = torch.Generator().manual_seed(int(seed))
    return Subset(dataset, sorted(torch.randperm(n, generator=generator)[:num_images].tolist()))


def score_classifier(
    model: nn.Module,
    loader: DataLoader,
    layer: str,
    groupcam: Mapping[str, Any] | None = None,
    faithfulness: Mapping[str, Any] | None = None,
    device: str | torch.device = "auto",
    tolerance: float | None = None,
) -> dict[str, float]:
    """Top-1, top-5, the Group-CAM deletion/insertion AUC and (with boxes) pointing game of ``model``.

    Args:
        model: Classifier returning ``[B, C]`` logits (left in its mode and on its device afterwards).
        loader: Yields ``{"image", "target"}`` batches with single-label ``[B]`` targets.
        layer: The layer Group-CAM explains (dotted module name).
        groupcam: :class:`~icasc.saliency.GroupCAM` options, over ``GROUPCAM_DEFAULTS`` (G=32, theta=70).
        faithfulness: :func:`~icasc.metrics.insertion_deletion.insertion_deletion` options, over
            ``FAITHFULNESS_DEFAULTS``.
        device: ``"auto"`` (CUDA when available), or a device.
        tolerance: Pointing-game tolerance in pixels (``None``: the default, inside the box).

    Returns:
        Means over the images of ``top1`` and ``top5`` (top-``min(5, C)``) accuracy and of the
        ``deletion_auc`` (lower is better) and ``insertion_auc`` (higher is better) of Group-CAM maps of the
        true class; where every batch has a ``"box"``, also those maps' ``pointing_game`` (hit rate) and
        ``mass_in_box`` (:func:`~icasc.metrics.attention_stats.attention_stats`); and ``images``.
    """
    dev = resolve_device(device)
    home = next(model.parameters()).device
    model.to(dev)
    explainer = GroupCAM(model, layer, **{**GROUPCAM_DEFAULTS, **dict(groupcam or {})})
    faithfulness = {**FAITHFULNESS_DEFAULTS, **dict(faithfulness or {})}
    sums = dict.fromkeys((*METRICS, *ATTENTION_METRICS), 0.0)
    count, boxed = 0, 0
    try:
        for batch in loader:
            images, targets = centre_view(batch["image"]).to(dev), batch["target"].to(dev)
            if targets.dim() != 1:
                raise ValueError(
                    "the before/after report needs single-label data (one true class per image); "
                    f"got targets of shape {tuple(targets.shape)}"
                )
            with eval_mode(model), torch.no_grad():
                logits = model(images)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            sums["top1"] += float((top[:, 0] == targets).sum())
            sums["top5"] += float((top == targets[:, None]).any(dim=1).sum())
            maps = explainer.attribute(images, targets)
            games = insertion_deletion(model, images, maps, targets, **faithfulness)
            sums["deletion_auc"] += float(games["deletion_auc"].sum())
            sums["insertion_auc"] += float(games["insertion_auc"].sum())
            if "box" in batch:
                stats = attention_stats(maps, tuple(images.shape[-2:]), batch["box"].to(dev), tolerance)
                sums["pointing_game"] += float(stats["pointing"].sum())
                sums["mass_in_box"] += float(stats["in_box"].sum())
                boxed += images.shape[0]
            count += images.shape[0]
    finally:
        model.to(home)
    if count == 0:
        raise ValueError("the loader yielded no images to score")
    names = (*METRICS, *ATTENTION_METRICS) if boxed == count else METRICS
    return {**{k: sums[k] / count for k in names}, "images": count}


def initial_model(
    source: str | Path, backbone: str, num_classes: int, backbone_kwargs: Mapping[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model a fine-tuning started from: ``backbone`` built fresh and filled from ``source``.

    Args:
        source: As :func:`~icasc.models.loading.load_weights_into` (``.ckpt``, export, ``torchvision:...``).
        backbone: Registry name of the fine-tuned model's backbone.
        num_classes: Its class count.
        backbone_kwargs: Its build arguments (``weights`` is ignored: the source provides them).

    Returns:
        ``(model in eval mode, the load report)``.
    """
    kwargs = {k: v for k, v in dict(backbone_kwargs or {}).items() if k != "weights"}
    model = build_backbone(backbone, num_classes, **kwargs)
    report = load_weights_into(model, source, arch=backbone)
    return model.eval(), report


def before_after_report(
    initial: nn.Module,
    finetuned: nn.Module,
    dataset: Dataset,
    layer: str,
    num_images: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    groupcam: Mapping[str, Any] | None = None,
    faithfulness: Mapping[str, Any] | None = None,
    device: str | torch.device = "auto",
    sources: Mapping[str, str] | None = None,
    control: nn.Module | None = None,
    tolerance: float | None = None,
    split: str = "val",
) -> dict[str, Any]:
    """Score the initial and the fine-tuned model (and a control) on the same held-out images.

    Args:
        initial: The model before fine-tuning.
        finetuned: The model after it (same architecture, so ``layer`` names the same layer in both).
        dataset: The held-out dataset (``{"image", "target"}`` samples, optionally ``"box"``).
        layer: The layer Group-CAM explains in both models.
        num_images: Images drawn at random (``seed``) from ``dataset``.
        batch_size: Images per batch.
        seed: Seed of the draw.
        groupcam: :class:`~icasc.saliency.GroupCAM` options, over ``GROUPCAM_DEFAULTS`` (G=32, theta=70).
        faithfulness: Deletion/insertion options, over ``FAITHFULNESS_DEFAULTS`` (3.6% steps, blur).
        device: ``"auto"`` or a device.
        sources: Optional ``{"initial": ..., "finetuned": ..., "control": ...}`` descriptions (paths) for
            the table.
        control: The same fine-tune without the augmentation, for as many epochs (optional).
        tolerance: Pointing-game tolerance in pixels (``None``: inside the box).
        split: Which split ``dataset`` is (``"val"`` or ``"test"``), recorded in the report.

    Returns:
        ``{"initial": {metric: value}, "finetuned": {...}, "change": finetuned - initial, "images", "split",
        "layer", "seed", "groupcam", "faithfulness", "sources"}``, plus ``"control"`` and ``"vs_control"``
        (finetuned - control) with a control; the metrics are ``top1``, ``top5``, ``deletion_auc``,
        ``insertion_auc``, and ``pointing_game``, ``mass_in_box`` where the data has boxes.
    """
    subset = validation_subset(dataset, int(num_images), seed)
    loader = DataLoader(subset, batch_size=int(batch_size), shuffle=False)
    groupcam = {**GROUPCAM_DEFAULTS, **dict(groupcam or {})}
    faithfulness = {**FAITHFULNESS_DEFAULTS, **dict(faithfulness or {})}
    models = {
        "initial": initial,
        "finetuned": finetuned,
        **({"control": control} if control is not None else {}),
    }
    scores = {
        name: score_classifier(model, loader, layer, groupcam, faithfulness, device, tolerance)
        for name, model in models.items()
    }
    images = scores["initial"]["images"]
    for row in scores.values():
        row.pop("images")

    def difference(a: str, b: str) -> dict[str, float]:
        return {k: scores[a][k] - scores[b][k] for k in scores[a]}

    report: dict[str, Any] = {
        "initial": scores["initial"],
        "finetuned": scores["finetuned"],
        "change": difference("finetuned", "initial"),
    }
    if control is not None:
        report.update(control=scores["control"], vs_control=difference("finetuned", "control"))
    return {
        **report,
        "images": images,
        "split": split,
        "seed": int(seed),
        "layer": layer,
        "groupcam": groupcam,
        "faithfulness": faithfulness,
        "sources": dict(sources or {}),
    }


def before_after_markdown(report: Mapping[str, Any]) -> str:
    """A markdown table of a :func:`before_after_report`.

    Accuracies and the pointing game are in %, the AUCs and the mass in box fractions.
    """
    sources = report.get("sources") or {}
    names = [k for k in (*METRICS, *ATTENTION_METRICS) if k in report["initial"]]
    titles = {
        "top1": "top-1 (%)",
        "top5": "top-5 (%)",
        "deletion_auc": "deletion AUC ↓",
        "insertion_auc": "insertion AUC ↑",
        "pointing_game": "pointing game (%)",
        "mass_in_box": "mass in box ↑",
    }
    percent = ("top1", "top5", "pointing_game")

    def cells(row: Mapping[str, float], sign: str = "") -> str:
        return " | ".join(
            f"{row[k] * 100:{sign}.2f}" if k in percent else f"{row[k]:{sign}.4f}" for k in names
        )

    def label(name: str, title: str) -> str:
        return f"{title} (`{sources[name]}`)" if sources.get(name) else title

    gc = report["groupcam"]
    lines = [
        "| model | " + " | ".join(titles[k] for k in names) + " |",
        "|---|" + "---:|" * len(names),
        f"| {label('initial', 'initial')} | {cells(report['initial'])} |",
        f"| {label('finetuned', 'fine-tuned')} | {cells(report['finetuned'])} |",
    ]
    if "control" in report:
        lines.append(
            f"| {label('control', 'control: plain fine-tune, same epochs')} | {cells(report['control'])} |"
        )
    lines.append(f"| change | {cells(report['change'], '+')} |")
    if "vs_control" in report:
        lines.append(f"| fine-tuned − control | {cells(report['vs_control'], '+')} |")
    split = {"val": "validation", "test": "test"}.get(report.get("split", "val"), report.get("split"))
    lines += [
        "",
        f"{report['images']} {split} images (drawn with seed {report['seed']}); Group-CAM maps "
        f"(G={gc.get('groups')}, θ={gc.get('theta')}) of the true class at `{report['layer']}`; "
        "deletion/insertion as in Group-CAM §4.3"
        + ("; pointing game and mass in box of the same maps." if "pointing_game" in names else "."),
    ]
    return "\n".join(lines)


def write_before_after(report: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``before_after.json`` and ``before_after.md`` to ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "before_after.json", "markdown": out / "before_after.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(before_after_markdown(report) + "\n", encoding="utf-8")
    return paths


# ------------------------------------------------------------------------------------ finding init_from


def resolve_init_from(source: str | Path) -> str:
    """``source`` as recorded in model cards: file paths made absolute, ``torchvision:...`` unchanged."""
    text = str(source)
    return text if text.startswith(TORCHVISION_PREFIX) else str(Path(text).expanduser().resolve())


def find_init_from(path: str | Path) -> tuple[str, str] | None:
    """The ``init_from`` a fine-tuned checkpoint or export started from, and where it was recorded.

    Looks at the export's ``model_card.json``, then at the ``.hydra/config.yaml`` of the run directory that
    holds ``path`` (``<run>/checkpoints/x.ckpt`` or ``<run>/export/model.safetensors``).

    Returns:
        ``(init_from, where)``, or ``None`` when none is recorded.
    """
    path = Path(path).resolve()
    folder = path if path.is_dir() else path.parent
    card = folder / "model_card.json"
    if card.is_file():
        recorded = json.loads(card.read_text(encoding="utf-8")).get("init_from")
        if recorded:
            return str(recorded), str(card)
    for run_dir in (folder, *list(folder.parents)[:2]):
        config = run_dir / _RUN_CONFIG
        if config.is_file():
            conf = OmegaConf.load(config)
            if "init_from" not in conf or OmegaConf.is_missing(conf, "init_from") or not conf.init_from:
                return None
            return str(conf.init_from), str(config)
    return None
