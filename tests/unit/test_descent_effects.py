"""icasc.metrics.descent_effects: what each term's descent does to each map's share inside the object box."""

from __future__ import annotations

import pytest
import torch

from icasc.attention.mechanism import AttentionOutput
from icasc.losses import ICASCLoss
from icasc.metrics import mass_in_box
from icasc.metrics.descent_effects import descent_effects

BOX = torch.tensor([[0.0, 0.0, 2.0, 4.0]])  # the left half of a 4x4 image


def _output() -> AttentionOutput:
    # true map: its peak on the object (left half) with some background; confusing map: stronger than the
    # true map on part of the object, so min() picks the true map there
    a_t = torch.tensor(
        [[[1.0, 0.8, 0.1, 0.1], [0.9, 0.7, 0.1, 0.1], [0.6, 0.6, 0.1, 0.1], [0.6, 0.6, 0.1, 0.1]]]
    )
    a_c = torch.tensor(
        [[[0.2, 0.9, 0.3, 0.3], [0.2, 0.9, 0.3, 0.3], [0.2, 0.2, 0.3, 0.3], [0.2, 0.2, 0.3, 0.3]]]
    )
    maps_t, maps_c = {"inner": a_t.clone(), "last": a_t.clone()}, {"inner": a_c.clone(), "last": a_c.clone()}
    return AttentionOutput(
        torch.tensor([[2.0, 1.0]]), maps_t, maps_c, torch.tensor([1]), torch.tensor([True])
    )


def test_the_share_in_the_box_is_differentiable_for_the_descent_effects() -> None:
    maps = torch.tensor([[[1.0, 1.0, 2.0, 0.0]] * 4], requires_grad=True)
    share = mass_in_box(maps, BOX, (4, 4))
    assert share.item() == pytest.approx(0.5)
    (grad,) = torch.autograd.grad(share.sum(), maps)
    assert grad[0, 0, 0] > 0 and grad[0, 0, 2] < 0  # more mass inside raises the share, outside lowers it
    assert mass_in_box(torch.zeros(1, 4, 4), BOX, (4, 4)).item() == 0.0


def test_paper_separation_pushes_the_true_map_off_the_object() -> None:
    effects = descent_effects(ICASCLoss(), _output(), torch.tensor([0]), BOX, (4, 4))
    assert effects["separation_last"]["true_last"].item() < 0
    # consistency pulls the inner true map onto the object and does not touch the confusing maps
    assert effects["consistency"]["true_inner"].item() > 0
    assert effects["consistency"]["conf_inner"].item() == 0.0


def test_confusing_separation_leaves_the_true_map_and_moves_the_confusing_map_off() -> None:
    loss = ICASCLoss(separation_gradient="confusing")
    effects = descent_effects(loss, _output(), torch.tensor([0]), BOX, (4, 4))
    for term in ("separation_inner", "separation_last"):
        layer = term.split("_")[1]
        assert effects[term][f"true_{layer}"].item() == 0.0
        assert effects[term][f"conf_{layer}"].item() < 0
