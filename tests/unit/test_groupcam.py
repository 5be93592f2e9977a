"""Group-CAM (Group-CAM paper, Algorithm 1) on tiny networks: exact formulas, batching, state hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur as tv_gaussian_blur

from icasc.attention.capture import FeatureCapture
from icasc.attention.functional import grad_cam
from icasc.models.tiny import TinyCNN
from icasc.saliency.base import normalize
from icasc.saliency.blur import clip_kernel_size, gaussian_blur
from icasc.saliency.groupcam import GroupCAM, denoise
from icasc.utils import resize_map


def tiny(seed: int = 0, num_classes: int = 10) -> TinyCNN:
    torch.manual_seed(seed)
    model = TinyCNN(num_classes=num_classes, width=4)  # layer2: 16 channels, 4x4 for 32x32 inputs
    # Non-trivial BatchNorm statistics, so eval vs train mode changes the output.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def images(b: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


class PooledLinear(nn.Module):
    """``feat`` = 2x2 average pooling of the image (so group maps are known), then GAP + linear head."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.feat = nn.AvgPool2d(2)
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feat(x).mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------- pieces


def test_blur_matches_torchvision_reflect() -> None:
    x = images(2, 64)
    expected = tv_gaussian_blur(x, [51, 51], [50.0, 50.0])
    torch.testing.assert_close(gaussian_blur(x, 51, 50.0), expected, atol=1e-5, rtol=1e-5)
    y = torch.randn(2, 3, 20, 27)
    torch.testing.assert_close(
        gaussian_blur(y, 7, 1.5), tv_gaussian_blur(y, [7, 7], [1.5, 1.5]), atol=1e-5, rtol=0
    )


def test_blur_kernel_clipped_to_the_image() -> None:
    assert clip_kernel_size(51, 224, 224) == 51
    assert clip_kernel_size(51, 20, 27) == 19
    assert clip_kernel_size(51, 27, 40) == 27
    y = torch.randn(1, 3, 20, 27)
    torch.testing.assert_close(gaussian_blur(y, 51, 50.0), tv_gaussian_blur(y, [19, 19], [50.0, 50.0]))
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(y, 4, 1.0)


def test_denoise_zeroes_exactly_values_at_or_below_the_percentile() -> None:
    ramp = torch.arange(11.0).view(1, 1, 11)  # 50th percentile is exactly 5.0
    assert denoise(ramp, 50.0).flatten().tolist() == [0.0] * 6 + [6.0, 7.0, 8.0, 9.0, 10.0]
    maps = torch.rand(4, 5, 6, generator=torch.Generator().manual_seed(0))
    maps[0, :3] = 0.0  # ties at zero
    out = denoise(maps, 70.0)
    for m, o in zip(maps, out, strict=True):
        p = np.percentile(m.numpy(), 70)
        keep = m.numpy() > p
        np.testing.assert_array_equal(o.numpy()[keep], m.numpy()[keep])
        assert (o.numpy()[~keep] == 0).all()
        assert keep.sum() < m.numel()


def test_scored_inputs_follow_eq5_and_the_model_sees_them() -> None:
    model, x = tiny(), images(2)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, a: None if torch.is_grad_enabled() else seen.append(a[0]))
    gc = GroupCAM(model, "layer2", groups=4, blur_kernel=9, blur_sigma=3.0, chunk_size=3)
    maps, target = gc.masks(x)
    blurred = gc.baseline(x)
    b, g = maps.shape[:2]
    masks = F.interpolate(maps.reshape(b * g, 1, 4, 4), size=(32, 32), mode="bilinear", align_corners=False)
    expected = [
        x[i] * masks[i * g + j] + blurred[i] * (1 - masks[i * g + j]) for i in range(b) for j in range(g)
    ]
    expected = torch.stack([*expected, blurred[0], blurred[1]])
    torch.testing.assert_close(gc.scored_inputs(x, blurred, maps, slice(0, b * (g + 1))), expected)
    gc.score_masks(x, maps, target)
    assert [s.shape[0] for s in seen] == [3, 3, 3, 1]
    torch.testing.assert_close(torch.cat(seen), expected)


# ------------------------------------------------------------------------------------------ the method


def test_one_group_without_denoising_is_gradcam() -> None:
    """Paper, end of §1: G = 1 and no de-noising reduce Group-CAM to Grad-CAM (up to normalisation)."""
    model, x = tiny(), images(4)
    gc = GroupCAM(model.eval(), "layer2", groups=1, theta=None)
    targets = []
    for i in range(x.shape[0]):  # a class whose single score alpha is positive
        alphas = [float(gc.score_masks(x[i : i + 1], *gc.masks(x[i : i + 1], c))) for c in range(10)]
        assert max(alphas) > 0
        targets.append(int(np.argmax(alphas)))
    target = torch.tensor(targets)
    with FeatureCapture(model, ["layer2"]) as cap:
        logits = model(x)
    feats = cap.features["layer2"]
    (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), feats)
    expected = normalize(resize_map(grad_cam(feats.detach(), grads), (32, 32)))
    torch.testing.assert_close(normalize(gc.attribute(x, target)), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["paper", "reference_code"])
def test_batched_equals_per_image_and_chunking_is_invisible(variant: str) -> None:
    model, x = tiny(), images(3)
    gc = GroupCAM(model, "layer2", groups=8, blur_kernel=11, blur_sigma=5.0, variant=variant)
    batched = gc.attribute(x)
    assert batched.shape == (3, 32, 32) and (batched >= 0).all() and batched.max() > 0
    target = model.eval()(x).argmax(1)
    per_image = torch.cat([gc.attribute(x[i : i + 1], target[i : i + 1]) for i in range(3)])
    assert (normalize(batched) - normalize(per_image)).abs().max() < 1e-5
    for chunk in (1, 5):
        chunked = GroupCAM(
            model, "layer2", groups=8, blur_kernel=11, blur_sigma=5.0, variant=variant, chunk_size=chunk
        )
        assert (normalize(chunked.attribute(x)) - normalize(batched)).abs().max() < 1e-5


def test_chunk_size_from_the_memory_budget() -> None:
    model, x = tiny(), images(2)
    per_image = 3 * 32 * 32 * 4
    assert GroupCAM(model, "layer2", memory_budget_mb=10 * per_image / 2**20).chunk_size_for(x) == 10
    assert GroupCAM(model, "layer2", memory_budget_mb=1e-6).chunk_size_for(x) == 1
    assert GroupCAM(model, "layer2", chunk_size=7).chunk_size_for(x) == 7
    # Default on the CPU: 20 MiB of input per chunk (34 images at 224 px).
    big = torch.zeros(1, 3, 224, 224)
    assert GroupCAM(model, "layer2").chunk_size_for(big) == 20 * 2**20 // (3 * 224 * 224 * 4) == 34
    assert GroupCAM.chunks(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]


def test_reference_code_variant_differs_as_documented() -> None:
    """Constructed case: maps are known, one group's score is negative."""
    weight = torch.tensor([[1.0, -2.0], [0.0, 0.0]])
    model = PooledLinear(weight)
    x = 0.1 * torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    x[0, :, 4:6, 4:6] = torch.tensor([1.0, 3.0]).view(2, 1, 1)  # M_0's peak, but keeping it lowers F_0
    x[0, 1, 2:4, 2:4] = -2.0  # an interior low-res maximum of M_1: upsample/normalise order matters
    opts = {"groups": 2, "blur_kernel": 5, "blur_sigma": 2.0, "theta": 70.0}
    paper = GroupCAM(model, "feat", variant="paper", **opts)
    ref = GroupCAM(model, "feat", variant="reference_code", **opts)

    feats = F.avg_pool2d(x, 2)[0]  # [2, 4, 4]
    w = weight[0] / 16  # Eq. 1: mean gradient of the class-0 logit w.r.t. each pooled channel
    raw = F.relu(w.view(2, 1, 1) * feats)  # Eq. 2, one channel per group
    blurred = gaussian_blur(x, 5, 2.0)

    def alpha(masks: torch.Tensor) -> torch.Tensor:
        perturbed = x * masks.unsqueeze(1) + blurred * (1 - masks.unsqueeze(1))
        with torch.no_grad():
            return model(perturbed).softmax(1)[:, 0] - model(blurred).softmax(1)[0, 0]

    paper_maps = normalize(denoise(raw, 70.0))  # de-noise, normalise, then upsample
    paper_alpha = alpha(resize_map(paper_maps, (8, 8)))
    ref_masks = normalize(resize_map(raw, (8, 8)))  # no de-noising; upsample, then normalise
    ref_alpha = alpha(ref_masks)
    assert (ref_alpha < 0).any() and (ref_alpha > 0).any()
    assert not torch.allclose(ref_masks, resize_map(normalize(raw), (8, 8)))

    expected_paper = F.relu((paper_alpha.view(2, 1, 1) * resize_map(paper_maps, (8, 8))).sum(0))
    expected_ref = (F.relu(ref_alpha).view(2, 1, 1) * resize_map(raw, (8, 8))).sum(0)
    torch.testing.assert_close(paper.attribute(x, 0)[0], expected_paper, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(ref.attribute(x, 0)[0], expected_ref, atol=1e-9, rtol=1e-5)
    # The negative-score group contributes nothing in the release; in the paper it subtracts.
    pos = int(ref_alpha.argmax())
    torch.testing.assert_close(ref.attribute(x, 0)[0], ref_alpha[pos] * resize_map(raw, (8, 8))[pos])
    assert (normalize(paper.attribute(x, 0)) - normalize(ref.attribute(x, 0))).abs().max() > 0.05


def test_without_gradient_weights_there_is_no_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = tiny(), images(2)

    def no_backward(*args: object, **kwargs: object) -> None:
        raise AssertionError("a backward pass ran")

    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    gc = GroupCAM(model, "layer2", groups=16, theta=None, gradient_weights=False, blur_kernel=9)
    maps, _ = gc.masks(x)
    with FeatureCapture(model.eval(), ["layer2"]) as cap, torch.no_grad():
        model(x)
    expected = normalize(F.relu(cap.features["layer2"].view(2 * 16, 1, 4, 4).sum(1))).view(2, 16, 4, 4)
    torch.testing.assert_close(maps, expected)
    assert gc.attribute(x).shape == (2, 32, 32)


def assert_untouched(model: nn.Module, stats: list[torch.Tensor], modes: list[bool]) -> None:
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    for before, after in zip(stats, [b.clone() for b in model.buffers()], strict=True):
        assert torch.equal(before, after)


def test_model_state_is_untouched_also_when_raising() -> None:
    model, x = tiny(), images(2)
    model.train()
    model.layer1.eval()  # a mixed state must come back as it was
    stats = [b.clone() for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    for variant in ("paper", "reference_code"):
        GroupCAM(model, "layer2", groups=4, variant=variant, blur_kernel=9).attribute(x)
        assert_untouched(model, stats, modes)
    with pytest.raises(ValueError, match="out of range"):
        GroupCAM(model, "layer2").attribute(x, 10)
    assert_untouched(model, stats, modes)
    with pytest.raises(ValueError, match="does not divide"):
        GroupCAM(model, "layer2", groups=3).attribute(x)
    assert_untouched(model, stats, modes)


def test_bad_inputs_give_clear_errors() -> None:
    model, x = tiny(), images(2)
    with pytest.raises(ValueError, match=r"unknown layer 'layer9'.*layer2"):
        GroupCAM(model, "layer9")
    with pytest.raises(ValueError, match="batch dimension"):
        GroupCAM(model, "layer2").attribute(x[0])
    with pytest.raises(ValueError, match=r"out of range \[0, 10\)"):
        GroupCAM(model, "layer2").attribute(x, torch.tensor([0, 12]))
    with pytest.raises(ValueError, match=r"groups=5 does not divide the 16 channels.*\[1, 2, 4, 8, 16\]"):
        GroupCAM(model, "layer2", groups=5).attribute(x)
    with pytest.raises(ValueError, match="groups=32 does not divide"):
        GroupCAM(model, "layer2").attribute(x)  # the paper's G = 32 > K = 16
    with pytest.raises(ValueError, match="variant"):
        GroupCAM(model, "layer2", variant="fast")
    with pytest.raises(ValueError, match="percentile"):
        GroupCAM(model, "layer2", theta=170.0)
    with pytest.raises(ValueError, match="odd"):
        GroupCAM(model, "layer2", blur_kernel=50)
