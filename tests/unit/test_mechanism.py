"""Training-time attention: class selection, hooks, and gradients through the channel weights."""

import pytest
import torch
from torch import nn

from icasc.attention import AttentionMechanism, FeatureCapture, channel_weighted, grad_cam, select_classes
from icasc.losses import ICASCLoss


class Net(nn.Module):
    def __init__(self, bn: bool = False, classes: int = 5) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if bn else (lambda c: nn.Identity())
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm(8), nn.ReLU())
        self.inner = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), norm(8), nn.ReLU())
        self.last = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), norm(16), nn.ReLU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.last(self.inner(self.stem(x))).mean(dim=(2, 3)))


def test_select_classes_single_label():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    t, c, valid = select_classes(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(t, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    torch.testing.assert_close(c, torch.tensor([[0, 0, 1.0], [0, 0, 1.0]]))  # highest non-true class
    assert valid.all()


def test_select_classes_multi_label():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.5], [0.0, 5.0, 4.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    targets = torch.tensor([[1.0, 0, 1.0, 0], [0, 1.0, 1.0, 0], [1.0, 1.0, 1.0, 1.0]])
    t, c, valid = select_classes(logits, targets)
    torch.testing.assert_close(t, targets)  # positives' scores are summed
    assert c.argmax(1)[:2].tolist() == [1, 3]  # highest-scoring negative class
    assert valid.tolist() == [True, True, False]  # no negative class: nothing to separate from


def test_select_classes_errors():
    with pytest.raises(ValueError, match=r"out of range \[0, 3\)"):
        select_classes(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer class indices"):
        select_classes(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="4 classes, the model 3"):
        select_classes(torch.zeros(2, 3), torch.zeros(2, 4))


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown layer 'layer9'.*valid layer names: stem, stem\.0"):
        AttentionMechanism(Net(), "layer9", "last")
    with pytest.raises(ValueError, match="unknown attention method"):
        AttentionMechanism(Net(), "inner", "last", method="cam++")


def test_hooks_removed_and_mode_unchanged_also_on_error():
    net = Net(bn=True).train()
    mech = AttentionMechanism(net, "inner", "last")
    mech(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    assert net.training
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(ValueError):
        mech(torch.randn(2, 3, 8, 8), torch.tensor([0, 7]))
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(RuntimeError), FeatureCapture(net, ["inner"]):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in net.modules())


def test_needs_autograd():
    mech = AttentionMechanism(Net(), "inner", "last")
    with torch.no_grad(), pytest.raises(RuntimeError, match="inference_mode=False"):
        mech(torch.randn(1, 3, 8, 8), torch.tensor([0]))


@pytest.mark.parametrize("method", ["ach", "gradcam"])
def test_maps_match_manual_autograd(method):
    torch.manual_seed(0)
    net = Net()
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 4])
    out = AttentionMechanism(net, "inner", "last", method=method)(x, y)
    fn = channel_weighted if method == "ach" else grad_cam
    with FeatureCapture(net, ["inner", "last"]) as cap:
        logits = net(x)
    conf = logits.detach().scatter(1, y[:, None], float("-inf")).argmax(1)
    feats = [cap.features["inner"], cap.features["last"]]
    g_t = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), feats, retain_graph=True)
    g_c = torch.autograd.grad(logits.gather(1, conf[:, None]).sum(), feats)
    assert out.confusing_class.tolist() == conf.tolist()
    torch.testing.assert_close(out.target["inner"], fn(feats[0], g_t[0]))
    torch.testing.assert_close(out.target["last"], fn(feats[1], g_t[1]))
    torch.testing.assert_close(out.confusing["inner"], fn(feats[0], g_c[0]))
    torch.testing.assert_close(out.confusing["last"], fn(feats[1], g_c[1]))


def _param_grads(net, loss):
    net.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])


def test_attention_loss_trains_through_the_channel_weights():
    """create_graph=True: d(L_att)/d(theta) includes the path through the channel weights.

    With the gradients detached (channel weights as constants, as plain `.backward()` hook
    re-implementations do) the parameter gradient is different.
    """
    torch.manual_seed(0)
    net = Net()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    loss = ICASCLoss()
    out = AttentionMechanism(net, "inner", "last")(x, y)
    full = _param_grads(net, loss(out.logits, y, out)[0] - loss.classification(out.logits, y))

    with FeatureCapture(net, ["inner", "last"]) as cap:
        logits = net(x)
    feats = [cap.features["inner"], cap.features["last"]]
    conf = logits.detach().scatter(1, y[:, None], float("-inf")).argmax(1)
    g_t = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), feats, retain_graph=True)
    g_c = torch.autograd.grad(logits.gather(1, conf[:, None]).sum(), feats, retain_graph=True)
    detached = type(out)(
        logits,
        {"inner": channel_weighted(feats[0], g_t[0]), "last": channel_weighted(feats[1], g_t[1])},
        {"inner": channel_weighted(feats[0], g_c[0]), "last": channel_weighted(feats[1], g_c[1])},
        conf,
        torch.ones(4, dtype=torch.bool),
    )
    constant_weights = _param_grads(net, loss(logits, y, detached)[0] - loss.classification(logits, y))
    assert full.abs().sum() > 0 and constant_weights.abs().sum() > 0
    rel = (full - constant_weights).norm() / full.norm()
    assert rel > 1e-3, f"parameter gradients nearly equal (rel diff {rel:.2e}): channel weights are constant"


def test_per_sample_grad_mode_equals_batch_mode_without_train_bn():
    torch.manual_seed(0)
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    for net in (Net(bn=False), Net(bn=True).eval()):
        a = AttentionMechanism(net, "inner", "last", grad_mode="batch")(x, y)
        b = AttentionMechanism(net, "inner", "last", grad_mode="per_sample")(x, y)
        for key in ("inner", "last"):
            torch.testing.assert_close(a.target[key], b.target[key], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(a.confusing[key], b.confusing[key], rtol=1e-4, atol=1e-6)


def test_train_mode_batchnorm_couples_samples_in_batch_mode_only():
    torch.manual_seed(0)
    net = Net(bn=True).train()
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    a = AttentionMechanism(net, "inner", "last", grad_mode="batch")(x, y)
    b = AttentionMechanism(net, "inner", "last", grad_mode="per_sample")(x, y)
    # Inner layer: BN of `last` sits between it and the output, so batch statistics add cross terms.
    assert not torch.allclose(a.target["inner"], b.target["inner"], rtol=1e-4, atol=1e-6)
    # Per-sample mode equals differentiating each sample's own score alone.
    with FeatureCapture(net, ["inner"]) as cap:
        logits = net(x)
    g0 = torch.autograd.grad(logits[0, 0], cap.features["inner"])[0]
    torch.testing.assert_close(b.target["inner"][0], channel_weighted(cap.features["inner"], g0)[0])
