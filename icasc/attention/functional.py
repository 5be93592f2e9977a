"""Differentiable class-specific attention maps (pure functions, no hooks, no state).

Both maps are computed from a layer's activations ``features`` ``[B, K, h, w]`` and the gradient of a class
score with respect to them, ``grads`` (same shape). When ``grads`` was obtained with
``torch.autograd.grad(..., create_graph=True)`` the maps are differentiable with respect to the network
parameters through *both* the activations and the channel weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["channel_weighted", "grad_cam", "max_normalize"]


def _check_pair(features: torch.Tensor, grads: torch.Tensor) -> None:
    if features.dim() != 4:
        raise ValueError(f"features must be [B, K, h, w], got shape {tuple(features.shape)}")
    if grads.shape != features.shape:
        raise ValueError(
            f"grads must have the shape of features {tuple(features.shape)}, got {tuple(grads.shape)}"
        )


def _weighted_sum(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # sum_k w_k F^k as a batched matmul: [B,1,K] @ [B,K,h*w] avoids materialising w*F ([B,K,h,w]).
    b, k, h, w = features.shape
    return torch.bmm(weights.view(b, 1, k), features.reshape(b, k, h * w)).view(b, h, w)


def channel_weighted(features: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Channel-weighted attention A_ch (ICASC paper, Eq. 2).

    ``A_ch = ReLU(sum_k (sum_ij ReLU(dY^c/dF^k_ij)) F^k) / Z`` with ``Z = h * w``: each channel is weighted
    by the sum of its *positive* gradients only, so background pixels with negative gradients cannot
    cancel the channel's importance (the cause of Grad-CAM's cross-layer attention shift, §3.1).

    Args:
        features: Activations ``F`` of the layer, ``[B, K, h, w]``.
        grads: ``dY^c/dF`` for each sample's class of interest, ``[B, K, h, w]``.

    Returns:
        Attention maps ``[B, h, w]``, non-negative.
    """
    _check_pair(features, grads)
    h, w = features.shape[-2:]
    weights = F.relu(grads).sum(dim=(2, 3))
    return F.relu(_weighted_sum(features, weights)) / (h * w)


def grad_cam(
    features: torch.Tensor, grads: torch.Tensor, relu: bool = True, pooling: str = "mean"
) -> torch.Tensor:
    """Grad-CAM (Grad-CAM paper, Eq. 1-2; ICASC paper, Eq. 1).

    ``alpha_k = mean_ij dY^c/dF^k_ij`` and ``L = ReLU(sum_k alpha_k F^k)``. The options give the Grad-CAM
    paper's ablations: no final ReLU, and global max pooling of the gradients instead of the average.
    Counterfactual explanations (§5.2) are Grad-CAM of the negated gradients.

    Args:
        features: Activations ``F`` of the layer, ``[B, K, h, w]``.
        grads: ``dY^c/dF`` for each sample's class of interest, ``[B, K, h, w]``.
        relu: Apply the final ReLU (Eq. 2).
        pooling: ``"mean"`` (Eq. 1) or ``"max"`` pooling of the gradients into channel weights.

    Returns:
        Attention maps ``[B, h, w]`` (non-negative when ``relu``).
    """
    _check_pair(features, grads)
    if pooling == "mean":
        weights = grads.mean(dim=(2, 3))
    elif pooling == "max":
        weights = grads.amax(dim=(2, 3))
    else:
        raise ValueError(f"pooling must be 'mean' or 'max', got {pooling!r}")
    cam = _weighted_sum(features, weights)
    return F.relu(cam) if relu else cam


def max_normalize(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Divide each map by its own maximum (per sample), so that maps of any scale lie in ``[0, 1]``.

    The maximum is not detached: the normalised map stays differentiable. ``eps`` keeps all-zero maps
    finite (they stay all zero).

    Args:
        maps: Non-negative maps ``[B, h, w]``.
        eps: Added to the maximum.

    Returns:
        ``maps / (max_ij maps + eps)``, ``[B, h, w]``.
    """
    peak = maps.flatten(1).amax(dim=1).view(-1, 1, 1)
    return maps / (peak + eps)
