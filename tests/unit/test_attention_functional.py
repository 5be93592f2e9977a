"""Exact values of the attention maps (ICASC Eq. 1-2) and the Grad-CAM = CAM identity."""

import pytest
import torch
from torch import nn

from icasc.attention import AttentionMechanism, channel_weighted, grad_cam, max_normalize


def _hand_built():
    # Two channels on a 2x2 grid.
    features = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[3.0, 0.0], [1.0, 1.0]]]])
    grads = torch.tensor([[[[0.5, -1.0], [0.25, 0.25]], [[-0.5, -0.5], [1.0, -1.0]]]])
    return features, grads


def test_channel_weighted_exact():
    features, grads = _hand_built()
    # Channel weights: sum of positive gradients -> w0 = 1.0, w1 = 1.0.
    expected = torch.tensor([[[4.0, 2.0], [1.0, 2.0]]]) / 4.0
    torch.testing.assert_close(channel_weighted(features, grads), expected)


def test_grad_cam_exact():
    features, grads = _hand_built()
    # Mean gradients: a0 = 0, a1 = -0.25 -> relu(-0.25 * F1) = [[0, 0], [0, 0]].
    torch.testing.assert_close(grad_cam(features, grads), torch.zeros(1, 2, 2))
    grads2 = grads.clone()
    grads2[0, 1] = 1.0  # a1 = 1
    torch.testing.assert_close(grad_cam(features, grads2), torch.tensor([[[3.0, 0.0], [1.0, 1.0]]]))


def test_channel_weighted_ignores_negative_gradients_unlike_grad_cam():
    features = torch.ones(1, 1, 2, 2)
    grads = torch.tensor([[[[1.0, -1.0], [-1.0, -1.0]]]])
    assert grad_cam(features, grads).sum() == 0  # the negative background cancels the channel
    torch.testing.assert_close(channel_weighted(features, grads), torch.full((1, 2, 2), 0.25))


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[B, K, h, w\]"):
        channel_weighted(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="shape of features"):
        grad_cam(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))


def test_max_normalize_safe_on_zero_maps():
    maps = torch.stack([torch.zeros(3, 3), torch.arange(9.0).view(3, 3)])
    out = max_normalize(maps)
    assert torch.isfinite(out).all()
    assert out[0].abs().sum() == 0
    torch.testing.assert_close(out[1].max(), torch.tensor(1.0))


class GapNet(nn.Module):
    """conv -> ReLU -> global average pooling -> linear: the network CAM is defined for."""

    def __init__(self, k: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 3, padding=1)
        self.features = nn.Sequential(nn.Conv2d(5, k, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(k, classes)

    def forward(self, x):
        return self.fc(self.features(self.stem(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "ach"])
def test_grad_cam_equals_cam_on_gap_network(method):
    """Grad-CAM paper §3.1: for conv->GAP->linear, Grad-CAM is CAM up to the ReLU and a 1/Z scale.

    dY^c/dF^k_ij = W_ck / Z, so Grad-CAM = ReLU(sum_k W_ck F^k) / Z (CAM with a ReLU), and A_ch weights
    channels by Z * ReLU(W_ck) / Z = ReLU(W_ck).
    """
    torch.manual_seed(0)
    net = GapNet()
    images = torch.randn(3, 3, 8, 8)
    targets = torch.tensor([0, 2, 3])
    out = AttentionMechanism(net, "stem", "features", method=method)(images, targets)
    feats = net.features(net.stem(images)).detach()
    z = feats.shape[-1] * feats.shape[-2]
    w = net.fc.weight.detach()[targets]  # [B, K]
    if method == "gradcam":
        expected = torch.relu(torch.einsum("bk,bkhw->bhw", w, feats)) / z
    else:
        expected = torch.relu(torch.einsum("bk,bkhw->bhw", torch.relu(w), feats)) / z
    torch.testing.assert_close(out.target["last"], expected, rtol=1e-5, atol=1e-6)
