"""Guided Grad-CAM: guided backpropagation weighted by the upsampled Grad-CAM map (Grad-CAM paper §3.1)."""

from __future__ import annotations

import torch
from torch import nn

from icasc.saliency._input_gradients import ChannelAttribution
from icasc.saliency.base import TargetLike
from icasc.saliency.gradcam import GradCAM
from icasc.saliency.guided_backprop import GuidedBackprop

__all__ = ["GuidedGradCAM"]


class GuidedGradCAM(ChannelAttribution):
    """The point-wise product of the ``[B, C, H, W]`` guided gradients and the ``[B, 1, H, W]`` Grad-CAM map.

    The Grad-CAM map is bilinearly upsampled to the input resolution before the product ("we fuse Guided
    Backpropagation and Grad-CAM visualizations via element-wise multiplication", §3.1, Fig. 2); the product
    is then collapsed over the colour channels with ``reduce``. Two passes are needed: the guided ReLUs
    change the gradients that reach the Grad-CAM layer too.

    Args:
        model: The classifier, returning ``[B, K]`` logits; it must use ReLU activations.
        layer: Dotted name of the Grad-CAM layer, e.g. ``"layer4"``.
        reduce: ``"absmax"`` or ``"sum"`` over the channels of ``|guided * cam|``.
    """

    def __init__(self, model: nn.Module, layer: str, reduce: str = "absmax") -> None:
        super().__init__(model, reduce)
        self.guided = GuidedBackprop(model, reduce)
        self.cam = GradCAM(model, layer)

    def _channel_attributions(self, images: torch.Tensor, target: TargetLike) -> torch.Tensor:
        guided, classes = self.guided.gradients_and_classes(images, target)
        cam = self.cam.attribute(images, classes)
        return guided * cam.unsqueeze(1)
