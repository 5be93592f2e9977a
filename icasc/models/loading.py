"""Load a trained classifier, or load weights into a backbone (checkpoints, exports, torchvision).

``load_classifier(path)`` rebuilds a model from a checkpoint or an export, with its metadata
(``load_classifier_record(path)``: with its :class:`~icasc.models.record.ModelRecord`; ``load_trained(path)``
returns what the file holds: backbone, Lightning module or model card). ``load_weights_into(backbone,
source)`` fills an existing backbone (the fine-tuning entry point ``init_from``), strictly: a source whose
keys or shapes do not fit raises an error listing the missing and unexpected keys and the shape mismatches.

Example:
    >>> backbone = build_backbone("resnet50", num_classes=1000)
    >>> load_weights_into(backbone, "torchvision:IMAGENET1K_V2", arch="resnet50")  # doctest: +SKIP
    >>> load_weights_into(backbone, "outputs/train/runs/.../export/model.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icasc.models.backbones import (
    backbone_source,
    build_backbone,
    classifier_head,
    find_backbone,
    list_backbones,
)
from icasc.models.export import CARD_FILE, MAX_LISTED_KEYS, WEIGHTS_FILE, format_keys, load_exported
from icasc.models.files import read_checkpoint, read_safetensors, reading_checkpoint
from icasc.models.module import ICASCModule
from icasc.models.pretrained import PretrainedWeightsError
from icasc.models.record import ModelRecord

__all__ = [
    "TORCHVISION_PREFIX",
    "load_classifier",
    "load_classifier_record",
    "load_module_checkpoint",
    "load_trained",
    "load_weights_into",
]

log = logging.getLogger(__name__)

TORCHVISION_PREFIX = "torchvision:"
_BACKBONE_PREFIX = "backbone."
_COMPILED_PREFIX = "_orig_mod."


def load_module_checkpoint(
    path: str | Path, option: str | None = "ckpt_path", map_location: str | torch.device = "cpu"
) -> ICASCModule:
    """The :class:`~icasc.models.ICASCModule` a Lightning checkpoint holds, read once (``weights_only=True``).

    The module is rebuilt from the checkpoint's hyper-parameters (plain data, see :mod:`icasc.models.hparams`)
    with the backbone's pretrained ``weights`` left out: the checkpoint's state dict replaces them anyway, so
    loading never downloads them again (and works offline).

    Args:
        path: The ``.ckpt`` file.
        option: The config option that named it, for error messages.
        map_location: Device for the weights.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: A truncated or foreign file, or one that is not a checkpoint of ``ICASCModule``.
    """
    checkpoint = read_checkpoint(path, option, map_location)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if "state_dict" not in checkpoint or "num_classes" not in hparams:
        raise ValueError(
            f"{option}={path} is not a checkpoint of icasc's ICASCModule (no state_dict or num_classes in "
            "its hyper-parameters)"
        )
    if isinstance(hparams.get("backbone"), Mapping) and hparams["backbone"].get("weights"):
        hparams["backbone"] = {**hparams["backbone"], "weights": None}
    with reading_checkpoint(path, option):
        module = ICASCModule(**hparams)
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    return module.to(map_location)


def load_trained(
    path: str | Path, map_location: str = "cpu"
) -> tuple[nn.Module, ICASCModule | None, dict[str, Any]]:
    """What a checkpoint or an export holds: the backbone, the Lightning module and the model card.

    The one place that tells a checkpoint from an export; :func:`load_classifier_record` and the eval task's
    ``load_module`` build their results from it.

    Args:
        path: A Lightning checkpoint of :class:`~icasc.models.ICASCModule` (``.ckpt``), or an export
            directory / its ``model.safetensors`` (with ``model_card.json`` beside it).
        map_location: Device for the weights.

    Returns:
        ``(backbone, module, card)``: for a checkpoint the module's backbone, the module and ``{}``; for an
        export the rebuilt backbone, ``None`` and the model card. Modes are left as loaded.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: A file that is neither a checkpoint nor an export, or a truncated or damaged one (the
            message names the path and how to fix it).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no checkpoint or export at {path}: no such file or directory; give a Lightning .ckpt of "
            f"ICASCModule, an export directory or its {WEIGHTS_FILE}"
        )
    if path.suffix == ".ckpt":
        module = load_module_checkpoint(path, "ckpt_path", map_location)
        return module.backbone, module, {}
    if path.is_dir() or path.name == WEIGHTS_FILE:
        model, card = load_exported(path, map_location=map_location, option="ckpt_path")
        return model, None, card
    raise ValueError(
        f"{path} is neither a Lightning checkpoint (.ckpt) nor an icasc export ({WEIGHTS_FILE} with "
        f"{CARD_FILE} beside it)"
    )


def load_classifier_record(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, ModelRecord]:
    """The backbone of a checkpoint or export, in eval mode, and its record.

    Args:
        path: A Lightning checkpoint of :class:`~icasc.models.ICASCModule` (``.ckpt``), or an export
            directory / its ``model.safetensors`` (with ``model_card.json`` beside it).
        map_location: Device for the weights.

    Returns:
        ``(model, record)``: the record of the checkpoint's module or of the export's model card.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: A file that is neither a checkpoint nor an export.
    """
    model, module, card = load_trained(path, map_location)
    record = ModelRecord.from_module(module) if module is not None else ModelRecord.from_card(card)
    return model.eval(), record


def load_classifier(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The backbone of a checkpoint or export, in eval mode, and its metadata.

    Args:
        path: A Lightning checkpoint of :class:`~icasc.models.ICASCModule` (``.ckpt``), or an export
            directory / its ``model.safetensors`` (with ``model_card.json`` beside it).
        map_location: Device for the weights.

    Returns:
        ``(model, info)``; ``info`` (:meth:`~icasc.models.record.ModelRecord.as_info`) holds ``num_classes``,
        ``multilabel``, ``attention_layers`` (``{"inner", "last"}``), ``backbone`` (registry name) and
        ``backbone_kwargs`` (build arguments, without ``weights``), ``pointing_tolerance``: the
        pointing-game tolerance the model was validated with (``None`` for an export whose card does not
        record it) and, for exports (``None`` for checkpoints), the card's ``input`` (``image_size``,
        ``mean``, ``std``), ``class_names`` and ``init_from`` (the weights the run started from, ``None``
        when it trained from scratch).

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: A file that is neither a checkpoint nor an export.
    """
    model, record = load_classifier_record(path, map_location)
    return model, record.as_info()


# ------------------------------------------------------------------------------------------- init_from


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _classifier_key(state: Mapping[str, torch.Tensor]) -> str | None:
    """The weight of the last 2-D (linear) layer: the classification head of the registered backbones."""
    linear = [k for k, v in state.items() if k.endswith(".weight") and v.dim() == 2]
    return linear[-1] if linear else None


def _mismatch_error(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str, hint: str
) -> ValueError | None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if not (missing or unexpected or shapes):
        return None
    lines = [f"the weights of init_from={source} do not fit the {type(model).__name__} backbone{hint}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {format_keys(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {format_keys(unexpected)}")
    if shapes:
        shown = [
            f"{k} {list(state[k].shape)} in the source vs {list(expected[k].shape)} in the model"
            for k in shapes[:MAX_LISTED_KEYS]
        ]
        more = f"; ... ({len(shapes) - MAX_LISTED_KEYS} more)" if len(shapes) > MAX_LISTED_KEYS else ""
        lines.append(f"  shape mismatches ({len(shapes)}): " + "; ".join(shown) + more)
    head = _classifier_key(expected)
    if head is not None and head in shapes and not missing and not unexpected:
        source_classes, model_classes = int(state[head].shape[0]), int(expected[head].shape[0])
        lines.append(
            f"The source has {source_classes} classes and the model {model_classes}: set data.num_classes / "
            f"model.num_classes to {source_classes}, or use a checkpoint trained for {model_classes} classes."
        )
    else:
        lines.append(
            "The source holds a different architecture: set model/backbone (and its options) to the one it "
            "was trained with, or use a checkpoint of the configured backbone."
        )
    return ValueError("\n".join(lines))


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, hint: str = "") -> int:
    error = _mismatch_error(model, state, source, hint)
    if error is not None:
        raise error
    model.load_state_dict(state, strict=True)
    return len(state)


def _checkpoint_state(path: Path, map_location: str | torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    checkpoint = read_checkpoint(path, "init_from", map_location)
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise ValueError(
            f"init_from={path} is not a Lightning checkpoint (no 'state_dict' entry); give an ICASCModule "
            f".ckpt, an export directory / {WEIGHTS_FILE}, or torchvision:<WEIGHTS>"
        )
    full = checkpoint["state_dict"]
    state = {k[len(_BACKBONE_PREFIX) :]: v for k, v in full.items() if k.startswith(_BACKBONE_PREFIX)}
    if not state:
        raise ValueError(
            f"init_from={path} holds no '{_BACKBONE_PREFIX}*' weights: it is not a checkpoint of "
            "icasc.models.ICASCModule"
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    backbone = hparams.get("backbone")
    name = backbone.get("name") if isinstance(backbone, Mapping) else backbone
    about = {"backbone": name if isinstance(name, str) else None, "num_classes": hparams.get("num_classes")}
    return _strip(state, _COMPILED_PREFIX), about


def _export_state(path: Path, map_location: str | torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(
            f"init_from={path} is a directory without {WEIGHTS_FILE}: give an export directory (written by "
            "the train or export task), its model.safetensors, a .ckpt, or torchvision:<WEIGHTS>"
        )
    state = read_safetensors(weights, "init_from", map_location)
    card_path = weights.parent / CARD_FILE
    about: dict[str, Any] = {"backbone": None, "num_classes": None}
    if card_path.is_file():
        card = json.loads(card_path.read_text(encoding="utf-8"))
        about = {"backbone": card.get("backbone"), "num_classes": card.get("num_classes")}
    return _strip(state, _COMPILED_PREFIX), about


def _torchvision_names() -> str:
    return ", ".join(name for name in list_backbones() if backbone_source(name) == "torchvision")


def _classifier_head(model: nn.Module) -> nn.Linear:
    """The head of a torchvision backbone (as its registry entry declares it)."""
    entry = find_backbone(model)
    if entry is None or entry.source != "torchvision":
        what = f"a {type(model).__name__}" + ("" if entry is None else f" (a {entry.source} backbone)")
        timm = "; timm backbones load timm's weights with model.backbone.weights=DEFAULT or a tag"
        raise ValueError(
            f"init_from=torchvision:... needs a torchvision backbone ({_torchvision_names()}), got {what}; "
            "set model/backbone to one of them"
            + (timm if entry is not None and entry.source == "timm" else "")
        )
    return classifier_head(model)


def _torchvision_weights(model: nn.Module, weights: str, arch: str | None) -> tuple[nn.Module, bool]:
    """A torchvision model with ``weights`` (1000-class head replaced when the model's head differs)."""
    if not weights:
        raise ValueError(
            f"init_from={TORCHVISION_PREFIX} needs a weights name, e.g. {TORCHVISION_PREFIX}IMAGENET1K_V2"
        )
    if arch is None:
        raise ValueError(
            f"init_from={TORCHVISION_PREFIX}{weights} needs the backbone's torchvision name: pass "
            "arch='resnet50' (the train task passes model.backbone.name)"
        )
    if backbone_source(arch) != "torchvision":
        raise ValueError(
            f"init_from={TORCHVISION_PREFIX}{weights} needs a torchvision backbone "
            f"({_torchvision_names()}), the configured backbone is {arch!r}"
        )
    num_classes = _classifier_head(model).out_features
    try:
        pretrained = build_backbone(arch, num_classes=num_classes, weights=weights)
    except PretrainedWeightsError as error:  # say which option to drop: init_from, not model.backbone.weights
        without = f"init_from=null (instead of init_from={TORCHVISION_PREFIX}{weights})"
        raise PretrainedWeightsError(
            error.arch, error.weights, error.url, error.cache_file, error.reason, error.cached, without
        ) from error.__cause__
    return pretrained, num_classes != 1000


def load_weights_into(
    backbone: nn.Module,
    source: str | Path,
    map_location: str | torch.device = "cpu",
    arch: str | None = None,
) -> dict[str, Any]:
    """Load initial weights into ``backbone`` in place (strictly) and report what was loaded.

    Args:
        backbone: The model to fill (a ``torch.compile`` wrapper is unwrapped).
        source: One of

            * a Lightning checkpoint (``.ckpt``) of :class:`~icasc.models.ICASCModule`: its backbone weights;
            * an export directory or a ``.safetensors`` file (e.g. the ``model.safetensors`` written by
              :func:`~icasc.models.export.export_backbone`; a plain torchvision-style state dict works too);
            * ``"torchvision:<WEIGHTS>"``, e.g. ``"torchvision:IMAGENET1K_V2"``: torchvision's pretrained
              weights for ``arch``, through its weights API (downloads on first use). When the backbone's
              head has another class count than the 1000 ImageNet classes, the pretrained head is replaced
              by a freshly initialised one (logged and reported as ``head_replaced``); only this source
              does that.
        map_location: Device the source's tensors are read to (they are then copied into ``backbone``).
        arch: The backbone's registry name (needed for ``torchvision:`` sources, e.g. ``"resnet50"``).

    Returns:
        A report: ``source`` (as given), ``kind`` (``"checkpoint"``, ``"export"`` or ``"torchvision"``),
        ``tensors`` (number of tensors loaded), ``head_replaced`` (bool), and the source's ``backbone`` and
        ``num_classes`` where it records them (``None`` otherwise).

    Raises:
        FileNotFoundError: Nothing at a path source.
        PretrainedWeightsError: ``torchvision:<WEIGHTS>`` that can be neither downloaded nor read from
            torch.hub's cache (the message says where to copy the file, and ``init_from=null``).
        ValueError: A truncated or damaged checkpoint or safetensors file, an unsupported source, or
            weights whose keys or shapes do not fit ``backbone`` (the message lists up to 10 missing keys,
            10 unexpected keys and the shape mismatches, and says how to fix it, e.g. the class count).
    """
    model = getattr(backbone, "_orig_mod", backbone)
    text = str(source)
    if text.startswith(TORCHVISION_PREFIX):
        weights = text[len(TORCHVISION_PREFIX) :]
        pretrained, replaced = _torchvision_weights(model, weights, arch)
        tensors = _load_strict(model, pretrained.state_dict(), text, f" (torchvision {arch} {weights})")
        if replaced:
            log.info(
                "init_from=%s: loaded the pretrained %s and replaced its 1000-class head by a freshly "
                "initialised %d-class head",
                text,
                arch,
                _classifier_head(model).out_features,
            )
        about = {"backbone": arch, "num_classes": 1000}
        return {"source": text, "kind": "torchvision", "tensors": tensors, "head_replaced": replaced, **about}

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"init_from={text}: no such file or directory; give a Lightning .ckpt, an export directory or "
            f"its {WEIGHTS_FILE}, or torchvision:<WEIGHTS> (e.g. torchvision:IMAGENET1K_V2)"
        )
    if path.is_file() and path.suffix == ".ckpt":
        kind = "checkpoint"
        state, about = _checkpoint_state(path, map_location)
    elif path.is_dir() or path.suffix == ".safetensors":
        kind = "export"
        state, about = _export_state(path, map_location)
    else:
        raise ValueError(
            f"init_from={text} is neither a Lightning checkpoint (.ckpt), an export directory / .safetensors "
            "file, nor torchvision:<WEIGHTS>"
        )
    hint = ""
    if about["backbone"] or about["num_classes"]:
        hint = f" (the source is a {about['backbone'] or '?'} with {about['num_classes'] or '?'} classes)"
    tensors = _load_strict(model, state, text, hint)
    log.info("init_from=%s: loaded %d tensors from the %s", text, tensors, kind)
    return {"source": text, "kind": kind, "tensors": tensors, "head_replaced": False, **about}
