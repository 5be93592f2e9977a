"""Grad-CAM (Grad-CAM paper §3) and the ICASC channel-weighted attention as post-hoc explanations.

Both capture one layer's activations ``A`` with :class:`~icasc.attention.capture.FeatureCapture`, take the
gradient of each sample's own class score (the logit ``y^c``) with respect to them, combine the two with the
training-time functions of :mod:`icasc.attention.functional` (the one place where the CAM math lives), and
upsample the ``[B, h, w]`` map bilinearly to the input resolution.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from icasc.attention.capture import FeatureCapture, resolve_layer
from icasc.attention.functional import channel_weighted, grad_cam
from icasc.saliency._input_gradients import class_scores
from icasc.saliency.base import Attribution, TargetLike
from icasc.utils import resize_map

__all__ = ["ChannelWeightedAttention", "GradCAM"]


class _LayerGradientMap(Attribution):
    """Shared base: activations and class-score gradients of one layer, combined into an upsampled map.

    Args:
        model: The classifier, returning ``[B, K]`` logits.
        layer: Dotted name of the layer (as in ``model.named_modules()``); an unknown name raises a
            ValueError listing the valid ones.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__(model)
        resolve_layer(model, layer)
        self.layer = layer

    def _attribute(self, images: torch.Tensor, target: TargetLike) -> torch.Tensor:
        inputs = images.detach().requires_grad_(True)  # a graph to the layer even if the model is frozen
        with torch.enable_grad():
            with FeatureCapture(self.model, [self.layer]) as capture:
                logits = self.model(inputs)
            if self.layer not in capture.features:
                raise ValueError(
                    f"layer {self.layer!r} did not run in the forward pass; choose another layer"
                )
            features = capture.features[self.layer]
            if features.dim() != 4:
                raise ValueError(
                    f"layer {self.layer!r} returned shape {tuple(features.shape)}; a [B, K, h, w] "
                    "convolutional layer is needed"
                )
            _, scores = class_scores(logits, target)
            (grads,) = torch.autograd.grad(scores.sum(), features)
        maps = self._combine(features.detach(), grads)
        return resize_map(maps, tuple(images.shape[-2:]))

    @abstractmethod
    def _combine(self, features: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` map from the activations and the class-score gradients, both ``[B, K, h, w]``."""


class GradCAM(_LayerGradientMap):
    """Grad-CAM: ``ReLU(sum_k alpha_k^c A^k)`` with ``alpha_k^c = mean_ij dy^c/dA^k_ij`` (Eq. 1-2).

    Args:
        model: The classifier, returning ``[B, K]`` logits.
        layer: Dotted name of the convolutional layer, e.g. ``"layer4"``.
        relu: Apply the final ReLU of Eq. 2 (``False`` keeps the negative evidence, ablation of §3).
        pooling: ``"mean"`` (Eq. 1, global average pooling of the gradients) or ``"max"``.
        counterfactual: Use the negated gradients ``-dy^c/dA`` (counterfactual explanations, §5.2): the
            regions whose removal would raise the model's confidence in the class.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        relu: bool = True,
        pooling: str = "mean",
        counterfactual: bool = False,
    ) -> None:
        super().__init__(model, layer)
        if pooling not in ("mean", "max"):
            raise ValueError(f"pooling must be 'mean' or 'max', got {pooling!r}")
        self.relu = relu
        self.pooling = pooling
        self.counterfactual = counterfactual

    def _combine(self, features: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        grads = -grads if self.counterfactual else grads
        return grad_cam(features, grads, relu=self.relu, pooling=self.pooling)


class ChannelWeightedAttention(_LayerGradientMap):
    """ICASC channel-weighted attention ``ReLU(sum_k (sum_ij ReLU(dy^c/dA^k_ij)) A^k) / (h w)`` (ICASC Eq. 2).

    Args:
        model: The classifier, returning ``[B, K]`` logits.
        layer: Dotted name of the convolutional layer.
    """

    def _combine(self, features: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return channel_weighted(features, grads)
