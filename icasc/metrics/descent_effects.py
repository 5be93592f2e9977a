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
from icasc.losses.icasc import DEFAULT_WEIGHTS, ICASCLoss
from icasc.metrics.attention_stats import mass_in_box

__all__ = ["descent_effects"]


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
        key: torch.autograd.grad(mass_in_box(leaf, boxes, image_size).sum(), leaf)[0]
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
