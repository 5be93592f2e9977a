"""The explain task: saliency maps of several methods for a few images, figures and faithfulness numbers."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from icasc.data.contract import describe_data
from icasc.data.images import find_images, load_readable_images
from icasc.data.transforms import centre_view
from icasc.metrics.insertion_deletion import insertion_deletion
from icasc.metrics.pointing_game import pointing_game_hits, resolve_tolerance
from icasc.models.backbones import default_attention_layers
from icasc.models.loading import load_classifier
from icasc.saliency.base import normalize
from icasc.saliency.registry import build_method
from icasc.utils import denormalize
from icasc.visualize import difference_figure, method_grid, overlay_figure

__all__ = ["explain_batch", "run"]

log = logging.getLogger(__name__)


def _data_images(cfg: DictConfig) -> dict[str, Any]:
    datamodule = hydra.utils.instantiate(cfg.data)
    data = describe_data(datamodule, loaders=("val",))
    datamodule.setup("validate")
    dataset = datamodule.val_dataloader().dataset
    n = min(int(cfg.num_images), len(dataset))
    samples = [dataset[i] for i in range(n)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    if batch["target"].dim() != 1:
        raise ValueError("explain needs single-label data (one true class per image)")
    return {
        "images": centre_view(batch["image"]),
        "targets": batch["target"],
        "boxes": batch.get("box"),
        "names": [f"val_{i:04d}" for i in range(n)],
        "mean": data.display_mean,
        "std": data.display_std,
        "class_names": data.class_names,
    }


def _file_images(cfg: DictConfig, info: dict[str, Any]) -> dict[str, Any]:
    card_input = info.get("input") or {}
    if not card_input:  # a training checkpoint: the input of the configured data
        card_input = describe_data(hydra.utils.instantiate(cfg.data), loaders=()).card_input()
    mean, std, size = card_input.get("mean"), card_input.get("std"), cfg.get("image_size")
    size = size or card_input.get("image_size")
    if not size:
        raise ValueError(
            f"the input size of {cfg.ckpt_path} is unknown (its model card or data module does not record "
            "image_size): pass image_size=<the side the model was trained on>"
        )
    if mean is None or std is None:
        log.warning(
            "the normalisation of %s is unknown (its model card or data module gives no mean/std): the "
            "images are fed as [0, 1] pixels",
            cfg.ckpt_path,
        )
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    size = int(size)
    # unreadable files are skipped with a warning naming each; an error only when none is readable
    images, files = load_readable_images(find_images(cfg.images), size, mean, std, int(cfg.num_images))
    return {
        "images": images,
        "targets": None,
        "boxes": None,
        "names": [f.stem for f in files],
        "mean": mean,
        "std": std,
        "class_names": info.get("class_names"),
    }


def _classes(probs: torch.Tensor, targets: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Predicted, true (when known) and second class: the best class that is neither of the others."""
    pred = probs.argmax(dim=1)
    masked = probs.clone().scatter_(1, pred[:, None], float("-inf"))
    classes = {"predicted": pred}
    if targets is not None:
        classes["true"] = targets
        masked.scatter_(1, targets[:, None], float("-inf"))
    classes["second"] = masked.argmax(dim=1)
    return classes


def explain_batch(
    methods: dict[str, Any], model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor | None
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Maps of every method for the predicted, true and second class of each image.

    Returns:
        ``(classes, maps)`` with ``classes[column] = [B]`` and ``maps[method][column] = [B, H, W]`` (raw).
    """
    with torch.no_grad():
        probs = model(images).softmax(dim=1)
    classes = _classes(probs, targets)
    maps = {
        name: {col: m.attribute(images, cls) for col, cls in classes.items()} for name, m in methods.items()
    }
    return classes, maps


def run(cfg: DictConfig) -> dict[str, Any]:
    """Explain ``cfg.num_images`` images with ``cfg.methods``; write figures and ``metrics.json``/``.csv``."""
    if not cfg.get("ckpt_path"):
        raise ValueError(
            "explain needs ckpt_path=<a Lightning .ckpt, an export directory or model.safetensors>"
        )
    model, info = load_classifier(cfg.ckpt_path)
    data = _data_images(cfg) if cfg.get("images") is None else _file_images(cfg, info)
    layer = cfg.get("layer") or info["attention_layers"].get("last") or default_attention_layers(model)[1]
    options = OmegaConf.to_container(cfg.get("method_options") or {}, resolve=True)
    methods = {name: build_method(name, model, layer, options.get(name)) for name in cfg.methods}
    out = Path(cfg.paths.output_dir)
    names, boxes, class_names = data["names"], data["boxes"], data["class_names"]
    # null: the tolerance the model was validated with (its checkpoint's or model card's), as -cn eval
    tolerance = resolve_tolerance(cfg.get("pointing_tolerance"), info.get("pointing_tolerance"))

    def label(c: int) -> str:
        return class_names[c] if class_names else str(c)

    rows: list[dict[str, Any]] = []
    batch_size = int(cfg.batch_size)
    n = len(names)
    progress = tqdm(total=n * len(methods), desc="explain", disable=not cfg.get("progress", True))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        images = data["images"][start:stop]
        targets = None if data["targets"] is None else data["targets"][start:stop]
        classes, maps = explain_batch(methods, model, images, targets)
        progress.update((stop - start) * len(methods))
        scored = "true" if targets is not None else "predicted"
        pictures = denormalize(images, data["mean"], data["std"]).permute(0, 2, 3, 1)
        for name in methods:
            scores = insertion_deletion(
                model, images, maps[name][scored], classes[scored], **cfg.faithfulness
            )
            hits = None
            if boxes is not None:
                hits = pointing_game_hits(
                    maps[name][scored], boxes[start:stop], tuple(images.shape[-2:]), tolerance
                )
            for i in range(stop - start):
                rows.append(
                    {
                        "image": names[start + i],
                        "method": name,
                        "class": int(classes[scored][i]),
                        "class_name": label(int(classes[scored][i])),
                        "insertion_auc": float(scores["insertion_auc"][i]),
                        "deletion_auc": float(scores["deletion_auc"][i]),
                        "overall": float(scores["insertion_auc"][i] - scores["deletion_auc"][i]),
                        "pointing_hit": None if hits is None else bool(hits[i]),
                    }
                )
        for i in range(stop - start):
            folder = out / "images" / f"{start + i:03d}_{names[start + i]}"
            titles = {col: f"{col}: {label(int(cls[i]))}" for col, cls in classes.items()}
            grid = {m: {titles[c]: normalize(maps[m][c][i : i + 1])[0] for c in classes} for m in methods}
            method_grid(pictures[i], grid, list(titles.values()), folder / "grid.png")
            for m in methods:
                overlay_figure(
                    pictures[i], grid[m][titles[scored]], folder / f"{m}.png", f"{m} · {titles[scored]}"
                )
            if "smoothgrad" in methods:
                sg = maps["smoothgrad"]
                diff = normalize(sg[scored][i : i + 1])[0] - normalize(sg["second"][i : i + 1])[0]
                title = f"SmoothGrad {titles[scored]} − {titles['second']}"
                difference_figure(pictures[i], diff, folder / "smoothgrad_difference.png", title)
    progress.close()
    summary = _summarise(rows, methods, scored, layer, tolerance, cfg)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(json.dumps(summary["methods"], indent=2), flush=True)
    log.info("explanations written to %s", out)
    return summary


def _summarise(
    rows: list[dict[str, Any]], methods: dict, scored: str, layer: str, tolerance: float, cfg: DictConfig
) -> dict:
    per_method = {}
    for name in methods:
        mine = [r for r in rows if r["method"] == name]
        entry = {k: sum(r[k] for r in mine) / len(mine) for k in ("insertion_auc", "deletion_auc", "overall")}
        hits = [r["pointing_hit"] for r in mine if r["pointing_hit"] is not None]
        if hits:
            entry["pointing_game"] = sum(hits) / len(hits)
        entry["images"] = len(mine)
        per_method[name] = entry
    return {
        "methods": per_method,
        "explained_class": scored,
        "layer": layer,
        "ckpt_path": str(cfg.ckpt_path),
        "faithfulness": OmegaConf.to_container(cfg.faithfulness, resolve=True),
        "pointing_tolerance": tolerance,
    }
