"""How ICASC trains: first or second order, the separation gradient, warm-up and ramp (issue 11)."""

from __future__ import annotations

import pytest
import torch

from icasc.attention import AttentionMechanism, channel_weighted
from icasc.attention.capture import FeatureCapture
from icasc.losses import ICASCLoss
from icasc.losses.functional import attention_ramp, attention_separation
from tests.unit.test_mechanism import Net


def _params_grad(net: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return [
        g if g is not None else torch.zeros_like(p)
        for p, g in zip(
            net.parameters(),
            torch.autograd.grad(loss, list(net.parameters()), allow_unused=True, retain_graph=True),
        )
    ]


def test_first_order_holds_the_channel_weights_constant() -> None:
    torch.manual_seed(0)
    net, x, y = Net(), torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    first = AttentionMechanism(net, "inner", "last", order="first")
    second = AttentionMechanism(net, "inner", "last", order="second")
    out1, out2 = first(x, y), second(x, y)
    for key in ("inner", "last"):  # the same maps; only their derivative differs
        torch.testing.assert_close(out1.target[key], out2.target[key])
        torch.testing.assert_close(out1.confusing[key], out2.confusing[key])
    loss1 = out1.target["last"].sum() + out1.logits.sum()
    # reference: the maps built from detached gradients, the logits' graph kept
    with FeatureCapture(net, ["last"]) as cap:
        logits = net(x)
    feats = cap.features["last"]
    grads = torch.autograd.grad(logits[torch.arange(3), y].sum(), feats, retain_graph=True)[0]
    reference = channel_weighted(feats, grads.detach()).sum() + logits.sum()
    for got, want in zip(_params_grad(net, loss1), _params_grad(net, reference)):
        torch.testing.assert_close(got, want)
    loss2 = out2.target["last"].sum() + out2.logits.sum()
    differs = [
        not torch.allclose(a, b) for a, b in zip(_params_grad(net, loss2), _params_grad(net, reference))
    ]
    assert any(differs)  # the second order reaches the parameters through the channel weights as well


def test_unknown_order_is_refused() -> None:
    with pytest.raises(ValueError, match="order"):
        AttentionMechanism(Net(), "inner", "last", order="third")


def test_confusing_separation_has_the_papers_value_and_moves_only_the_confusing_map() -> None:
    torch.manual_seed(1)
    a_t, a_c = torch.rand(2, 5, 5, requires_grad=True), torch.rand(2, 5, 5, requires_grad=True)
    mask = torch.rand(2, 5, 5)
    paper = attention_separation(a_t, a_c, mask)
    routed = attention_separation(a_t, a_c, mask, gradient="confusing")
    torch.testing.assert_close(paper, routed)
    g_t, g_c = torch.autograd.grad(routed, [a_t, a_c], allow_unused=True, materialize_grads=True)
    assert torch.count_nonzero(g_t) == 0
    # d/dA^Conf of 2 sum(A^Conf mask) / const, over the batch mean of 2 samples
    total = (a_t + a_c).sum(dim=(1, 2)).detach()
    torch.testing.assert_close(g_c, (2.0 * mask / total[:, None, None]) / 2)
    with pytest.raises(ValueError, match="gradient must be one of"):
        attention_separation(a_t, a_c, mask, gradient="true")


@pytest.mark.parametrize(
    ("epoch", "warmup", "ramp", "expected"),
    [
        (0.0, 0, 0, 1.0),
        (1.9, 2, 0, 0.0),
        (2.0, 2, 0, 1.0),
        (2.0, 2, 4, 0.0),
        (3.0, 2, 4, 0.25),
        (9.0, 2, 4, 1.0),
    ],
)
def test_attention_ramp(epoch: float, warmup: float, ramp: float, expected: float) -> None:
    assert attention_ramp(epoch, warmup, ramp) == pytest.approx(expected)


def test_loss_scale_multiplies_the_attention_terms_only() -> None:
    torch.manual_seed(2)
    net, x, y = Net(), torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    out = AttentionMechanism(net, "inner", "last")(x, y)
    loss = ICASCLoss()
    full, terms = loss(out.logits, y, out)
    half, _ = loss(out.logits, y, out, scale=0.5)
    attention = full - terms["classification"]
    torch.testing.assert_close(half, terms["classification"] + 0.5 * attention)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"ramp_epochs": "two"}, "ramp_epochs"),
        ({"separation_gradient": "true"}, "separation_gradient"),
    ],
)
def test_bad_loss_options_name_the_option(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ICASCLoss(**kwargs)


def test_config_round_trips_the_new_options() -> None:
    loss = ICASCLoss(separation_gradient="confusing", warmup_epochs=1, ramp_epochs=2)
    assert ICASCLoss(**loss.config()).config() == loss.config()


def test_warm_up_trains_on_the_classification_loss_alone_then_ramps() -> None:
    from types import SimpleNamespace

    from icasc.models import ICASCModule

    module = ICASCModule("tiny_cnn", 4, loss={"warmup_epochs": 1, "ramp_epochs": 2})
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    total, terms, _ = module.compute_loss(x, y, scale=0.0)
    assert set(terms) == {"classification"} and torch.equal(total, terms["classification"])
    module._trainer = SimpleNamespace(num_training_batches=4, current_epoch=2)
    assert module.attention_scale(batch_idx=2) == pytest.approx((2.5 - 1) / 2)
    module._trainer = SimpleNamespace(num_training_batches=4, current_epoch=0)
    assert module.attention_scale(batch_idx=3) == 0.0
