"""Guided backpropagation and deconvolution: input gradients through modified ReLU backward passes.

Guided backprop (Springenberg et al. 2015; Grad-CAM paper §3.1 and Fig. 1b) passes back through a ReLU
only the positive gradient at the positions where the forward input was positive,
``dL/dx = [x > 0] * relu(dL/dy)``; deconvolution (Zeiler & Fergus 2014) passes ``relu(dL/dy)`` regardless of
the forward sign.

Every ReLU that runs during the forward pass is replaced, through a ``TorchFunctionMode`` active only for
that pass, by a function with the modified backward. ``nn.ReLU`` modules call ``F.relu``, so the mode covers
them (inplace or not, used once or several times, as ResNet's ``BasicBlock.relu``) as well as ``F.relu``,
``torch.relu``, ``Tensor.relu`` and their inplace variants called inside ``forward`` methods. No hooks are
added to the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from icasc.saliency._input_gradients import ChannelAttribution, input_gradients
from icasc.saliency.base import TargetLike

__all__ = ["Deconvolution", "GuidedBackprop"]

_RELUS = {F.relu, torch.relu, torch.Tensor.relu}
_INPLACE_RELUS = {torch.relu_, torch.Tensor.relu_}


class _RectifiedBackward(torch.autograd.Function):
    """``relu(x)`` forward; backward ``[x > 0] * relu(g)`` (guided) or ``relu(g)`` (deconvolution)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, guided: bool, inplace: bool) -> torch.Tensor:
        if inplace:
            out = x.clamp_(min=0)
            ctx.mark_dirty(x)
        else:
            out = x.clamp(min=0)
        ctx.guided = guided
        ctx.save_for_backward(out > 0 if guided else None)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (positive,) = ctx.saved_tensors
        grad = grad.clamp(min=0)
        return (grad * positive if ctx.guided else grad), None, None


class _RectifiedReLUMode(TorchFunctionMode):
    """Routes every ReLU call through :class:`_RectifiedBackward` and counts them."""

    def __init__(self, guided: bool) -> None:
        super().__init__()
        self.guided = guided
        self.calls = 0

    def __torch_function__(
        self, func: Callable, types: Sequence[type], args: Sequence = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _RELUS or func in _INPLACE_RELUS:
            inplace = func in _INPLACE_RELUS or bool(kwargs.get("inplace", False))
            self.calls += 1
            return _RectifiedBackward.apply(args[0], self.guided, inplace)
        return func(*args, **kwargs)


class GuidedBackprop(ChannelAttribution):
    """Guided backpropagation of the class score (logit) to the input pixels.

    Args:
        model: The classifier, returning ``[B, K]`` logits; it must use ReLU activations.
        reduce: ``"absmax"`` or ``"sum"`` over the colour channels of ``|g|``
            (see :func:`~icasc.saliency._input_gradients.reduce_channels`).

    Raises:
        ValueError: (at call time) No ReLU ran in the forward pass, so the result would silently be the
            vanilla gradient.
    """

    _mask_by_forward_sign = True  # guided backprop; deconvolution ignores the forward sign

    def __init__(self, model: nn.Module, reduce: str = "absmax") -> None:
        super().__init__(model, reduce)

    def input_gradients(self, images: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The raw, signed guided gradients, ``[B, C, H, W]`` (the same as :meth:`attributions`)."""
        return self.attributions(images, target)

    def _channel_attributions(self, images: torch.Tensor, target: TargetLike) -> torch.Tensor:
        return self.gradients_and_classes(images, target)[0]

    def gradients_and_classes(
        self, images: torch.Tensor, target: TargetLike
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The guided gradients and the resolved ``[B]`` classes; the model must already be in eval mode."""
        mode = _RectifiedReLUMode(self._mask_by_forward_sign)
        grads, classes = input_gradients(self.model, images, target, forward_context=mode)
        if mode.calls == 0:
            raise ValueError(
                f"{type(self).__name__} found no ReLU in the forward pass of {type(self.model).__name__}; "
                "it only modifies ReLU backward passes, so use VanillaGradient for this model"
            )
        return grads, classes


class Deconvolution(GuidedBackprop):
    """Deconvolution (Zeiler & Fergus 2014): through each ReLU only ``relu(grad)`` flows back."""

    _mask_by_forward_sign = False
