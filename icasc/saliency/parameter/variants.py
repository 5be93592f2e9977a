"""Variants of parameter saliency from the appendix: SmoothGrad in parameter space (A.1), L1 (A.7, Eq. 6)."""

from __future__ import annotations

import torch
from torch import nn

from icasc.saliency.parameter.per_sample import Magnitude
from icasc.saliency.parameter.saliency import ParameterSaliency

__all__ = ["L1ParameterSaliency", "SmoothParameterSaliency"]


class SmoothParameterSaliency(ParameterSaliency):
    """Parameter SmoothGrad (appendix A.1): noise on the input, gradient w.r.t. the parameters, averaged.

    The profile is ``(1/n) sum_j s(x + sigma * eps_j)`` with ``eps_j ~ N(0, I)`` and, as in the house
    :class:`~icasc.saliency.smoothgrad.SmoothGrad`, ``sigma = level * (x_max - x_min)`` per image (A.1
    compares 1%, 5%, 10% and 50% noise). The ``n`` noise patterns come from a local generator seeded with
    ``seed`` at every call and are shared by the images of a batch, so results are reproducible and do not
    depend on the batch. Logits (predictions) are those of the clean images. ``level=0`` is the plain
    profile. :meth:`input_saliency` differentiates the averaged profile w.r.t. the clean image, the
    "input-space counterpart" of A.1.

    Args:
        model: The classifier.
        level: ``sigma / (x_max - x_min)``.
        n_samples: Noisy copies ``n``.
        seed: Seed of the local generator.
        **kwargs: As for :class:`ParameterSaliency`.
    """

    def __init__(
        self, model: nn.Module, level: float = 0.1, n_samples: int = 10, seed: int = 0, **kwargs
    ) -> None:
        super().__init__(model, **kwargs)
        if not level >= 0:
            raise ValueError(f"level must be >= 0, got {level!r}")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        self.level = float(level)
        self.n_samples = n_samples
        self.seed = seed

    def _compute(
        self, images: torch.Tensor, targets: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.level == 0:
            return super()._compute(images, targets, create_graph)
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        noise = torch.randn(
            (self.n_samples, *images.shape[1:]), generator=generator, device=images.device, dtype=images.dtype
        )
        flat = images.detach().flatten(1)
        sigma = (self.level * (flat.amax(dim=1) - flat.amin(dim=1))).view(-1, 1, 1, 1)
        total = None
        for j in range(self.n_samples):
            profiles, _ = super()._compute(images + sigma * noise[j], targets, create_graph)
            total = profiles if total is None else total + profiles
        with torch.no_grad():
            logits = self.model(images.detach())
        return total / self.n_samples, logits


class L1ParameterSaliency(ParameterSaliency):
    """L1-regularised parameter saliency (appendix A.7, Eq. 6).

    Eq. 6 is ``s_i = |(1 - alpha) d/d theta_i (L(x, y) + alpha ||theta - theta_0||_1)|`` at
    ``theta = theta_0``, where the L1 term is not differentiable. Autograd's choice there (subgradient 0)
    would make Eq. 6 a mere rescaling ``(1 - alpha)|g|``, which changes neither standardised profiles nor
    top-k filters.
    Following the paper's reading of Eq. 6 as one step of the L1-regularised attack, we take the
    subgradient of least norm, the steepest-descent direction of the regularised objective (one proximal
    step): ``s_i = (1 - alpha) * max(|g_i| - alpha, 0)``, a soft threshold that makes profiles sparser.
    ``alpha`` is in units of the per-parameter gradient ``g_i``; ``alpha = 0`` is the plain profile.

    Args:
        model: The classifier.
        alpha: ``alpha`` of Eq. 6, in ``[0, 1)``.
        **kwargs: As for :class:`ParameterSaliency`.
    """

    def __init__(self, model: nn.Module, alpha: float, **kwargs) -> None:
        super().__init__(model, **kwargs)
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha must lie in [0, 1), got {alpha!r}")
        self.alpha = float(alpha)

    def _magnitude(self) -> Magnitude:
        return Magnitude(threshold=self.alpha, scale=1.0 - self.alpha)
