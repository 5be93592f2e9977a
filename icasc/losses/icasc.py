"""The ICASC objective: L = L_C + w_in·L_AS^in + w_la·L_AS^la + w_ac·L_AC (ICASC paper, Eq. 6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from icasc.attention.functional import max_normalize
from icasc.attention.mechanism import AttentionOutput
from icasc.losses.functional import (
    SEPARATION_GRADIENTS,
    attention_consistency,
    attention_ramp,
    attention_separation,
    target_mask,
)
from icasc.utils import is_number, resize_map

__all__ = ["DEFAULT_WEIGHTS", "ICASCLoss"]

DEFAULT_WEIGHTS = {"separation_inner": 1.0, "separation_last": 1.0, "consistency": 1.0}
NORMALIZE = ("max", "none")
MASK_RESIZE = ("mask", "map")


class ICASCLoss:
    """Classification loss plus the attention separation and consistency losses.

    A plain callable (no parameters or buffers). Checkpoints record it as :meth:`config`, plain values that
    ``ICASCLoss(**config)`` turns back into the same loss.

    A weight of 0 switches a term off (it is then not computed): all three at 0 is the baseline, and the
    rows of the paper's ablation (Table 3) are ``{separation_last: 0, consistency: 0}`` and
    ``{separation_last: 0}``.

    Args:
        weights: ``separation_inner`` (w_in), ``separation_last`` (w_la), ``consistency`` (w_ac); missing
            keys default to 1 as in Eq. 6.
        sigma: Mask threshold relative to the map's maximum (Eq. 4; paper 0.55).
        omega: Mask sigmoid slope (Eq. 4; paper 100).
        theta: Consistency offset (Eq. 5; paper 0.8).
        multilabel: Multilabel soft-margin instead of cross-entropy for L_C (§3.4).
        normalize: ``"max"`` divides every map by its per-sample maximum before the losses, so L_AS measures
            where the two maps overlap and not how large they are; ``"none"`` uses the raw maps of Eq. 2.
        detach_mask: The mask is a fixed target region (no gradient flows into it). Without this, L_AS and
            L_AC can be lowered by shrinking the mask instead of moving the attention.
        mask_resize: How the last-layer mask reaches the inner resolution: ``"mask"`` resizes the mask
            bilinearly; ``"map"`` resizes the last-layer true-class map and thresholds it there (sharper).
        mask_relative: See :func:`~icasc.losses.functional.target_mask` (matters only with
            ``normalize="none"``).
        separation_gradient: Where the descent of L_AS goes (:func:`~icasc.losses.functional.
            attention_separation`): ``"paper"`` (the derivative of Eq. 3) or ``"confusing"`` (only the
            confusing map moves, out of the true class's region).
        warmup_epochs: Epochs trained with L_C alone before the attention terms start (no maps computed).
        ramp_epochs: Epochs over which the attention weights then grow linearly from 0 to their value
            (:func:`~icasc.losses.functional.attention_ramp`).
        eps: Epsilon of every denominator.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        sigma: float = 0.55,
        omega: float = 100.0,
        theta: float = 0.8,
        multilabel: bool = False,
        normalize: str = "max",
        detach_mask: bool = True,
        mask_resize: str = "mask",
        mask_relative: bool = True,
        separation_gradient: str = "paper",
        warmup_epochs: float = 0.0,
        ramp_epochs: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        weights = dict(weights or {})
        unknown = set(weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; valid: {sorted(DEFAULT_WEIGHTS)}")
        self.weights = {k: float(weights.get(k, v)) for k, v in DEFAULT_WEIGHTS.items()}
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {self.weights}")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if mask_resize not in MASK_RESIZE:
            raise ValueError(f"mask_resize must be one of {MASK_RESIZE}, got {mask_resize!r}")
        if separation_gradient not in SEPARATION_GRADIENTS:
            raise ValueError(
                f"separation_gradient must be one of {SEPARATION_GRADIENTS}, got {separation_gradient!r}"
            )
        for name, value in (("warmup_epochs", warmup_epochs), ("ramp_epochs", ramp_epochs)):
            if not is_number(value) or value < 0:
                raise ValueError(f"model.loss.{name} must be a number >= 0 (epochs), got {value!r}")
        self.separation_gradient = separation_gradient
        self.warmup_epochs, self.ramp_epochs = float(warmup_epochs), float(ramp_epochs)
        self.sigma, self.omega, self.theta, self.eps = sigma, omega, theta, eps
        self.multilabel = multilabel
        self.normalize = normalize
        self.detach_mask = detach_mask
        self.mask_resize = mask_resize
        self.mask_relative = mask_relative

    def config(self) -> dict[str, Any]:
        """The constructor arguments as plain values: ``ICASCLoss(**loss.config())`` is the same loss."""
        return {
            "weights": dict(self.weights),
            "sigma": self.sigma,
            "omega": self.omega,
            "theta": self.theta,
            "multilabel": self.multilabel,
            "normalize": self.normalize,
            "detach_mask": self.detach_mask,
            "mask_resize": self.mask_resize,
            "mask_relative": self.mask_relative,
            "separation_gradient": self.separation_gradient,
            "warmup_epochs": self.warmup_epochs,
            "ramp_epochs": self.ramp_epochs,
            "eps": self.eps,
        }

    @property
    def attention_enabled(self) -> bool:
        """Whether any attention term is on (False: the baseline, no attention maps are needed)."""
        return any(w > 0 for w in self.weights.values())

    def attention_scale(self, epoch: float) -> float:
        """Factor of the attention weights at a fractional training ``epoch`` (warm-up, then ramp)."""
        return attention_ramp(epoch, self.warmup_epochs, self.ramp_epochs)

    def __repr__(self) -> str:
        return (
            f"ICASCLoss(weights={self.weights}, multilabel={self.multilabel}, normalize={self.normalize!r})"
        )

    def classification(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """L_C: cross-entropy (single-label) or multilabel soft-margin (multi-label)."""
        if self.multilabel:
            if targets.dim() != 2 or targets.shape != logits.shape:
                raise ValueError(
                    f"multi-label loss needs [B, C] multi-hot targets matching logits {tuple(logits.shape)}, "
                    f"got {tuple(targets.shape)}"
                )
            return F.multilabel_soft_margin_loss(logits, targets.to(logits.dtype))
        if targets.dim() != 1 or targets.dtype.is_floating_point:
            raise ValueError(
                f"single-label loss got targets of shape {tuple(targets.shape)} and dtype {targets.dtype}; "
                "multi-hot targets need multilabel=True (config: model.multilabel=true)"
            )
        return F.cross_entropy(logits, targets)

    def masks(self, a_t_last: torch.Tensor, inner_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The target-region mask at the last and at the inner resolution (Eq. 4)."""
        source = a_t_last.detach() if self.detach_mask else a_t_last
        mask_last = target_mask(source, self.sigma, self.omega, self.mask_relative, self.eps)
        if self.mask_resize == "mask":
            mask_inner = resize_map(mask_last, inner_size)
        else:
            mask_inner = target_mask(
                resize_map(source, inner_size), self.sigma, self.omega, self.mask_relative, self.eps
            )
        return mask_last, mask_inner

    def prepare(
        self, attention: AttentionOutput
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Maps as the losses see them (normalised per ``normalize``) and the masks at both resolutions.

        Returns:
            ``(target_maps, confusing_maps, mask_last, mask_inner)``.
        """
        maps_t, maps_c = attention.target, attention.confusing
        if self.normalize == "max":
            maps_t = {k: max_normalize(v, self.eps) for k, v in maps_t.items()}
            maps_c = {k: max_normalize(v, self.eps) for k, v in maps_c.items()}
        mask_last, mask_inner = self.masks(maps_t["last"], tuple(maps_t["inner"].shape[-2:]))
        return maps_t, maps_c, mask_last, mask_inner

    def __call__(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        attention: AttentionOutput | None = None,
        scale: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its terms.

        Args:
            logits: ``[B, C]``.
            targets: ``[B]`` class indices or ``[B, C]`` multi-hot.
            attention: Maps from :class:`~icasc.attention.AttentionMechanism`; required when any attention
                weight is positive.
            scale: Factor of every attention weight (:meth:`attention_scale` in training); the terms are
                still computed and returned at ``scale=0``.

        Returns:
            ``(total, terms)`` where ``terms`` holds ``classification`` and each enabled attention term
            (unweighted), so they can be logged and checked separately.
        """
        terms = {"classification": self.classification(logits, targets)}
        total = terms["classification"]
        if not self.attention_enabled:
            return total, terms
        if attention is None:
            raise ValueError("attention losses are enabled but no attention maps were given")
        maps_t, maps_c, mask_last, mask_inner = self.prepare(attention)
        w = self.weights
        if w["separation_inner"] > 0:
            terms["separation_inner"] = attention_separation(
                maps_t["inner"],
                maps_c["inner"],
                mask_inner,
                attention.valid,
                self.eps,
                self.separation_gradient,
            )
        if w["separation_last"] > 0:
            terms["separation_last"] = attention_separation(
                maps_t["last"], maps_c["last"], mask_last, attention.valid, self.eps, self.separation_gradient
            )
        if w["consistency"] > 0:
            terms["consistency"] = attention_consistency(maps_t["inner"], mask_inner, self.theta, self.eps)
        for name in DEFAULT_WEIGHTS:
            if name in terms:
                total = total + scale * w[name] * terms[name]
        return total, terms
