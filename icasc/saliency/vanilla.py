"""Vanilla gradient, the sensitivity map ``M_c(x) = dS_c(x)/dx`` (SmoothGrad paper §2; Simonyan 2014)."""

from __future__ import annotations

import torch
from torch import nn

from icasc.saliency._input_gradients import ChannelAttribution, input_gradients
from icasc.saliency.base import TargetLike

__all__ = ["VanillaGradient"]


class VanillaGradient(ChannelAttribution):
    """Gradient of the class score (the logit ``S_c``, not the softmax) with respect to the input pixels.

    The ``[B, C, H, W]`` gradient is collapsed over the colour channels with ``reduce``: ``"absmax"``
    (``max_c |dS_c/dx_c|``, Simonyan et al. 2014 §3.1) or ``"sum"`` (``sum_c |dS_c/dx_c|``, the
    grayscale visualisation of the SmoothGrad authors; the absolute value follows SmoothGrad paper §3.1).

    Args:
        model: The classifier, returning ``[B, K]`` logits.
        reduce: ``"absmax"`` or ``"sum"``.
    """

    def __init__(self, model: nn.Module, reduce: str = "absmax") -> None:
        super().__init__(model, reduce)

    def input_gradients(self, images: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The raw, signed gradients ``dS_c/dx``, ``[B, C, H, W]`` (the same as :meth:`attributions`)."""
        return self.attributions(images, target)

    def _channel_attributions(self, images: torch.Tensor, target: TargetLike) -> torch.Tensor:
        return input_gradients(self.model, images, target)[0]
