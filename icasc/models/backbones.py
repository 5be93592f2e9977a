"""The built-in backbones (torchvision ResNets/VGGs, CIFAR ResNets, a tiny CNN), registered with metadata.

The registry itself (:class:`~icasc.models.registry.BackboneEntry`, :func:`register_backbone`, lookups)
lives in :mod:`icasc.models.registry`; its public functions are re-exported here. timm backbones come
through the same registry with ``source="timm"`` (:mod:`icasc.models.timm_backbones`).

Example:
    >>> from icasc.models.backbones import build_backbone, default_attention_layers
    >>> model = build_backbone("cifar_resnet20", num_classes=10)
    >>> default_attention_layers(model)
    ('layer2', 'layer3')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torchvision
from torch import nn
from torchvision.models import VGG, ResNet

from icasc.data.normalization import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from icasc.models.cifar_resnet import CifarResNet
from icasc.models.pretrained import PretrainedWeightsError, build_pretrained
from icasc.models.registry import (
    BackboneBuilder,
    BackboneEntry,
    InputDefaults,
    backbone_source,
    build_backbone,
    classifier_head,
    default_attention_layers,
    find_backbone,
    get_backbone,
    input_defaults,
    list_backbones,
    register_backbone,
    unregister_backbone,
)
from icasc.models.tiny import TinyCNN

__all__ = [
    "TORCHVISION_BACKBONES",
    "BackboneEntry",
    "InputDefaults",
    "PretrainedWeightsError",
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

# --------------------------------------------------------------------------------------------- torchvision

_RESNET_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_VGG_NAMES = ("vgg16", "vgg19", "vgg16_bn", "vgg19_bn")
TORCHVISION_BACKBONES: tuple[str, ...] = _RESNET_NAMES + _VGG_NAMES
_IMAGENET_DEFAULTS = InputDefaults(224, IMAGENET_MEAN, IMAGENET_STD)
_TORCHVISION_PRETRAINED = (
    "torchvision's weights API: model.backbone.weights=DEFAULT or a weights name (e.g. IMAGENET1K_V1), or "
    "init_from=torchvision:<WEIGHTS>; downloaded to torch.hub's cache on first use"
)


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


def _make_torchvision_builder(name: str) -> BackboneBuilder:
    def builder(num_classes: int, weights: str | None = None, **kwargs: Any) -> nn.Module:
        # Look the builder up at call time so that it can be monkeypatched in tests.
        tv_fn = getattr(torchvision.models, name)
        if weights is None:
            return tv_fn(weights=None, num_classes=num_classes, **kwargs)
        _check_torchvision_weights(name, weights)
        model = build_pretrained(tv_fn, name, weights, "model.backbone.weights=null", **kwargs)
        if num_classes != 1000:
            get_backbone(name).replace_classifier(model, num_classes)
        return model

    builder.__name__ = builder.__qualname__ = f"build_{name}"
    builder.__doc__ = f"Build ``torchvision.models.{name}`` (see :func:`build_backbone`)."
    return builder


def _vgg_block_relus(model: nn.Module) -> list[str]:
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


def _vgg_block_relu(block: int) -> Callable[[nn.Module], str]:
    """The layer rule of VGGs: the ReLU after the last conv of conv block ``block`` (0-based)."""

    def rule(model: nn.Module) -> str:
        relus = _vgg_block_relus(model)
        if len(relus) < 5:
            raise ValueError(
                f"VGG model has {len(relus)} conv blocks, expected 5; name inner_layer/last_layer explicitly"
            )
        return relus[block]

    return rule


for _name in _RESNET_NAMES:
    register_backbone(
        _name,
        inner_layer="layer3",
        last_layer="layer4",
        head="fc",
        input_defaults=_IMAGENET_DEFAULTS,
        source="torchvision",
        pretrained=_TORCHVISION_PRETRAINED,
        model_types=(ResNet,),
    )(_make_torchvision_builder(_name))

for _name in _VGG_NAMES:
    # conv4_x / conv5_x ReLUs, e.g. features.26 / features.35 for VGG-19, features.22 / features.29 for VGG-16
    register_backbone(
        _name,
        inner_layer=_vgg_block_relu(3),
        last_layer=_vgg_block_relu(4),
        head="classifier.6",
        input_defaults=_IMAGENET_DEFAULTS,
        source="torchvision",
        pretrained=_TORCHVISION_PRETRAINED,
        model_types=(VGG,),
    )(_make_torchvision_builder(_name))


# ----------------------------------------------------------------------------------------- CIFAR / tiny

_CIFAR_DEFAULTS = InputDefaults(32, CIFAR10_MEAN, CIFAR10_STD)
_TINY_DEFAULTS = InputDefaults(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


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
    register_backbone(
        f"cifar_resnet{_depth}",
        inner_layer="layer2",
        last_layer="layer3",
        head="fc",
        input_defaults=_CIFAR_DEFAULTS,
        source="icasc",
        model_types=(CifarResNet,),
    )(_make_cifar_builder(_depth))


@register_backbone(
    "tiny_cnn",
    inner_layer="layer1",
    last_layer="layer2",
    head="fc",
    input_defaults=_TINY_DEFAULTS,
    source="icasc",
    model_types=(TinyCNN,),
)
def _build_tiny_cnn(num_classes: int, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """Build :class:`~icasc.models.tiny.TinyCNN` (kwargs: ``width=16``, ``batchnorm=True``)."""
    _no_weights("tiny_cnn", weights)
    return TinyCNN(num_classes=num_classes, **kwargs)
