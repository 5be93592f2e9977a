"""Load a trained classifier from a Lightning checkpoint or an export, with what it needs to run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from icasc.models.export import WEIGHTS_FILE, load_exported
from icasc.models.module import ICASCModule

__all__ = ["load_classifier"]


def load_classifier(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The backbone of a checkpoint or export, in eval mode, and its metadata.

    Args:
        path: A Lightning checkpoint of :class:`~icasc.models.ICASCModule` (``.ckpt``), or an export
            directory / its ``model.safetensors`` (with ``model_card.json`` beside it).
        map_location: Device for the weights.

    Returns:
        ``(model, info)``; ``info`` holds ``num_classes``, ``attention_layers`` (``{"inner", "last"}``) and,
        for exports, the card's ``input`` (``image_size``, ``mean``, ``std``) and ``class_names``.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: A file that is neither a checkpoint nor an export.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no checkpoint or export at {path}: expected a Lightning .ckpt file, an export directory, "
            f"or its {WEIGHTS_FILE}"
        )
    if path.suffix == ".ckpt":
        module = ICASCModule.load_from_checkpoint(path, map_location=map_location, weights_only=False)
        info = {"num_classes": module.num_classes, "attention_layers": dict(module.attention.layers)}
        return module.backbone.eval(), info
    if path.is_dir() or path.name == WEIGHTS_FILE:
        model, card = load_exported(path, map_location=map_location)
        info = {
            "num_classes": card["num_classes"],
            "attention_layers": dict(card.get("attention", {}).get("layers", {})),
            "input": card.get("input"),
            "class_names": card.get("class_names") or None,
        }
        return model.eval(), info
    raise ValueError(f"{path} is neither a Lightning checkpoint (.ckpt) nor an icasc export ({WEIGHTS_FILE})")
