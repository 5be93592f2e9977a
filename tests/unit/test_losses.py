"""ICASC losses (Eq. 3-6): exact values, gradcheck, epsilon safety, switches."""

import math

import pytest
import torch

from icasc.attention import AttentionOutput
from icasc.losses import ICASCLoss, attention_consistency, attention_separation, target_mask
from icasc.utils import resize_map


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_target_mask_exact():
    a_t = torch.tensor([[[0.0, 1.1], [2.0, 0.5]]])  # max 2 -> normalised 0, .55, 1, .25
    expected = torch.tensor([[[sig(-55.0), 0.5], [sig(45.0), sig(-30.0)]]])
    torch.testing.assert_close(target_mask(a_t), expected)


def test_target_mask_paper_form_equals_relative_form_on_max_normalised_maps():
    torch.manual_seed(0)
    a = torch.rand(4, 5, 5)
    a = a / a.flatten(1).amax(1).view(-1, 1, 1)
    torch.testing.assert_close(
        target_mask(a, relative=False), target_mask(a, relative=True), atol=1e-6, rtol=0
    )
    # On a raw map the paper's form thresholds at sigma * max with the same slope.
    raw = 0.01 * a
    expected = torch.sigmoid(100.0 * (raw - 0.55 * raw.flatten(1).amax(1).view(-1, 1, 1)))
    torch.testing.assert_close(target_mask(raw, relative=False), expected)


def test_attention_separation_exact():
    a_t = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]])
    a_c = torch.tensor([[[0.5, 1.0], [0.5, 0.0]]])
    mask = torch.tensor([[[1.0, 1.0], [0.5, 0.0]]])
    # 2 * (min 0.5*1 + 0*1 + 0.5*0.5 + 0) / (1.5 + 1 + 1 + 0) = 2 * 0.75 / 3.5
    torch.testing.assert_close(attention_separation(a_t, a_c, mask), torch.tensor(1.5 / 3.5))
    # Identical maps under a full mask overlap completely: L_AS = 1; disjoint maps: 0.
    ones = torch.ones(1, 2, 2)
    torch.testing.assert_close(attention_separation(a_t, a_t, ones), torch.tensor(1.0))
    disjoint = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    torch.testing.assert_close(
        attention_separation(a_t - a_t * (disjoint > 0), disjoint, ones), torch.tensor(0.0)
    )


def test_attention_separation_valid_mask_leaves_samples_out():
    a = torch.ones(2, 2, 2)
    mask = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])
    full = attention_separation(a, a, mask)
    torch.testing.assert_close(full, torch.tensor(0.5))
    only_first = attention_separation(a, a, mask, valid=torch.tensor([True, False]))
    torch.testing.assert_close(only_first, torch.tensor(1.0))
    none = attention_separation(a, a, mask, valid=torch.tensor([False, False]))
    assert none.item() == 0.0


def test_attention_consistency_exact():
    a_in = torch.tensor([[[2.0, 1.0], [1.0, 0.0]]])
    mask = torch.tensor([[[1.0, 0.0], [0.5, 1.0]]])
    # theta - (2 + 0.5) / 4
    torch.testing.assert_close(attention_consistency(a_in, mask), torch.tensor(0.8 - 2.5 / 4))
    torch.testing.assert_close(attention_consistency(a_in, mask, theta=0.0), torch.tensor(-2.5 / 4))


def test_losses_finite_on_all_zero_maps():
    zeros = torch.zeros(2, 3, 3, requires_grad=True)
    zeros_c = torch.zeros(2, 3, 3, requires_grad=True)
    zeros_in = torch.zeros(2, 6, 6, requires_grad=True)
    mask = target_mask(zeros)
    loss = (
        attention_separation(zeros, zeros_c, mask)
        + attention_consistency(zeros_in, resize_map(mask, (6, 6)))
        + target_mask(zeros).sum()
    )
    loss.backward()
    assert torch.isfinite(loss)
    for t in (zeros, zeros_c, zeros_in):
        assert torch.isfinite(t.grad).all()


def test_icasc_loss_finite_on_all_zero_attention():
    logits = torch.randn(2, 4, requires_grad=True)
    z_in = torch.zeros(2, 4, 4, requires_grad=True)
    z_la = torch.zeros(2, 2, 2, requires_grad=True)
    att = AttentionOutput(
        logits,
        {"inner": z_in, "last": z_la},
        {"inner": z_in, "last": z_la},
        torch.tensor([1, 0]),
        torch.tensor([True, True]),
    )
    total, terms = ICASCLoss()(logits, torch.tensor([0, 1]), att)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    assert torch.isfinite(z_in.grad).all() and torch.isfinite(z_la.grad).all()


def test_gradcheck_losses():
    torch.manual_seed(0)
    a_t = (torch.rand(2, 4, 4, dtype=torch.double) + 0.1).requires_grad_()
    a_c = (torch.rand(2, 4, 4, dtype=torch.double) + 0.1).requires_grad_()
    a_in = (torch.rand(2, 8, 8, dtype=torch.double) + 0.1).requires_grad_()

    def sep(t, c):
        return attention_separation(t, c, target_mask(t, omega=5.0))

    def cons(i, t):
        return attention_consistency(i, resize_map(target_mask(t, omega=5.0), (8, 8)))

    assert torch.autograd.gradcheck(sep, (a_t, a_c))
    assert torch.autograd.gradcheck(cons, (a_in, a_t))


def test_resize_map_bilinear_align_corners_false():
    m = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    out = resize_map(m, (4, 4))
    # First output pixel centre maps to source -0.25 -> clamped to 0 -> value 0.
    assert out.shape == (1, 4, 4)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor(0.0))
    torch.testing.assert_close(out[0, 0, 1], torch.tensor(0.25))
    torch.testing.assert_close(out[0, 3, 3], torch.tensor(1.0))
    assert resize_map(m, (2, 2)) is m


def _attention(b=3, c=5, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return (torch.rand(*s, generator=g) + 0.01).requires_grad_(requires_grad)

    return AttentionOutput(
        r(b, c),
        {"inner": r(b, 8, 8), "last": r(b, 4, 4)},
        {"inner": r(b, 8, 8), "last": r(b, 4, 4)},
        torch.zeros(b, dtype=torch.long),
        torch.ones(b, dtype=torch.bool),
    )


def test_icasc_loss_total_is_weighted_sum_and_terms_switch_off():
    att = _attention()
    targets = torch.tensor([1, 2, 3])
    weights = {"separation_inner": 0.5, "separation_last": 2.0, "consistency": 3.0}
    total, terms = ICASCLoss(weights=weights)(att.logits, targets, att)
    expected = terms["classification"] + sum(weights[k] * terms[k] for k in weights)
    torch.testing.assert_close(total, expected)
    assert set(terms) == {"classification", *weights}
    # Table 3 ablation rows: terms with weight 0 are not computed.
    _, terms = ICASCLoss(weights={"separation_last": 0, "consistency": 0})(att.logits, targets, att)
    assert set(terms) == {"classification", "separation_inner"}
    loss = ICASCLoss(weights={"separation_inner": 0, "separation_last": 0, "consistency": 0})
    assert not loss.attention_enabled
    total, terms = loss(att.logits, targets, None)
    assert set(terms) == {"classification"}


def test_icasc_loss_mask_detached_by_default():
    att = _attention()
    loss = ICASCLoss(weights={"separation_inner": 0, "separation_last": 0, "consistency": 1})
    total, _ = loss(att.logits, torch.tensor([0, 1, 2]), att)
    total.backward()
    # L_AC depends on the last layer's map only through the mask: detached -> no gradient there.
    assert att.target["last"].grad is None or att.target["last"].grad.abs().sum() == 0
    att2 = _attention()
    ICASCLoss(weights={"separation_inner": 0, "separation_last": 0}, detach_mask=False)(
        att2.logits, torch.tensor([0, 1, 2]), att2
    )[0].backward()
    assert att2.target["last"].grad.abs().sum() > 0


def test_icasc_loss_mask_resize_modes_differ_and_match_definitions():
    att = _attention(requires_grad=False)
    loss = ICASCLoss()
    maps_t, _, mask_last, mask_inner = loss.prepare(att)
    torch.testing.assert_close(mask_inner, resize_map(mask_last, (8, 8)))
    _, _, _, sharp = ICASCLoss(mask_resize="map").prepare(att)
    torch.testing.assert_close(sharp, target_mask(resize_map(maps_t["last"], (8, 8))))
    assert not torch.allclose(sharp, mask_inner)


def test_icasc_loss_rejects_bad_input():
    att = _attention()
    with pytest.raises(ValueError, match="multilabel=True"):
        ICASCLoss()(att.logits, torch.zeros(3, 5), att)
    with pytest.raises(ValueError, match="multi-hot"):
        ICASCLoss(multilabel=True)(att.logits, torch.tensor([0, 1, 2]), att)
    with pytest.raises(ValueError, match="unknown loss weight"):
        ICASCLoss(weights={"separation": 1.0})
    with pytest.raises(ValueError, match="no attention maps"):
        ICASCLoss()(att.logits, torch.tensor([0, 1, 2]), None)
    with pytest.raises(ValueError, match="resize_map"):
        attention_separation(torch.ones(1, 2, 2), torch.ones(1, 2, 2), torch.ones(1, 4, 4))


def test_multilabel_soft_margin_classification():
    logits = torch.randn(2, 3)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    loss = ICASCLoss(multilabel=True, weights={"separation_inner": 0, "separation_last": 0, "consistency": 0})
    total, _ = loss(logits, targets)
    torch.testing.assert_close(total, torch.nn.functional.multilabel_soft_margin_loss(logits, targets))
