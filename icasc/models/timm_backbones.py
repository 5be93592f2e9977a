"""timm backbones through icasc's registry (optional extra: ``pip install -e ".[timm]"``).

Any ``timm.list_models()`` convolutional architecture (or hybrid whose stages are spatial maps) is a backbone
with ``source="timm"``; its registry entry is made on demand from timm's metadata:

* build: ``timm.create_model(name, num_classes=N)`` (timm sizes the head); ``weights="DEFAULT"`` or a
  pretrained tag (``timm.list_pretrained(name + ".*")``) loads timm's pretrained weights through timm;
* attention layers: the last two stages of ``model.feature_info`` whose outputs are ``[B, C, h, w]``
  maps (``layer3``/``layer4`` for ResNets, ``stages.2``/``stages.3`` for ConvNeXt, ``blocks.4``/``blocks.6``
  for EfficientNet-B0), found with one probe forward (batch 1, eval mode, no grad) at the model's input
  size;
* head: ``pretrained_cfg["classifier"]``; input defaults: ``pretrained_cfg`` (``input_size``, mean, std).

Transformers whose features are tokens (ViT, DeiT, Swin, ...) are refused when built: icasc's attention
needs convolutional feature maps, and icasc deliberately does not reshape tokens into maps. Models with
Hardsigmoid (MobileNetV3, LCNet) train with ``model.attention.order=first`` only: PyTorch has no second
derivative of hardsigmoid, which the exact (second-order) maps need.

Example:
    >>> model = build_backbone("convnext_atto", num_classes=10, source="timm")  # doctest: +SKIP
    >>> default_attention_layers(model)  # doctest: +SKIP
    ('stages.2', 'stages.3')
"""

from __future__ import annotations

import difflib
import functools
import pickle
import weakref
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from icasc.models.pretrained import PretrainedWeightsError
from icasc.models.registry import BackboneBuilder, BackboneEntry, InputDefaults

__all__ = ["INSTALL_HINT", "TimmWeightsError", "entry_for_model", "feature_layers", "timm_entry"]

INSTALL_HINT = 'pip install -e ".[timm]"'
_FIND_NAMES = (
    "find names with timm.list_models('convnext*') (with weights: timm.list_pretrained('convnext*'))"
)
_CNN_EXAMPLES = "resnet50, convnext_tiny, efficientnet_b0"
_HYBRID_EXAMPLES = "fastvit_t8, mobilevit_xxs"

# feature_layers' result per model (one probe forward per model, not per call)
_PROBED: weakref.WeakKeyDictionary[nn.Module, tuple[str, str]] = weakref.WeakKeyDictionary()


def _timm() -> ModuleType:
    """The timm package, imported on first use (icasc works without it)."""
    try:
        import timm
    except ImportError as error:
        raise ImportError(
            f"timm backbones (model/backbone=timm, source='timm') need timm, which is not installed: "
            f"{INSTALL_HINT}"
        ) from error
    return timm


class TimmWeightsError(PretrainedWeightsError):
    """timm's pretrained weights could not be downloaded (no network?) nor read from the cache.

    Attributes are those of :class:`~icasc.models.pretrained.PretrainedWeightsError`; ``url`` is where timm
    downloads from (a Hugging Face Hub repository or a url), ``cache_file`` the Hugging Face cache folder.
    """

    def __init__(self, arch: str, weights: str, url: str, cache_dir: Path, reason: str, without: str) -> None:
        self.arch, self.weights, self.url, self.cache_file = arch, weights, url, cache_dir
        self.reason, self.cached = reason, False
        OSError.__init__(self, self.describe(without))

    def describe(self, without: str) -> str:
        """The message, with ``without``: how to train without the weights (the option to set)."""
        return (
            f"could not load timm's pretrained weights {self.weights} of {self.arch} from {self.url} "
            f"({self.reason}; no network?). Download them where there is internet (e.g. "
            f"`huggingface-cli download {self.url}` fills the Hugging Face cache {self.cache_file}), copy "
            f"that cache here and set HF_HUB_OFFLINE=1; or train without pretrained weights: {without}"
        )


def _check_name(timm: ModuleType, name: Any) -> str:
    if not name or not isinstance(name, str):
        raise ValueError(
            f"model.backbone.name is required for timm backbones (got {name!r}): a timm architecture, e.g. "
            f"model/backbone=timm model.backbone.name=convnext_tiny; {_FIND_NAMES}"
        )
    if "." in name:
        arch, _, tag = name.partition(".")
        raise ValueError(
            f"give the timm architecture and its pretrained tag apart: model.backbone.name={arch} "
            f"model.backbone.weights={tag} (got name={name!r})"
        )
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm model {name!r}{hint}; {_FIND_NAMES}")
    return name


def _pretrained_tags(timm: ModuleType, name: str) -> list[str]:
    """The tags of ``name``'s pretrained weights (``timm.list_pretrained``), default first."""
    return [full.partition(".")[2] for full in timm.list_pretrained(f"{name}.*")]


def _weights_name(timm: ModuleType, name: str, weights: Any) -> str:
    """The timm model name that loads ``weights``: ``name`` (DEFAULT) or ``name.tag``."""
    tags = _pretrained_tags(timm, name)
    if not tags:
        raise ValueError(f"timm has no pretrained weights for {name!r}; pass weights=None")
    if weights == "DEFAULT":
        return name
    if weights in tags:
        return f"{name}.{weights}"
    raise ValueError(
        f"unknown weights {weights!r} for timm model {name!r}; valid values are: DEFAULT, "
        f"{', '.join(tags)} (or None)"
    )


def _create_pretrained(
    timm: ModuleType, name: str, weights: str, num_classes: int, **kwargs: Any
) -> nn.Module:
    """``timm.create_model(..., pretrained=True)``; a failed download raises :class:`TimmWeightsError`."""
    full = _weights_name(timm, name, weights)
    try:
        return timm.create_model(full, pretrained=True, num_classes=num_classes, **kwargs)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        # huggingface_hub's LocalEntryNotFoundError and urllib's URLError are OSErrors; a damaged file
        # fails to load with RuntimeError. Anything else (a bad builder argument) is not about the weights.
        from huggingface_hub.constants import HF_HUB_CACHE  # a dependency of timm

        cfg = timm.models.get_pretrained_cfg(full)
        url = (cfg.hf_hub_id or cfg.url or full) if cfg is not None else full
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        label = f"{cfg.tag} (DEFAULT)" if weights == "DEFAULT" and cfg is not None else str(weights)
        raise TimmWeightsError(
            name, label, url, Path(HF_HUB_CACHE), reason, "model.backbone.weights=null"
        ) from error


def _probe_size(timm: ModuleType, model: nn.Module) -> tuple[int, int]:
    """The input size the model accepts: a patch embedding's fixed size, else its pretrained config's."""
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if fixed is not None:
        return tuple(fixed)
    return tuple(timm.data.resolve_model_data_config(model)["input_size"][1:])


def _output_shapes(model: nn.Module, names: list[str], size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """The output shapes of the named modules in one forward of a ``[1, 3, *size]`` input (eval, no grad)."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())

    def recorder(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            shapes[name] = tuple(out.shape) if isinstance(out, torch.Tensor) else ()

        return hook

    param = next(model.parameters())
    modes = [(m, m.training) for m in model.modules()]
    handles = [modules[name].register_forward_hook(recorder(name)) for name in names]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, *size, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    return shapes


def feature_layers(model: nn.Module) -> tuple[str, str]:
    """The default ``(inner, last)`` attention layers of a timm model: the last two stages of
    ``model.feature_info`` whose outputs are ``[B, C, h, w]`` maps (``C`` = the stage's ``num_chs``).

    Found with one probe forward (batch 1, eval mode restored afterwards, no grad) at the model's input size,
    once per model.

    Raises:
        ValueError: Fewer than two stages give spatial maps: a transformer whose features are tokens
            (``[B, N, C]``, or channels-last ``[B, h, w, C]`` as in Swin), which ICASC does not support.
    """
    if model in _PROBED:
        return _PROBED[model]
    timm = _timm()
    stages = [(str(info["module"]), int(info["num_chs"])) for info in getattr(model, "feature_info", [])]
    size = _probe_size(timm, model)
    shapes = _output_shapes(model, [name for name, _ in stages], size)
    spatial = [name for name, chs in stages if len(shapes.get(name, ())) == 4 and shapes[name][1] == chs]
    if len(spatial) < 2:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        seen = ", ".join(f"{name} -> {list(shapes.get(name, ()))}" for name, _ in stages[-2:]) or "none"
        raise ValueError(
            f"timm model {arch!r} has no two feature stages with spatial maps [B, C, h, w] "
            f"(model.feature_info, probed with a 1x3x{size[0]}x{size[1]} input; last stages: {seen}): "
            "it is a transformer whose features are tokens ([B, N, C] as in ViT and DeiT, or channels-last "
            "[B, h, w, C] as in Swin), and ICASC's attention (A_ch, Grad-CAM) needs convolutional feature "
            "maps. icasc deliberately does not reshape tokens into maps: use a CNN "
            f"(e.g. {_CNN_EXAMPLES}) or a hybrid whose stages are spatial maps (e.g. {_HYBRID_EXAMPLES})"
        )
    _PROBED[model] = (spatial[-2], spatial[-1])
    return _PROBED[model]


def _builder(name: str) -> BackboneBuilder:
    def build(num_classes: int, weights: str | None = None, **kwargs: Any) -> nn.Module:
        timm = _timm()
        if weights is None:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        else:
            model = _create_pretrained(timm, name, weights, num_classes, **kwargs)
        feature_layers(model)  # refuses token transformers now, not at the first training step
        return model

    build.__name__ = build.__qualname__ = f"build_timm_{name}"
    build.__doc__ = f"``timm.create_model({name!r}, num_classes=...)`` (see :func:`build_backbone`)."
    return build


def _head(model: nn.Module) -> nn.Module:
    return model.get_classifier()


@functools.cache
def timm_entry(name: str) -> BackboneEntry:
    """The registry entry of timm architecture ``name``, made from timm's metadata (see the module doc).

    Raises:
        ImportError: timm is not installed (the message says how to install it).
        ValueError: ``name`` is missing, carries a tag, or is not a timm model (with close names).
    """
    timm = _timm()
    _check_name(timm, name)
    cfg = timm.models.get_pretrained_cfg(name)
    defaults = None
    if cfg is not None and cfg.input_size and cfg.mean and cfg.std:
        defaults = InputDefaults(int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std))
    classifier = cfg.classifier if cfg is not None else None
    tags = _pretrained_tags(timm, name)
    pretrained = None
    if tags:
        pretrained = (
            f"timm (Hugging Face Hub): model.backbone.weights=DEFAULT or a tag ({', '.join(tags)}); "
            "downloaded to the Hugging Face cache on first use"
        )
    return BackboneEntry(
        name=name,
        builder=_builder(name),
        inner_layer=lambda model: feature_layers(model)[0],
        last_layer=lambda model: feature_layers(model)[1],
        head=classifier if isinstance(classifier, str) else _head,
        input_defaults=defaults,
        source="timm",
        pretrained=pretrained,
    )


def entry_for_model(model: nn.Module) -> BackboneEntry | None:
    """The timm entry of a timm model built outside the registry (``None`` for other models)."""
    if not type(model).__module__.startswith("timm."):
        return None
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return timm_entry(arch) if arch else None
