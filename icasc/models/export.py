"""Export trained backbones as ``model.safetensors`` + ``model_card.json``.

The exported weights use plain module keys (e.g. ``layer1.0.conv1.weight``), so a torchvision backbone
loads with torchvision and safetensors alone, without icasc installed::

    import safetensors.torch, torchvision
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"))

and a timm backbone (card ``backbone_kwargs: {"source": "timm"}``) with timm and safetensors alone::

    import safetensors.torch, timm
    model = timm.create_model("convnext_atto", num_classes=10)
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"))

A card holds what the caller gave (built by :func:`icasc.models.record.model_card`: ``backbone``,
``backbone_kwargs``, ``num_classes``, ``multilabel``, ``class_names``, ``input``, ``attention`` with its
``method`` and ``layers``, ``loss_weights``, ``pointing_tolerance``, ``init_weights``, ``init_from``,
``metrics``, ``config_hash``, and what a task adds) plus the keys :func:`export_backbone` writes itself,
:data:`GENERATED_CARD_KEYS`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from icasc.models.backbones import backbone_source, build_backbone
from icasc.models.files import read_safetensors

__all__ = [
    "CARD_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GENERATED_CARD_KEYS",
    "MAX_LISTED_KEYS",
    "WEIGHTS_FILE",
    "config_hash",
    "export_backbone",
    "format_keys",
    "load_exported",
]

FORMAT_NAME = "icasc-export"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
MAX_LISTED_KEYS = 10
# the card keys export_backbone writes itself: a card read back without them is the one it was given
GENERATED_CARD_KEYS = ("format", "format_version", "files", "created", "state_dict_keys", "load")


def config_hash(config: Mapping[str, Any]) -> str:
    """Return a stable sha256 hex digest of a (nested) configuration mapping.

    Args:
        config: The configuration; non-JSON values are converted with ``str``.

    Returns:
        The hex digest of the JSON dump with sorted keys (independent of key order).
    """
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    raise TypeError(
        f"model card value of type {type(obj).__name__} is not JSON-serialisable; convert it to a "
        "number/string/list/dict before exporting"
    )


def _load_snippet(backbone: str, num_classes: int, backbone_kwargs: Mapping[str, Any]) -> str:
    """How to load the export without icasc (torchvision, timm), or with it (every other backbone)."""
    kwargs = dict(backbone_kwargs)
    source = backbone_source(backbone, kwargs.pop("source", None))
    args = ", ".join([f"num_classes={num_classes}", *(f"{k}={v!r}" for k, v in kwargs.items())])
    build = {
        "torchvision": ("torchvision", f"torchvision.models.{backbone}({args})"),
        "timm": ("timm", f"timm.create_model({backbone!r}, {args})"),
    }
    if source in build:
        package, call = build[source]
        return (
            f"import safetensors.torch, {package}\n"
            f"model = {call}\n"
            f'model.load_state_dict(safetensors.torch.load_file("{WEIGHTS_FILE}"))\n'
            "model.eval()\n"
        )
    return (
        "from icasc.models.export import load_exported\n"
        'model, card = load_exported("path/to/export_dir")  # needs icasc for this backbone\n'
    )


def export_backbone(model: nn.Module, out_dir: str | Path, card: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``model.safetensors`` and ``model_card.json`` to ``out_dir``.

    Args:
        model: The backbone (not the LightningModule). A ``torch.compile`` wrapper is unwrapped so
            keys stay plain.
        out_dir: Output directory (created if needed).
        card: Model card; must contain ``"backbone"`` (registry name) and ``"num_classes"``. Usually
            built by :func:`icasc.models.record.model_card` (``input``, ``attention``, ``metrics``,
            ``config_hash``, ...). An optional ``"backbone_kwargs"`` mapping is passed to
            :func:`~icasc.models.backbones.build_backbone` by :func:`load_exported`. The
            :data:`GENERATED_CARD_KEYS` are added (replacing any given).

    Returns:
        ``{"weights": Path, "card": Path}``.

    Raises:
        ValueError: If ``card`` lacks ``backbone`` or ``num_classes``.
        TypeError: If a card value is not JSON-serialisable.
    """
    missing = [k for k in ("backbone", "num_classes") if k not in card]
    if missing:
        raise ValueError(f"model card is missing required field(s) {missing}; add them before exporting")
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights_path, card_path = out / WEIGHTS_FILE, out / CARD_FILE

    # Clone so tensors sharing storage (tied weights, views) are saved independently.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(weights_path), metadata={"format": "pt"})

    full_card = dict(card)
    full_card.update(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "files": {"weights": WEIGHTS_FILE, "card": CARD_FILE},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "state_dict_keys": len(state),
            "load": _load_snippet(
                str(card["backbone"]), int(card["num_classes"]), dict(card.get("backbone_kwargs") or {})
            ),
        }
    )
    text = json.dumps(full_card, indent=2, default=_json_default)
    card_path.write_text(text + "\n", encoding="utf-8")
    return {"weights": weights_path, "card": card_path}


def format_keys(keys: list[str]) -> str:
    """At most ten keys, comma-separated, and how many more there are (for mismatch errors)."""
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = len(keys) - MAX_LISTED_KEYS
    return shown + (f", ... ({more} more)" if more > 0 else "")


def load_exported(
    path: str | Path, map_location: str | torch.device = "cpu", option: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported model from its card and load its weights strictly.

    Args:
        path: The export directory (or any file inside it, e.g. ``model_card.json``).
        map_location: Device to load the weights and model onto.
        option: The config option that named ``path`` (e.g. ``"ckpt_path"``), for error messages.

    Returns:
        ``(model, card)``; the model is in eval mode.

    Raises:
        FileNotFoundError: If the card or the weights file is missing.
        ValueError: If the card is not an icasc export, the weights file is truncated or not safetensors,
            or the weights' keys do not match the backbone.
    """
    root = Path(path)
    if root.is_file():
        root = root.parent
    card_path = root / CARD_FILE
    if not card_path.is_file():
        raise FileNotFoundError(
            f"expected the model card {CARD_FILE} at {card_path} (written by export_backbone)"
        )
    card = json.loads(card_path.read_text(encoding="utf-8"))
    if card.get("format") != FORMAT_NAME:
        raise ValueError(f"{card_path} is not an {FORMAT_NAME} model card (format={card.get('format')!r})")
    if int(card.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{card_path} has format_version {card['format_version']}, this icasc reads <= {FORMAT_VERSION}; "
            "upgrade icasc"
        )
    weights_path = root / card.get("files", {}).get("weights", WEIGHTS_FILE)
    if not weights_path.is_file():
        raise FileNotFoundError(f"expected the weights file at {weights_path} (named in {card_path})")

    model = build_backbone(card["backbone"], card["num_classes"], **(card.get("backbone_kwargs") or {}))
    device = str(map_location) if isinstance(map_location, torch.device) else map_location
    state = read_safetensors(weights_path, option, device)
    expected = model.state_dict().keys()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights in {weights_path} do not match backbone {card['backbone']!r} "
            f"(num_classes={card['num_classes']}): "
            f"missing keys [{format_keys(missing)}]; unexpected keys [{format_keys(unexpected)}]"
        )
    model.to(device)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, card
