"""Registry of named backbones (torchvision ResNets/VGGs, CIFAR ResNets, a tiny CNN).

Example:
    >>> from icasc.models.backbones import build_backbone, default_attention_layers
    >>> model = build_backbone("cifar_resnet20", num_classes=10)
    >>> default_attention_layers(model)
    ('layer2', 'layer3')
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torchvision
from torch import nn
from torchvision.models import VGG, ResNet

from icasc.models.cifar_resnet import CifarResNet
from icasc.models.pretrained import PretrainedWeightsError, build_pretrained
from icasc.models.tiny import TinyCNN

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TORCHVISION_BACKBONES",
    "PretrainedWeightsError",
    "build_backbone",
    "default_attention_layers",
    "input_defaults",
    "list_backbones",
    "register_backbone",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

BackboneBuilder = Callable[..., nn.Module]

_REGISTRY: dict[str, BackboneBuilder] = {}
_INPUT_DEFAULTS: dict[str, dict[str, Any]] = {}


def register_backbone(
    name: str, input_defaults: Mapping[str, Any] | None = None
) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator registering a backbone builder under ``name``.

    The builder is called as ``builder(num_classes=..., weights=..., **kwargs)`` and must return an
    ``nn.Module`` producing ``[B, num_classes]`` logits.

    Args:
        name: Registry name (must be unique).
        input_defaults: Optional ``{"image_size": int, "mean": [...], "std": [...]}`` returned by
            :func:`input_defaults`.

    Returns:
        The decorator, which returns the builder unchanged.

    Raises:
        ValueError: If ``name`` is already registered.
    """

    def decorator(fn: BackboneBuilder) -> BackboneBuilder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered; choose another name")
        _REGISTRY[name] = fn
        if input_defaults is not None:
            _INPUT_DEFAULTS[name] = dict(input_defaults)
        return fn

    return decorator


def list_backbones() -> list[str]:
    """Return the sorted names of all registered backbones."""
    return sorted(_REGISTRY)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; valid names are: {', '.join(list_backbones())}")


def build_backbone(name: str, num_classes: int, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered backbone.

    Args:
        name: Registry name, see :func:`list_backbones`.
        num_classes: Number of output classes (>= 1).
        weights: Pretrained weights for torchvision backbones, passed to the torchvision builder
            (e.g. ``"IMAGENET1K_V1"`` or ``"DEFAULT"``; downloading needs internet access). When given,
            the pretrained 1000-way head is replaced by a fresh ``nn.Linear`` if ``num_classes != 1000``.
            Not supported for the CIFAR ResNets and ``tiny_cnn``.
        **kwargs: Extra builder arguments (e.g. ``shortcut="B"`` for CIFAR ResNets, ``width`` and
            ``batchnorm`` for ``tiny_cnn``, torchvision builder arguments otherwise).

    Returns:
        The model. Torchvision backbones are the plain torchvision classes, so their ``state_dict``
        loads into e.g. ``torchvision.models.resnet18(num_classes=num_classes)``.

    Raises:
        KeyError: If ``name`` is not registered (the message lists the valid names).
        ValueError: If ``num_classes < 1`` or ``weights`` is invalid for the backbone.
        PretrainedWeightsError: ``weights`` could not be downloaded (no network) or read from
            torch.hub's cache; the message names the file, where to copy it, and how to train without it.
    """
    _check_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    return _REGISTRY[name](num_classes=int(num_classes), weights=weights, **kwargs)


def input_defaults(name: str) -> dict[str, Any]:
    """Return the default input size and normalisation of a backbone (used in model cards).

    Args:
        name: Registry name.

    Returns:
        ``{"image_size": int, "mean": [r, g, b], "std": [r, g, b]}``: ImageNet statistics at 224 px for
        torchvision backbones, CIFAR-10 statistics at 32 px for CIFAR ResNets, 0.5/0.5 at 64 px for
        ``tiny_cnn``.

    Raises:
        KeyError: If ``name`` is not registered.
        ValueError: If the backbone was registered without input defaults.
    """
    _check_name(name)
    if name not in _INPUT_DEFAULTS:
        raise ValueError(f"backbone {name!r} was registered without input_defaults")
    d = _INPUT_DEFAULTS[name]
    return {"image_size": d["image_size"], "mean": list(d["mean"]), "std": list(d["std"])}


# --------------------------------------------------------------------------------------------- torchvision

_RESNET_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_VGG_NAMES = ("vgg16", "vgg19", "vgg16_bn", "vgg19_bn")
TORCHVISION_BACKBONES: tuple[str, ...] = _RESNET_NAMES + _VGG_NAMES
_IMAGENET_DEFAULTS = {"image_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def _check_torchvision_weights(name: str, weights: Any) -> None:
    """Validate a weights string against torchvision's enum without downloading anything."""
    if not isinstance(weights, str):
        return  # a torchvision WeightsEnum member: torchvision validates it
    enum_cls = torchvision.models.get_model_weights(name)
    key = weights.removeprefix(enum_cls.__name__ + ".")
    if key not in enum_cls.__members__:
        valid = ", ".join(["DEFAULT", *(w.name for w in enum_cls)])
        raise ValueError(
            f"unknown weights {weights!r} for backbone {name!r}; valid values are: {valid} (or None)"
        )


def _replace_head(model: nn.Module, num_classes: int) -> None:
    if isinstance(model, ResNet):
        old = model.fc
        model.fc = nn.Linear(old.in_features, num_classes)
    elif isinstance(model, VGG):
        old = model.classifier[6]
        model.classifier[6] = nn.Linear(old.in_features, num_classes)
    else:  # pragma: no cover - only ResNet/VGG builders are registered
        raise TypeError(f"do not know how to replace the head of {type(model).__name__}")


def _make_torchvision_builder(name: str) -> BackboneBuilder:
    def builder(num_classes: int, weights: str | None = None, **kwargs: Any) -> nn.Module:
        # Look the builder up at call time so that it can be monkeypatched in tests.
        tv_fn = getattr(torchvision.models, name)
        if weights is None:
            return tv_fn(weights=None, num_classes=num_classes, **kwargs)
        _check_torchvision_weights(name, weights)
        model = build_pretrained(tv_fn, name, weights, "model.backbone.weights=null", **kwargs)
        if num_classes != 1000:
            _replace_head(model, num_classes)
        return model

    builder.__name__ = builder.__qualname__ = f"build_{name}"
    builder.__doc__ = f"Build ``torchvision.models.{name}`` (see :func:`build_backbone`)."
    return builder


for _name in TORCHVISION_BACKBONES:
    register_backbone(_name, _IMAGENET_DEFAULTS)(_make_torchvision_builder(_name))


# ----------------------------------------------------------------------------------------- CIFAR / tiny

_CIFAR_DEFAULTS = {"image_size": 32, "mean": CIFAR10_MEAN, "std": CIFAR10_STD}
_TINY_DEFAULTS = {"image_size": 64, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def _no_weights(name: str, weights: Any) -> None:
    if weights is not None:
        raise ValueError(f"pretrained weights are not supported for backbone {name!r}; pass weights=None")


def _make_cifar_builder(depth: int) -> BackboneBuilder:
    name = f"cifar_resnet{depth}"

    def builder(num_classes: int, weights: str | None = None, **kwargs: Any) -> nn.Module:
        _no_weights(name, weights)
        return CifarResNet(depth, num_classes=num_classes, **kwargs)

    builder.__name__ = builder.__qualname__ = f"build_{name}"
    builder.__doc__ = f"Build a CIFAR ResNet-{depth} (kwargs: ``shortcut='A'|'B'``)."
    return builder


for _depth in (20, 32, 56, 110):
    register_backbone(f"cifar_resnet{_depth}", _CIFAR_DEFAULTS)(_make_cifar_builder(_depth))


@register_backbone("tiny_cnn", _TINY_DEFAULTS)
def _build_tiny_cnn(num_classes: int, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """Build :class:`~icasc.models.tiny.TinyCNN` (kwargs: ``width=16``, ``batchnorm=True``)."""
    _no_weights("tiny_cnn", weights)
    return TinyCNN(num_classes=num_classes, **kwargs)


# ------------------------------------------------------------------------------------- attention layers


def _vgg_block_relus(model: VGG) -> list[str]:
    """Names of the ReLU following the last conv of each MaxPool-delimited block of ``model.features``."""
    relus: list[str] = []
    pending_conv = False
    last_relu: str | None = None
    for idx, module in enumerate(model.features):
        if isinstance(module, nn.Conv2d):
            pending_conv, last_relu = True, None
        elif isinstance(module, nn.ReLU) and pending_conv:
            pending_conv, last_relu = False, f"features.{idx}"
        elif isinstance(module, nn.MaxPool2d):
            if last_relu is not None:
                relus.append(last_relu)
            pending_conv, last_relu = False, None
    if last_relu is not None:  # a final block not closed by a pool
        relus.append(last_relu)
    return relus


def default_attention_layers(model: nn.Module) -> tuple[str, str]:
    """Return the default ``(inner, last)`` attention layers of a model as dotted module names.

    Works on the model type, so it also applies to torchvision models built outside the registry:

    * torchvision ResNet: ``("layer3", "layer4")``
    * CIFAR ResNet: ``("layer2", "layer3")``
    * ``tiny_cnn``: ``("layer1", "layer2")``
    * torchvision VGG: the ReLUs after the last conv of the 4th and 5th blocks (e.g. ``features.26`` /
      ``features.35`` = conv4_4 / conv5_4 for VGG-19; ``features.22`` / ``features.29`` for VGG-16).

    Args:
        model: The classifier.

    Returns:
        ``(inner_layer, last_layer)`` names, valid keys of ``dict(model.named_modules())``.

    Raises:
        ValueError: If there is no default for the model type.
    """
    if isinstance(model, ResNet):
        return ("layer3", "layer4")
    if isinstance(model, CifarResNet):
        return ("layer2", "layer3")
    if isinstance(model, TinyCNN):
        return ("layer1", "layer2")
    if isinstance(model, VGG):
        relus = _vgg_block_relus(model)
        if len(relus) < 5:
            raise ValueError(
                f"VGG model has {len(relus)} conv blocks, expected 5; name inner_layer/last_layer explicitly"
            )
        return (relus[3], relus[4])
    raise ValueError(
        f"no default attention layers for model type {type(model).__name__}; name inner_layer and "
        "last_layer explicitly (dotted module names from model.named_modules())"
    )
