"""What each ICASC attention term's gradient does to each map (the study of README "Why ICASC hurt").

A training step moves every attention map along minus the gradient of each loss term. Whether that step
moves a map *onto* the object or *off* it is a first-order quantity: the directional derivative of the map's
share of mass inside the object's box along the term's descent direction,

    effect = - <d share / d A, d term / d A> / ||d term / d A||,

i.e. how much the in-box share of ``A`` changes per unit-length step down the term's gradient with respect to
``A``. Positive: the term pulls the map onto the object; negative: it pushes the map off. The maps are taken
as leaves (what the term asks of the map, not how the network can deliver it), so the numbers isolate the
losses' geometry: which term, which layer, which normalisation.
"""

from __future__ import annotations

import torch

from icasc.attention.mechanism import AttentionOutput
from icasc.losses.functional import resize_map
from icasc.losses.icasc import DEFAULT_WEIGHTS, ICASCLoss

__all__ = ["box_share", "descent_effects"]

MAP_KEYS = tuple((kind, layer) for kind in ("true", "conf") for layer in ("inner", "last"))


def box_share(maps: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Differentiable share of each map's mass inside its box, ``[B]``.

    The map is resized bilinearly to the input size (as the pointing game and
    :func:`~icasc.metrics.attention_stats.mass_in_box` do) and the pixels whose centres lie in the
    pixel-edge ``xyxy`` box are summed.

    Args:
        maps: Non-negative ``[B, h, w]``.
        boxes: ``[B, 4]`` ``(x0, y0, x1, y1)`` in input pixels.
        image_size: ``(H, W)`` of the input.

    Returns:
        ``[B]`` in ``[0, 1]`` (0 for an all-zero map).
    """
    full = resize_map(maps, tuple(image_size)).clamp(min=0)
    height, width = image_size
    ys = torch.arange(height, device=maps.device, dtype=full.dtype) + 0.5
    xs = torch.arange(width, device=maps.device, dtype=full.dtype) + 0.5
    b = boxes.to(full.dtype)
    inside_y = (ys[None, :] >= b[:, 1:2]) & (ys[None, :] < b[:, 3:4])
    inside_x = (xs[None, :] >= b[:, 0:1]) & (xs[None, :] < b[:, 2:3])
    inside = (inside_y[:, :, None] & inside_x[:, None, :]).to(full.dtype)
    return (full * inside).sum(dim=(1, 2)) / full.sum(dim=(1, 2)).clamp_min(1e-12)


def descent_effects(
    loss: ICASCLoss,
    attention: AttentionOutput,
    targets: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    eps: float = 1e-12,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per attention term and per map, the in-box share's change along the term's descent direction.

    Every attention term of ``loss`` is evaluated (whatever its weight: the weight only scales the step) on
    the maps of ``attention`` taken as leaves.

    Args:
        loss: The objective whose terms are studied (its normalisation, mask and separation gradient).
        attention: Maps of a forward pass (:class:`~icasc.attention.AttentionMechanism`).
        targets: ``[B]`` labels (for the classification term the loss also computes).
        boxes: ``[B, 4]`` object boxes in input pixels.
        image_size: ``(H, W)`` of the input.
        eps: Guards the gradient norm of samples where a term has no gradient.

    Returns:
        ``{term: {"true_inner"|"true_last"|"conf_inner"|"conf_last": [B]}}``; samples where the term does not
        reach the map give 0.
    """
    leaves = {
        (kind, layer): source[layer].detach().float().requires_grad_(True)
        for kind, source in (("true", attention.target), ("conf", attention.confusing))
        for layer in ("inner", "last")
    }
    out = AttentionOutput(
        attention.logits.detach(),
        {layer: leaves["true", layer] for layer in ("inner", "last")},
        {layer: leaves["conf", layer] for layer in ("inner", "last")},
        attention.confusing_class,
        attention.valid,
    )
    share_grads = {
        key: torch.autograd.grad(box_share(leaf, boxes, image_size).sum(), leaf)[0]
        for key, leaf in leaves.items()
    }
    probe = ICASCLoss(**{**loss.config(), "weights": dict.fromkeys(DEFAULT_WEIGHTS, 1.0)})
    with torch.enable_grad():
        _, terms = probe(out.logits, targets, out)
    effects: dict[str, dict[str, torch.Tensor]] = {}
    for term in DEFAULT_WEIGHTS:
        grads = torch.autograd.grad(terms[term], list(leaves.values()), retain_graph=True, allow_unused=True)
        effects[term] = {}
        for (key, leaf), grad in zip(leaves.items(), grads):
            if grad is None:
                grad = torch.zeros_like(leaf)
            norm = grad.flatten(1).norm(dim=1)
            along = -(share_grads[key] * grad).flatten(1).sum(dim=1)
            effects[term][f"{key[0]}_{key[1]}"] = torch.where(norm > eps, along / norm.clamp_min(eps), 0.0)
    return effects
