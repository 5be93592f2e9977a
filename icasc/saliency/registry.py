"""Names of the saliency methods, as the explain command and the benchmarks spell them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from icasc.saliency.base import Attribution
from icasc.saliency.gradcam import ChannelWeightedAttention, GradCAM
from icasc.saliency.groupcam import GroupCAM
from icasc.saliency.guided_backprop import GuidedBackprop
from icasc.saliency.guided_gradcam import GuidedGradCAM
from icasc.saliency.integrated_gradients import IntegratedGradients
from icasc.saliency.occlusion import Occlusion
from icasc.saliency.smoothgrad import SmoothGrad
from icasc.saliency.vanilla import VanillaGradient

__all__ = ["LAYER_METHODS", "SALIENCY_METHODS", "build_method"]

# Methods that explain an inner layer take it as their second argument.
LAYER_METHODS: dict[str, type[Attribution]] = {
    "gradcam": GradCAM,
    "ach": ChannelWeightedAttention,
    "guided_gradcam": GuidedGradCAM,
    "groupcam": GroupCAM,
}
INPUT_METHODS: dict[str, Callable[..., Attribution]] = {
    "vanilla": VanillaGradient,
    "guided_backprop": GuidedBackprop,
    "integrated_gradients": IntegratedGradients,
    "occlusion": Occlusion,
    # SmoothGrad over the plain gradient (SmoothGrad paper); its options go to SmoothGrad.
    "smoothgrad": lambda model, **kw: SmoothGrad(VanillaGradient(model), **kw),
}
SALIENCY_METHODS = [*LAYER_METHODS, *INPUT_METHODS]


def build_method(
    name: str, model: nn.Module, layer: str | None = None, options: Mapping[str, Any] | None = None
) -> Attribution:
    """Build the saliency method ``name`` for ``model``.

    Args:
        name: One of :data:`SALIENCY_METHODS`.
        model: The classifier.
        layer: The layer of the layer-based methods (:data:`LAYER_METHODS`); ignored by the others.
        options: Keyword arguments of the method's constructor.

    Raises:
        ValueError: An unknown name (the message lists the valid ones), or no layer for a layer method.
    """
    kwargs = dict(options or {})
    if name in LAYER_METHODS:
        if layer is None:
            raise ValueError(f"saliency method {name!r} needs a layer (a dotted module name)")
        return LAYER_METHODS[name](model, layer, **kwargs)
    if name in INPUT_METHODS:
        return INPUT_METHODS[name](model, **kwargs)
    raise ValueError(f"unknown saliency method {name!r}; choose from {', '.join(SALIENCY_METHODS)}")
