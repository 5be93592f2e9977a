"""Integrated gradients (Sundararajan et al. 2017), also under SmoothGrad (SmoothGrad paper §3.4, Fig. 7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from icasc.saliency._input_gradients import ChannelAttribution, class_scores
from icasc.saliency.base import TargetLike
from icasc.utils import is_int

__all__ = ["IntegratedGradients"]

BaselineLike = str | float | torch.Tensor


class IntegratedGradients(ChannelAttribution):
    """Path integral of the input gradient of the class score (logit) along the straight line from a baseline.

    ``IG(x) = (x - x') * (1/m) * sum_{k=1..m} dS_c/dx (x' + (k/m)(x - x'))``: the right Riemann sum with
    ``m = steps``, so the last point is the image itself (``steps=1`` gives ``(x - x') * dS_c/dx(x)``).
    By completeness the attributions sum to ``S_c(x) - S_c(x')`` as ``m`` grows. The ``B * m`` path images
    are differentiated ``chunk_size`` at a time.

    Args:
        model: The classifier, returning ``[B, K]`` logits.
        steps: ``m``, the number of points of the Riemann sum.
        baseline: ``x'``. ``"black"`` is the black image expressed in the model's input space:
            ``(0 - mean) / std`` per channel when ``mean`` and ``std`` (the normalisation the images went
            through) are given, else all zeros (images that are not normalised, or a black that is zero).
            A float fills every element; a tensor must broadcast to ``[B, C, H, W]`` (e.g. ``[C, 1, 1]``).
        mean: Per-channel mean of the input normalisation, only for ``baseline="black"``.
        std: Per-channel standard deviation of the input normalisation, only for ``baseline="black"``.
        chunk_size: Path images per forward/backward pass.
        reduce: ``"absmax"`` or ``"sum"`` over the channels of ``|IG|``.
    """

    def __init__(
        self,
        model: nn.Module,
        steps: int = 50,
        baseline: BaselineLike = "black",
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        chunk_size: int = 64,
        reduce: str = "absmax",
    ) -> None:
        super().__init__(model, reduce)
        if not is_int(steps) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if not is_int(chunk_size) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (the input normalisation), or neither")
        if isinstance(baseline, str):
            if baseline != "black":
                raise ValueError(f"baseline must be 'black', a float or a tensor, got {baseline!r}")
        elif mean is not None:
            raise ValueError("mean/std only define the 'black' baseline; drop them or use baseline='black'")
        elif not isinstance(baseline, (float, int, torch.Tensor)):
            raise ValueError(f"baseline must be 'black', a float or a tensor, got {type(baseline).__name__}")
        self.steps = steps
        self.chunk_size = chunk_size
        self.baseline = baseline
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).flatten()
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32).flatten()
        if self.std is not None and bool((self.std == 0).any()):
            raise ValueError(f"std must be non-zero, got {self.std.tolist()}")

    def baseline_for(self, images: torch.Tensor) -> torch.Tensor:
        """The baseline ``x'`` expanded to the shape of ``images``."""
        if isinstance(self.baseline, str):
            if self.mean is None:
                return torch.zeros_like(images)
            if self.mean.numel() != images.shape[1] or self.std.numel() != images.shape[1]:
                raise ValueError(
                    f"mean/std have {self.mean.numel()}/{self.std.numel()} entries for images with "
                    f"{images.shape[1]} channels"
                )
            black = (0 - self.mean) / self.std
            return black.to(images).view(1, -1, 1, 1).expand_as(images)
        if isinstance(self.baseline, torch.Tensor):
            try:
                return torch.broadcast_to(self.baseline.to(images), images.shape)
            except RuntimeError as err:
                raise ValueError(
                    f"baseline of shape {tuple(self.baseline.shape)} does not broadcast to the images "
                    f"{tuple(images.shape)}; give [C, 1, 1], [C, H, W] or [B, C, H, W]"
                ) from err
        return torch.full_like(images, float(self.baseline))

    def _channel_attributions(self, images: torch.Tensor, target: TargetLike) -> torch.Tensor:
        images = images.detach()
        with torch.no_grad():
            classes, _ = class_scores(self.model(images), target)
        difference = images - self.baseline_for(images)
        b, m = images.shape[0], self.steps
        # (1 - k/m) for k = 1..m; the path point x - (1 - k/m)(x - x') is exactly x at k = m.
        remaining = 1.0 - torch.arange(1, m + 1, device=images.device, dtype=images.dtype) / m
        total = torch.zeros_like(images)
        for start in range(0, b * m, self.chunk_size):
            flat = torch.arange(start, min(start + self.chunk_size, b * m), device=images.device)
            which, step = flat // m, flat % m
            points = images[which] - remaining[step].view(-1, 1, 1, 1) * difference[which]
            points.requires_grad_(True)
            with torch.enable_grad():
                _, scores = class_scores(self.model(points), classes[which])
                (grads,) = torch.autograd.grad(scores.sum(), points)
            total.index_add_(0, which, grads)
        return difference * total / m
