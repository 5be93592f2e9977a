"""The backbone registry: a name -> :class:`BackboneEntry` (builder + metadata), timm-style.

An entry says everything icasc needs to know about an architecture beside how to build it: its default
attention layers, its classifier head, its input defaults and where it (and its pretrained weights) come
from. Every consumer asks the registry instead of switching on model types: the attention layers of a model
(:func:`default_attention_layers`), its head (:func:`classifier_head`), its family (:func:`backbone_source`).

Registering a backbone is one decorated builder::

    from torch import nn
    from icasc.models import ICASCModule, register_backbone

    class MyNet(nn.Module):
        def __init__(self, num_classes: int, width: int = 32) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.pool(self.block(self.stem(x))).flatten(1))

    @register_backbone(
        "mynet",
        inner_layer="stem",
        last_layer="block",
        head="head",
        input_defaults={"image_size": 64, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
        model_types=(MyNet,),
    )
    def build_mynet(num_classes: int, weights: str | None = None, **kwargs) -> nn.Module:
        if weights is not None:
            raise ValueError("mynet has no pretrained weights; pass weights=None")
        return MyNet(num_classes, **kwargs)

    ICASCModule({"name": "mynet", "width": 16}, num_classes=10)  # attention at stem / block

Names are looked up in icasc's registry; ``source="timm"`` looks them up in timm instead (any
``timm.list_models()`` name, see :mod:`icasc.models.timm_backbones`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from icasc.utils import is_int

__all__ = [
    "SOURCES",
    "BackboneBuilder",
    "BackboneEntry",
    "InputDefaults",
    "backbone_source",
    "build_backbone",
    "classifier_head",
    "default_attention_layers",
    "find_backbone",
    "get_backbone",
    "input_defaults",
    "list_backbones",
    "register_backbone",
    "unregister_backbone",
]

BackboneBuilder = Callable[..., nn.Module]
# A layer: a dotted module name, or a function of the built model returning one (e.g. VGG's block ReLUs).
LayerRule = str | Callable[[nn.Module], str]
# A classifier head: a dotted module name (replaceable), or a function of the built model returning it.
HeadRule = str | Callable[[nn.Module], nn.Module]

# Where build_backbone looks a name up: None = icasc's registry, "timm" = timm's models.
SOURCES: tuple[str, ...] = ("timm",)
# The attribute build_backbone records the (name, source) of a built model under.
_BUILT_AS = "_icasc_backbone"


@dataclass(frozen=True)
class InputDefaults:
    """The input a backbone expects: side length in pixels and per-channel normalisation."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, value: InputDefaults | Mapping[str, Any]) -> InputDefaults:
        """An ``InputDefaults`` from itself or a ``{"image_size", "mean", "std"}`` mapping."""
        if isinstance(value, InputDefaults):
            return value
        missing = {"image_size", "mean", "std"} - set(value)
        if missing:
            raise ValueError(f"input_defaults needs image_size, mean and std; missing {sorted(missing)}")
        return cls(int(value["image_size"]), tuple(value["mean"]), tuple(value["std"]))

    def as_dict(self) -> dict[str, Any]:
        """``{"image_size": int, "mean": [r, g, b], "std": [r, g, b]}`` (what model cards record)."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class BackboneEntry:
    """One architecture of the registry: its builder and what icasc needs to know about it.

    Attributes:
        name: Registry name (for timm entries: the timm architecture name).
        builder: ``builder(num_classes=..., weights=..., **kwargs) -> nn.Module`` returning ``[B, C]`` logits.
        inner_layer: Default inner attention layer: a dotted module name or a function of the built model.
        last_layer: Default last attention layer, likewise.
        head: The classifier head: a dotted module name (which icasc can replace) or a getter of the model.
        input_defaults: Default input size and normalisation, if known.
        source: The family: ``"torchvision"``, ``"icasc"``, ``"timm"`` or ``"user"``.
        pretrained: How pretrained weights are obtained (a sentence for users), ``None`` when there are none.
        model_types: Model classes the entry covers, to find it for models built outside the registry.
    """

    name: str
    builder: BackboneBuilder
    inner_layer: LayerRule | None = None
    last_layer: LayerRule | None = None
    head: HeadRule | None = None
    input_defaults: InputDefaults | None = None
    source: str = "user"
    pretrained: str | None = None
    model_types: tuple[type[nn.Module], ...] = ()

    def attention_layers(self, model: nn.Module) -> tuple[str, str]:
        """The default ``(inner, last)`` attention layers of ``model`` (built from this entry)."""
        if self.inner_layer is None or self.last_layer is None:
            raise ValueError(
                f"backbone {self.name!r} was registered without inner_layer/last_layer; name the attention "
                "layers explicitly (model.attention.inner_layer / last_layer, dotted module names)"
            )
        rules = (self.inner_layer, self.last_layer)
        return tuple(rule if isinstance(rule, str) else rule(model) for rule in rules)

    def classifier(self, model: nn.Module) -> nn.Module:
        """The classifier head of ``model``."""
        if self.head is None:
            raise ValueError(f"backbone {self.name!r} was registered without head; register it with head=...")
        return model.get_submodule(self.head) if isinstance(self.head, str) else self.head(model)

    def replace_classifier(self, model: nn.Module, num_classes: int) -> nn.Linear:
        """Replace the linear head of ``model`` in place by a fresh ``nn.Linear`` with ``num_classes``."""
        if not isinstance(self.head, str):
            raise TypeError(
                f"backbone {self.name!r} declares its head by a getter, which cannot replace it; register "
                "head as a dotted module name (e.g. head='fc')"
            )
        old = self.classifier(model)
        if not isinstance(old, nn.Linear):
            kind = type(old).__name__
            raise TypeError(f"the head {self.head!r} of {self.name!r} is a {kind}, not an nn.Linear")
        parent_name, _, child = self.head.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = nn.Linear(old.in_features, num_classes)
        setattr(parent, child, new)
        return new


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(
    name: str,
    *,
    inner_layer: LayerRule | None = None,
    last_layer: LayerRule | None = None,
    head: HeadRule | None = None,
    input_defaults: InputDefaults | Mapping[str, Any] | None = None,
    source: str = "user",
    pretrained: str | None = None,
    model_types: tuple[type[nn.Module], ...] = (),
) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator registering a backbone builder under ``name`` with its metadata (see the module example).

    The builder is called as ``builder(num_classes=..., weights=..., **kwargs)`` and must return an
    ``nn.Module`` producing ``[B, num_classes]`` logits.

    Args:
        name: Registry name (must be unique).
        inner_layer: Default inner attention layer: a dotted name from ``model.named_modules()`` or a
            function ``model -> name``.
        last_layer: Default last attention layer, likewise.
        head: The classifier head: a dotted module name or a function ``model -> module``.
        input_defaults: ``{"image_size": int, "mean": [...], "std": [...]}`` (see :func:`input_defaults`).
        source: The family, e.g. ``"torchvision"``, ``"icasc"`` or ``"user"`` (the default).
        pretrained: How pretrained weights are obtained (a sentence), ``None`` when there are none.
        model_types: Model classes the entry covers, so that :func:`default_attention_layers` also finds it
            for such models built outside :func:`build_backbone`.

    Returns:
        The decorator, which returns the builder unchanged.

    Raises:
        ValueError: If ``name`` is already registered.
    """
    defaults = None if input_defaults is None else InputDefaults.of(input_defaults)

    def decorator(fn: BackboneBuilder) -> BackboneBuilder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered; choose another name")
        _REGISTRY[name] = BackboneEntry(
            name, fn, inner_layer, last_layer, head, defaults, source, pretrained, tuple(model_types)
        )
        return fn

    return decorator


def unregister_backbone(name: str) -> BackboneEntry:
    """Remove ``name`` from the registry (e.g. after a test, or to register it anew); returns its entry."""
    _check_name(name)
    return _REGISTRY.pop(name)


def list_backbones() -> list[str]:
    """Return the sorted names of all registered backbones (timm's are listed by ``timm.list_models()``)."""
    return sorted(_REGISTRY)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown backbone {name!r}; valid names are: {', '.join(list_backbones())} (or "
            "'<your.module>:<name>' for a backbone your module registers, or a timm architecture with "
            "source='timm': model/backbone=timm model.backbone.name=<name>)"
        )


def _registered_name(name: str) -> str:
    """``name``, or for ``"package.module:name"`` the ``name`` that importing ``package.module`` registers.

    The module form lets a config (``model.backbone.name=my_pkg.models:mynet``) and every checkpoint and
    model card that records it reach a user's backbone from any process: the import runs the decorator.
    """
    if name in _REGISTRY or ":" not in name:
        return name
    module, _, short = name.partition(":")
    try:  # every time (a cached import is cheap): the name must come from that module
        importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"backbone {name!r}: cannot import {module!r}, the module that registers {short!r} "
            f"({error}); make it importable (pip install -e your package, or add its folder to PYTHONPATH)"
        ) from error
    if short not in _REGISTRY:
        raise KeyError(
            f"backbone {name!r}: importing {module!r} registered no backbone {short!r}; decorate its builder "
            f"with @register_backbone({short!r}, ...) (registered: {', '.join(list_backbones())})"
        )
    return short


def _check_source(source: str | None) -> None:
    if source is not None and source not in SOURCES:
        raise ValueError(
            f"unknown backbone source {source!r} (model.backbone.source); valid: {', '.join(SOURCES)}, or "
            "leave it unset for icasc's registry"
        )


def get_backbone(name: str, source: str | None = None) -> BackboneEntry:
    """The entry of a backbone.

    Args:
        name: Registry name (``source=None``) or timm architecture name (``source="timm"``).
        source: Where to look ``name`` up: ``None`` for icasc's registry, ``"timm"`` for timm.

    Raises:
        KeyError: ``name`` is not registered (the message lists the valid names).
        ValueError: An unknown ``source``, or (timm) a missing or unknown timm name.
        ImportError: ``source="timm"`` without timm installed.
    """
    _check_source(source)
    if source == "timm":
        from icasc.models.timm_backbones import timm_entry  # timm is an optional extra

        return timm_entry(name)
    name = _registered_name(name)
    _check_name(name)
    return _REGISTRY[name]


def backbone_source(name: str, source: str | None = None) -> str | None:
    """The family of a backbone name (``"torchvision"``, ``"icasc"``, ``"timm"``, ...) without building
    anything or importing timm; ``None`` for a name that is not registered."""
    _check_source(source)
    if source is not None:
        return source
    entry = _REGISTRY.get(name) if ":" not in name else get_backbone(name)
    return entry.source if entry is not None else None


def build_backbone(
    name: str, num_classes: int, weights: str | None = None, *, source: str | None = None, **kwargs: Any
) -> nn.Module:
    """Build a registered backbone (or a timm one with ``source="timm"``).

    Args:
        name: Registry name, see :func:`list_backbones`; with ``source="timm"`` a timm architecture name.
        num_classes: Number of output classes (>= 1).
        weights: Pretrained weights (see the entry's ``pretrained``): for torchvision backbones a weights
            name passed to torchvision (e.g. ``"IMAGENET1K_V1"`` or ``"DEFAULT"``; downloading needs
            internet access); when given, the pretrained 1000-way head is replaced by a fresh ``nn.Linear``
            if ``num_classes != 1000``. For timm ``"DEFAULT"`` or a pretrained tag. Not supported for the
            CIFAR ResNets and ``tiny_cnn``.
        source: ``None`` (icasc's registry) or ``"timm"``.
        **kwargs: Extra builder arguments (e.g. ``shortcut="B"`` for CIFAR ResNets, ``width`` and
            ``batchnorm`` for ``tiny_cnn``, torchvision or timm builder arguments otherwise).

    Returns:
        The model, with its registry name recorded so that :func:`find_backbone` finds its entry. Torchvision
        backbones are the plain torchvision classes, so their ``state_dict`` loads into e.g.
        ``torchvision.models.resnet18(num_classes=num_classes)``; timm ones are plain timm models.

    Raises:
        KeyError: If ``name`` is not registered (the message lists the valid names).
        ValueError: If ``num_classes < 1`` or ``weights`` is invalid for the backbone.
        PretrainedWeightsError: ``weights`` could not be downloaded (no network) or read from the cache;
            the message names the file, where to copy it, and how to train without it.
    """
    entry = get_backbone(name, source)
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    model = entry.builder(num_classes=int(num_classes), weights=weights, **kwargs)
    setattr(model, _BUILT_AS, (entry.name, source))  # a plain attribute: not in the state dict
    return model


def find_backbone(model: nn.Module) -> BackboneEntry | None:
    """The entry of a model: the one it was built from, else one whose ``model_types`` cover it, else
    (for a timm model) its timm entry; ``None`` when nothing covers it."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    built_as = getattr(model, _BUILT_AS, None)
    if built_as is not None:
        name, source = built_as
        if source is not None or name in _REGISTRY:
            return get_backbone(name, source)
    for entry in _REGISTRY.values():
        if entry.model_types and isinstance(model, entry.model_types):
            return entry
    if "timm" in sys.modules:  # a timm model exists only where timm was imported
        from icasc.models.timm_backbones import entry_for_model

        return entry_for_model(model)
    return None


def default_attention_layers(model: nn.Module) -> tuple[str, str]:
    """Return the default ``(inner, last)`` attention layers of a model as dotted module names.

    Asks the model's registry entry (:func:`find_backbone`), so it also applies to models built outside
    the registry whose class an entry covers (e.g. ``torchvision.models.resnet34()``):

    * torchvision ResNet: ``("layer3", "layer4")``
    * CIFAR ResNet: ``("layer2", "layer3")``
    * ``tiny_cnn``: ``("layer1", "layer2")``
    * torchvision VGG: the ReLUs after the last conv of the 4th and 5th blocks (e.g. ``features.26`` /
      ``features.35`` = conv4_4 / conv5_4 for VGG-19; ``features.22`` / ``features.29`` for VGG-16).
    * timm: the last two stages of ``model.feature_info`` with spatial maps (e.g. ``layer3``/``layer4``
      for ResNets, ``stages.2``/``stages.3`` for ConvNeXt).

    Args:
        model: The classifier.

    Returns:
        ``(inner_layer, last_layer)`` names, valid keys of ``dict(model.named_modules())``.

    Raises:
        ValueError: If no entry covers the model, or its entry declares no attention layers.
    """
    entry = find_backbone(model)
    if entry is None:
        raise ValueError(
            f"no default attention layers for model type {type(model).__name__}; name inner_layer and "
            "last_layer explicitly (dotted module names from model.named_modules()), or register the "
            "architecture with icasc.models.register_backbone(..., model_types=(...))"
        )
    return entry.attention_layers(getattr(model, "_orig_mod", model))


def classifier_head(model: nn.Module) -> nn.Module:
    """The classifier head of a model, as its registry entry declares it.

    Raises:
        ValueError: No entry covers the model, or its entry declares no head.
    """
    entry = find_backbone(model)
    if entry is None:
        raise ValueError(f"no registered backbone covers a {type(model).__name__}; its head is unknown")
    return entry.classifier(getattr(model, "_orig_mod", model))


def input_defaults(name: str, source: str | None = None) -> dict[str, Any]:
    """Return the default input size and normalisation a backbone was designed for (a reference for
    choosing data settings; model cards record the input of the data the model was trained on).

    Args:
        name: Registry name (or timm name with ``source="timm"``).
        source: ``None`` or ``"timm"``, as for :func:`build_backbone`.

    Returns:
        ``{"image_size": int, "mean": [r, g, b], "std": [r, g, b]}``: ImageNet statistics at 224 px for
        torchvision backbones, CIFAR-10 statistics at 32 px for CIFAR ResNets, 0.5/0.5 at 64 px for
        ``tiny_cnn``, timm's ``pretrained_cfg`` for timm backbones.

    Raises:
        KeyError: If ``name`` is not registered.
        ValueError: If the backbone was registered without input defaults.
    """
    entry = get_backbone(name, source)
    if entry.input_defaults is None:
        raise ValueError(f"backbone {name!r} was registered without input_defaults")
    return entry.input_defaults.as_dict()
