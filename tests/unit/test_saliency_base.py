"""The shared saliency helpers: normalize, resolve_target, eval_mode, chunk sizing."""

import pytest
import torch
from torch import nn

from icasc.saliency import SmoothGrad, VanillaGradient, normalize, resolve_target
from icasc.saliency.base import chunk_size_for
from icasc.utils import eval_mode


def test_normalize_min_max_and_constant_maps():
    maps = torch.stack([torch.tensor([[1.0, 3.0], [2.0, 5.0]]), torch.full((2, 2), 7.0)])
    out = normalize(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert out[1].abs().sum() == 0
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        normalize(torch.zeros(2, 2))


def test_resolve_target():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert resolve_target(logits, None).tolist() == [1, 0]
    assert resolve_target(logits, 2).tolist() == [2, 2]
    assert resolve_target(logits, torch.tensor([0, 1])).tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"out of range \[0, 3\)"):
        resolve_target(logits, 3)
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        resolve_target(logits, torch.tensor([0, 1, 2]))


def test_eval_mode_restores_each_module():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.BatchNorm1d(2))
    model.train()
    model[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_chunk_size_for_budget_and_device_default():
    images = torch.zeros(2, 3, 224, 224)
    per_image = 3 * 224 * 224 * 4
    assert chunk_size_for(images, 7, None, cpu_mb=20, device_mb=512) == 7
    assert chunk_size_for(images, None, 5 * per_image / 2**20, cpu_mb=20, device_mb=512) == 5
    assert chunk_size_for(images, None, None, cpu_mb=12, device_mb=512) == 12 * 2**20 // per_image == 20


def test_smoothgrad_default_chunking_equals_one_chunk():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    images = torch.randn(3, 3, 8, 8)
    default = SmoothGrad(VanillaGradient(model), n_samples=5).attribute(images)
    tiny_chunks = SmoothGrad(VanillaGradient(model), n_samples=5, chunk_size=2).attribute(images)
    torch.testing.assert_close(default, tiny_chunks, rtol=1e-5, atol=1e-7)
