"""Shared pieces of the input-space methods: class scores, input gradients, channel reduction.

Input-space methods (vanilla gradient, guided backprop, integrated gradients, guided Grad-CAM) first produce
a signed ``[B, C, H, W]`` value per input element and then collapse the colour channels into a ``[B, H, W]``
map. :class:`ChannelAttribution` fixes that two-step shape so that
:class:`~icasc.saliency.smoothgrad.SmoothGrad` can average the raw ``[B, C, H, W]`` values before the
reduction (SmoothGrad paper §3.4).
"""

from __future__ import annotations

from abc import abstractmethod
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from icasc.saliency.base import Attribution, TargetLike, check_images, resolve_target
from icasc.utils import eval_mode

__all__ = ["REDUCTIONS", "ChannelAttribution", "class_scores", "input_gradients", "reduce_channels"]

REDUCTIONS = ("absmax", "sum")


def reduce_channels(values: torch.Tensor, reduce: str) -> torch.Tensor:
    """Collapse the channels of ``[B, C, H, W]`` attributions into ``[B, H, W]`` maps.

    ``"absmax"`` is ``max_c |v_c|``, the reduction of Simonyan et al. (2014, §3.1) for gradient maps;
    ``"sum"`` is ``sum_c |v_c|``, the grayscale visualisation the SmoothGrad authors used for their figures.
    Both take the absolute value (SmoothGrad paper §3.1, "Absolute value of gradients": clearer maps on
    ImageNet, where the sign of a colour gradient depends on the context).

    Args:
        values: ``[B, C, H, W]`` signed attributions.
        reduce: ``"absmax"`` or ``"sum"``.

    Returns:
        ``[B, H, W]`` non-negative maps.
    """
    if reduce == "absmax":
        return values.abs().amax(dim=1)
    if reduce == "sum":
        return values.abs().sum(dim=1)
    raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")


def class_scores(logits: torch.Tensor, target: TargetLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's score for its class of interest.

    Args:
        logits: ``[B, K]`` model output.
        target: As for :func:`~icasc.saliency.base.resolve_target`.

    Returns:
        The resolved ``[B]`` classes and the ``[B]`` scores ``S_c(x)`` (pre-softmax logits).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return [B, num_classes] logits, got {shape}")
    classes = resolve_target(logits, target)
    return classes, logits.gather(1, classes[:, None]).squeeze(1)


def input_gradients(
    model: nn.Module,
    images: torch.Tensor,
    target: TargetLike,
    forward_context: AbstractContextManager | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dS_c/dx`` for each sample's own class, in one forward and one backward pass.

    The scores of the batch are summed before differentiating: in eval mode the samples do not interact,
    so each image receives the gradient of its own score. Only ``torch.autograd.grad`` with respect to the
    input is used, so parameter ``.grad`` is never touched.

    Args:
        model: The classifier, already in eval mode.
        images: ``[B, C, H, W]`` images.
        target: As for :func:`~icasc.saliency.base.resolve_target`.
        forward_context: Entered around the forward pass only (e.g. a mode that swaps ReLU backward rules).

    Returns:
        The ``[B, C, H, W]`` signed gradients and the resolved ``[B]`` classes.
    """
    inputs = images.detach().requires_grad_(True)
    with torch.enable_grad():
        with forward_context or nullcontext():
            logits = model(inputs)
        classes, scores = class_scores(logits, target)
        (grads,) = torch.autograd.grad(scores.sum(), inputs)
    return grads, classes


class ChannelAttribution(Attribution):
    """A method whose raw output is a signed ``[B, C, H, W]`` value per input element.

    Subclasses implement :meth:`_channel_attributions`; :meth:`attribute` reduces its output over the
    channels with ``reduce`` (see :func:`reduce_channels`).

    Args:
        model: The classifier, returning ``[B, K]`` logits.
        reduce: ``"absmax"`` (max over channels of ``|v|``) or ``"sum"`` (sum over channels of ``|v|``).
    """

    def __init__(self, model: nn.Module, reduce: str = "absmax") -> None:
        super().__init__(model)
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.reduce = reduce

    def attributions(self, images: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The raw, signed ``[B, C, H, W]`` attributions before the channel reduction.

        Args:
            images: ``[B, C, H, W]`` normalised images.
            target: ``None`` (predicted class), an int, or a ``[B]`` tensor of classes.
        """
        check_images(images)
        with eval_mode(self.model):
            values = self._channel_attributions(images, target)
        return values.detach()

    def _attribute(self, images: torch.Tensor, target: TargetLike) -> torch.Tensor:
        return reduce_channels(self._channel_attributions(images, target), self.reduce)

    @abstractmethod
    def _channel_attributions(self, images: torch.Tensor, target: TargetLike) -> torch.Tensor:
        """``[B, C, H, W]`` attributions, computed with the model already in eval mode."""
