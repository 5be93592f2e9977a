"""ICASC attention losses as pure functions (ICASC paper, Eq. 3-5).

All maps are ``[B, h, w]`` and non-negative. Every denominator carries ``eps``, so all-zero maps give a
finite loss and a finite gradient.
"""

from __future__ import annotations

import torch

__all__ = [
    "SEPARATION_GRADIENTS",
    "attention_consistency",
    "attention_ramp",
    "attention_separation",
    "target_mask",
]

SEPARATION_GRADIENTS = ("paper", "confusing")


def _check_maps(*maps: torch.Tensor) -> None:
    shape = maps[0].shape
    if len(shape) != 3:
        raise ValueError(f"attention maps must be [B, h, w], got shape {tuple(shape)}")
    for m in maps[1:]:
        if m.shape != shape:
            raise ValueError(
                f"attention maps must share one shape, got {tuple(shape)} and {tuple(m.shape)}; "
                "resize the mask with icasc.utils.resize_map() when the layers' resolutions differ"
            )


def _batch_mean(per_sample: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return per_sample.mean()
    weights = valid.to(per_sample.dtype)
    # All-invalid batches give exactly 0 (and a zero gradient), not NaN.
    return (per_sample * weights).sum() / weights.sum().clamp_min(1.0)


def target_mask(
    a_t: torch.Tensor,
    sigma: float = 0.55,
    omega: float = 100.0,
    relative: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Soft mask of the target object region (Eq. 4).

    The paper thresholds the last-layer true-class map at ``sigma * max(A^T)`` with a sigmoid of slope
    ``omega``: ``Mask = sigmoid(omega * (A^T - sigma * max A^T))``. With ``relative=True`` (default) the
    map is
    first divided by its per-sample maximum, ``sigmoid(omega * (A^T / max A^T - sigma))``, so the slope does
    not depend on the map's scale; for max-normalised maps (the default of :class:`ICASCLoss`) both forms
    are identical. ``relative=False`` is the paper's formula on the raw map.

    Args:
        a_t: True-class attention of the last layer, ``[B, h, w]``.
        sigma: Relative threshold (paper: 0.55).
        omega: Sigmoid slope (paper: 100).
        relative: Normalise by the per-sample maximum first.
        eps: Added to the maximum.

    Returns:
        Mask in ``(0, 1)``, ``[B, h, w]``.
    """
    _check_maps(a_t)
    peak = a_t.flatten(1).amax(dim=1).view(-1, 1, 1)
    if relative:
        return torch.sigmoid(omega * (a_t / (peak + eps) - sigma))
    return torch.sigmoid(omega * (a_t - sigma * peak))


def attention_separation(
    a_t: torch.Tensor,
    a_conf: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor | None = None,
    eps: float = 1e-8,
    gradient: str = "paper",
) -> torch.Tensor:
    """Attention separation loss L_AS (Eq. 3), per sample, then the mean over the batch.

    ``L_AS = 2 * sum_ij min(A^T_ij, A^Conf_ij) * Mask_ij / sum_ij (A^T_ij + A^Conf_ij)``, in ``[0, 1]``.

    ``gradient`` chooses where the descent of that value goes; the value is the same:

    - ``"paper"``: the plain derivative of Eq. 3. At a masked pixel it lowers whichever map is smaller, so
      where the confusing map dominates the object the *true* map is lowered; and the denominator's
      derivative raises both maps at every pixel, the background included. Both move the true-class map off
      the object (measured: README, "Why ICASC hurt").
    - ``"confusing"``: the true map and the denominator are constants and the ``min`` passes its gradient to
      the confusing map at every pixel (a straight-through min), i.e. the descent of
      ``2 * sum_ij A^Conf_ij * Mask_ij / sum_ij (A^T_ij + A^Conf_ij)``: the confusing class's attention is
      pushed out of the true class's region and the true-class map is left where classification puts it.

    Args:
        a_t: True-class map ``[B, h, w]``.
        a_conf: Most-confusing-class map ``[B, h, w]``.
        mask: Target region (Eq. 4) at the same resolution ``[B, h, w]``.
        valid: Optional ``[B]`` bool; samples without a confusing class are left out of the mean.
        eps: Added to the denominator.
        gradient: ``"paper"`` or ``"confusing"``.

    Returns:
        Scalar loss.
    """
    _check_maps(a_t, a_conf, mask)
    if gradient not in SEPARATION_GRADIENTS:
        raise ValueError(f"gradient must be one of {SEPARATION_GRADIENTS}, got {gradient!r}")
    smaller = torch.minimum(a_t, a_conf)
    if gradient == "confusing":
        # value of min(A^T, A^Conf), derivative 1 with respect to A^Conf and 0 with respect to A^T
        smaller = a_conf + (smaller - a_conf).detach()
        a_t = a_t.detach()
    overlap = (smaller * mask).sum(dim=(1, 2))
    total = (a_t + a_conf).sum(dim=(1, 2))
    if gradient == "confusing":
        total = total.detach()
    return _batch_mean(2.0 * overlap / (total + eps), valid)


def attention_consistency(
    a_in: torch.Tensor, mask: torch.Tensor, theta: float = 0.8, eps: float = 1e-8
) -> torch.Tensor:
    """Attention consistency loss L_AC (Eq. 5), per sample, then the mean over the batch.

    ``L_AC = theta - sum_ij A^in_ij * Mask_ij / sum_ij A^in_ij``: the share of the inner-layer true-class
    attention that falls inside the last layer's target region is pushed up. As in the paper it is not
    clipped at zero (``theta`` only shifts the value; the gradient is that of the share).

    Args:
        a_in: Inner-layer true-class map ``[B, h, w]``.
        mask: Target region resized to the inner resolution ``[B, h, w]``.
        theta: Offset (paper: 0.8).
        eps: Added to the denominator.

    Returns:
        Scalar loss.
    """
    _check_maps(a_in, mask)
    inside = (a_in * mask).sum(dim=(1, 2)) / (a_in.sum(dim=(1, 2)) + eps)
    return (theta - inside).mean()


def attention_ramp(epoch: float, warmup_epochs: float = 0.0, ramp_epochs: float = 0.0) -> float:
    """Factor of the attention terms at a (fractional) training epoch: a warm-up, then a linear ramp.

    ``0`` before ``warmup_epochs``; then rising linearly to ``1`` over ``ramp_epochs``; ``1`` after. With both
    at 0 (the paper) the terms are on from the first step.

    Args:
        epoch: Epochs trained so far, fractional (``epoch + batch / batches_per_epoch``).
        warmup_epochs: Epochs of classification loss alone.
        ramp_epochs: Epochs over which the factor grows from 0 to 1 after the warm-up.

    Returns:
        A float in ``[0, 1]``.
    """
    progress = epoch - warmup_epochs
    if progress < 0:
        return 0.0
    if ramp_epochs <= 0:
        return 1.0
    return min(1.0, progress / ramp_epochs)
