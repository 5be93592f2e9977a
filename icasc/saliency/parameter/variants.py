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
    """L1-regularised parameter saliency (appendix A.7, Eq. 6), α relative to the sample's gradient scale.

    Eq. 6 is ``s_i = |(1 - α) d/dθ_i (L(x, y) + α ||θ - θ_0||_1)|`` at ``θ = θ_0``, "one step of the
    L1-regularized adversarial attack" that "enforce[s] sparsity", and at "α = 0.99" it gives profiles with
    "cosine similarity ... of 0.97" to the plain ones (appendix A.7, the paragraph after Eq. 6).

    Reading used here. At ``θ_0`` the L1 term has the subdifferential ``α [-1, 1]``; autograd's choice
    (0) would make Eq. 6 the rescaling ``(1 - α)|g|`` (cosine exactly 1, no sparsity), so we take the
    subgradient of least norm, the steepest-descent direction (one proximal step), which soft-thresholds
    each parameter gradient. Eq. 6 weighs ``∇L`` against the unit-size subgradient of the L1 term, so the
    two are compared with ``∇L`` measured in units of its own scale, the sample's mean plain saliency
    ``ḡ(x) = mean_k s_k(x)`` (the average over the profile's columns of their mean ``|g|``):

    ``s_i = (1 - α) · max(|g_i| - α · ḡ(x), 0)``,

    averaged per column like the plain profile. ``α = 0`` is the plain profile; ``α < 1`` keeps at least
    every parameter with ``|g_i| >= ḡ(x)`` (never an empty profile), so even α = 0.99 stays close to the
    plain profile while zeroing the many small gradients: on a small, briefly trained CNN the tests measure
    a mean cosine of 0.976 (the appendix reports 0.97). Taking α in raw gradient units instead (threshold
    ``α``) zeroes every profile at α = 0.99, since per-parameter gradients are far below 1.

    Costs one plain pass for ``ḡ`` plus one thresholded pass per image (the threshold differs per image).
    ``ḡ`` is held constant when the profile is differentiated w.r.t. the input (:meth:`input_saliency`).

    Args:
        model: The classifier.
        alpha: ``α`` of Eq. 6, in ``[0, 1)``, relative to ``ḡ(x)``.
        **kwargs: As for :class:`ParameterSaliency`.
    """

    def __init__(self, model: nn.Module, alpha: float, **kwargs) -> None:
        super().__init__(model, **kwargs)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
            raise ValueError(f"alpha must lie in [0, 1) (appendix A.7 uses 0.99), got {alpha!r}")
        self.alpha = float(alpha)
        self._threshold: float | None = None  # set per image inside _compute

    def _magnitude(self) -> Magnitude:
        if self._threshold is None:
            return Magnitude()
        return Magnitude(threshold=self._threshold, scale=1.0 - self.alpha)

    def _compute(
        self, images: torch.Tensor, targets: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        plain, logits = super()._compute(images, targets, create_graph and self.alpha == 0)
        if self.alpha == 0:
            return plain, logits
        scales = plain.detach().mean(dim=1).tolist()  # ḡ(x) per image
        rows = []
        try:
            for i, scale in enumerate(scales):
                self._threshold = self.alpha * scale
                rows.append(super()._compute(images[i : i + 1], targets[i : i + 1], create_graph)[0])
        finally:
            self._threshold = None
        return torch.cat(rows), logits
