"""Exact values of the post-hoc saliency methods on hand-weighted tiny networks, and their shared contract."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from icasc.saliency.base import normalize
from icasc.saliency.gradcam import ChannelWeightedAttention, GradCAM
from icasc.saliency.guided_backprop import Deconvolution, GuidedBackprop
from icasc.saliency.guided_gradcam import GuidedGradCAM
from icasc.saliency.integrated_gradients import IntegratedGradients
from icasc.saliency.occlusion import Occlusion
from icasc.saliency.smoothgrad import SmoothGrad
from icasc.saliency.vanilla import VanillaGradient


class TinyNet(nn.Module):
    """Conv-BN-inplace ReLU, a conv followed by F.relu, GAP, dropout, linear: 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True))
        self.conv = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 4)
        self.stem[1].running_mean.uniform_(-0.2, 0.2)
        self.stem[1].running_var.uniform_(0.5, 1.5)
        with torch.no_grad():  # maps of order 1 rather than 1e-3
            for layer in (self.stem[0], self.conv, self.head):
                layer.weight.mul_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(self.stem(x)))
        return self.head(self.drop(x.mean(dim=(2, 3))))


def _tiny() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TinyNet(), torch.randn(3, 3, 12, 12)


METHODS = {
    "vanilla": lambda m: VanillaGradient(m),
    "vanilla_sum": lambda m: VanillaGradient(m, reduce="sum"),
    "smoothgrad": lambda m: SmoothGrad(VanillaGradient(m), n_samples=4, chunk_size=5),
    "smoothgrad_gradcam": lambda m: SmoothGrad(GradCAM(m, "conv"), n_samples=3, chunk_size=4, squared=True),
    "integrated_gradients": lambda m: IntegratedGradients(m, steps=4, chunk_size=5),
    "guided_backprop": lambda m: GuidedBackprop(m),
    "deconvolution": lambda m: Deconvolution(m),
    "gradcam": lambda m: GradCAM(m, "conv"),
    "channel_weighted": lambda m: ChannelWeightedAttention(m, "stem"),
    "guided_gradcam": lambda m: GuidedGradCAM(m, "stem"),
    "occlusion": lambda m: Occlusion(m, window=5, stride=3, chunk_size=7),
}


def _no_hooks(model: nn.Module) -> bool:
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return all(not getattr(m, name) for m in model.modules() for name in hooks)


# ---------------------------------------------------------------------------------------------------------
# The contract every method keeps
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_restores_model_and_leaves_no_trace(name):
    model, images = _tiny()
    model.train()
    model.stem[1].eval()  # mixed modes must come back exactly
    modes = [m.training for m in model.modules()]
    method = METHODS[name](model)

    maps = method.attribute(images, target=1)
    assert maps.shape == (3, 12, 12) and maps.dtype == torch.float32 and not maps.requires_grad
    assert torch.isfinite(maps).all()
    with pytest.raises(ValueError, match="out of range"):
        method.attribute(images, target=7)
    assert [m.training for m in model.modules()] == modes
    assert _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", METHODS)
def test_batched_equals_one_image_at_a_time(name):
    model, images = _tiny()
    method = METHODS[name](model)
    target = torch.tensor([0, 3, 1])
    batched = method.attribute(images, target)
    single = torch.cat([method.attribute(images[i : i + 1], int(target[i])) for i in range(len(images))])
    assert (normalize(batched) - normalize(single)).abs().max() < 1e-5


@pytest.mark.parametrize("name", METHODS)
def test_bad_input_raises(name):
    model, images = _tiny()
    method = METHODS[name](model)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        method.attribute(images[0])
    with pytest.raises(ValueError, match="out of range"):
        method.attribute(images, target=torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="entries for a batch"):
        method.attribute(images, target=torch.tensor([0, 1]))


@pytest.mark.parametrize("name", ["vanilla", "gradcam", "guided_backprop", "integrated_gradients"])
def test_gradient_methods_work_under_no_grad(name):
    model, images = _tiny()
    method = METHODS[name](model)
    expected = method.attribute(images, 2)
    with torch.no_grad():
        torch.testing.assert_close(method.attribute(images, 2), expected)


# ---------------------------------------------------------------------------------------------------------
# Vanilla gradient
# ---------------------------------------------------------------------------------------------------------


def _linear(channels: int = 3, h: int = 4, w: int = 5, classes: int = 3) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * h * w, classes))


def test_vanilla_on_linear_model_is_the_weight_row():
    model = _linear()
    images = torch.randn(2, 3, 4, 5)
    rows = model[1].weight.detach().view(3, 3, 4, 5)
    target = torch.tensor([2, 0])
    torch.testing.assert_close(
        VanillaGradient(model).input_gradients(images, target), rows[target], rtol=0, atol=0
    )
    torch.testing.assert_close(
        VanillaGradient(model).attribute(images, target), rows[target].abs().amax(dim=1), rtol=0, atol=0
    )
    torch.testing.assert_close(
        VanillaGradient(model, reduce="sum").attribute(images, target), rows[target].abs().sum(dim=1)
    )
    with pytest.raises(ValueError, match="reduce must be one of"):
        VanillaGradient(model, reduce="mean")


# ---------------------------------------------------------------------------------------------------------
# Grad-CAM and channel-weighted attention
# ---------------------------------------------------------------------------------------------------------


def test_gradcam_equals_cam_for_gap_linear_network():
    # Grad-CAM paper §3.1: for conv -> GAP -> linear, alpha_k^c = w_k^c / Z, so Grad-CAM = ReLU(CAM) / Z.
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    )
    images = torch.randn(2, 3, 16, 16)
    target = torch.tensor([1, 2])
    with torch.no_grad():
        features = model[0](images)  # [2, 5, 8, 8]
    weights = model[3].weight.detach()[target]  # [2, 5]
    cam = torch.einsum("bk,bkhw->bhw", weights, features)
    expected = F.interpolate((F.relu(cam) / 64)[:, None], size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(GradCAM(model, "0").attribute(images, target), expected[:, 0])


class _FeaturesThenLinear(nn.Module):
    """The 2x2 input is the layer 'feat'; y = W flatten(feat), so dy^c/dfeat = W[c] exactly."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.head = nn.Linear(8, 2, bias=False)
        self.head.weight.data = weight.reshape(2, 8).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(x).flatten(1))


def _hand_cam_net() -> tuple[nn.Module, torch.Tensor]:
    features = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[3.0, 0.0], [1.0, 1.0]]]])
    grads = torch.tensor([[[0.5, -1.0], [0.25, 0.25]], [[-0.5, -0.5], [1.0, -1.0]]])
    return _FeaturesThenLinear(torch.stack([grads, torch.zeros_like(grads)])), features


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # alpha = mean grads = (0, -0.25): -0.25 * F1 is all <= 0.
        ({}, [[0.0, 0.0], [0.0, 0.0]]),
        ({"relu": False}, [[-0.75, 0.0], [-0.25, -0.25]]),
        # alpha = max grads = (0.5, 1): 0.5 F0 + F1.
        ({"pooling": "max"}, [[3.5, 1.0], [1.0, 1.5]]),
        # alpha = -mean grads = (0, 0.25).
        ({"counterfactual": True}, [[0.75, 0.0], [0.25, 0.25]]),
    ],
)
def test_gradcam_hand_values(kwargs, expected):
    model, features = _hand_cam_net()
    maps = GradCAM(model, "feat", **kwargs).attribute(features, 0)
    torch.testing.assert_close(maps, torch.tensor([expected]))


def test_channel_weighted_hand_values():
    model, features = _hand_cam_net()
    # Channel weights: sums of the positive gradients = (1, 1) -> ReLU(F0 + F1) / 4.
    expected = torch.tensor([[[4.0, 2.0], [1.0, 2.0]]]) / 4
    torch.testing.assert_close(ChannelWeightedAttention(model, "feat").attribute(features, 0), expected)


def test_unknown_layer_lists_valid_names():
    model, _ = _tiny()
    with pytest.raises(ValueError, match="valid layer names: stem"):
        GradCAM(model, "layer9")
    with pytest.raises(ValueError, match="valid layer names"):
        GuidedGradCAM(model, "layer9")
    with pytest.raises(ValueError, match="pooling"):
        GradCAM(model, "conv", pooling="median")


# ---------------------------------------------------------------------------------------------------------
# Guided backprop, deconvolution, guided Grad-CAM
# ---------------------------------------------------------------------------------------------------------

RELU_STYLES = {
    "module": lambda net, h: net.relu(h),
    "module_inplace": lambda net, h: net.relu_inplace(h),
    "F.relu": lambda net, h: F.relu(h),
    "F.relu_inplace": lambda net, h: F.relu(h, inplace=True),
    "torch.relu": lambda net, h: torch.relu(h),
    "torch.relu_": lambda net, h: torch.relu_(h),
    "Tensor.relu": lambda net, h: h.relu(),
    "Tensor.relu_": lambda net, h: (h.relu_(), h)[1],  # the in-place result is used through h itself
}


class _HandReLUNet(nn.Module):
    """x (2) -> W1 (3x2) -> ReLU -> w2 (2x3): h = (2, 3, -1) at x = (2, 3)."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.l1 = nn.Linear(2, 3, bias=False)
        self.l2 = nn.Linear(3, 2, bias=False)
        self.l1.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
        self.l2.weight.data = torch.tensor([[1.0, -1.0, 2.0], [0.0, 0.0, 0.0]])
        self.relu, self.relu_inplace = nn.ReLU(), nn.ReLU(inplace=True)
        self.style = style

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(RELU_STYLES[self.style](self, self.l1(x.flatten(1))))


@pytest.mark.parametrize("style", RELU_STYLES)
def test_guided_backprop_and_deconvolution_hand_values(style):
    model = _HandReLUNet(style)
    x = torch.tensor([2.0, 3.0]).view(1, 1, 1, 2)
    # dy/da = (1, -1, 2); ReLU mask (h > 0) = (1, 1, 0).
    # vanilla:  W1^T (1, -1, 0) = (1, -1); guided: W1^T (1, 0, 0) = (1, 0); deconv: W1^T (1, 0, 2) = (3, -2).
    assert VanillaGradient(model).input_gradients(x, 0).flatten().tolist() == [1.0, -1.0]
    assert GuidedBackprop(model).input_gradients(x, 0).flatten().tolist() == [1.0, 0.0]
    assert Deconvolution(model).input_gradients(x, 0).flatten().tolist() == [3.0, -2.0]
    assert GuidedBackprop(model).attribute(x, 0).flatten().tolist() == [1.0, 0.0]
    # The ReLU rule is gone after the call.
    assert VanillaGradient(model).input_gradients(x, 0).flatten().tolist() == [1.0, -1.0]


class _ReferenceGuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


class _ReferenceGuidedModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReferenceGuidedReLU.apply(x)


def test_guided_backprop_on_resnet18_with_shared_inplace_relus():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=3)
    images = torch.randn(2, 3, 32, 32)
    model.train()
    guided = GuidedBackprop(model).input_gradients(images, 1)
    assert model.training and _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())

    # Reference: every nn.ReLU module (BasicBlock.relu runs twice per block) swapped for an explicit one.
    reference = copy.deepcopy(model).eval()
    for module in list(reference.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, _ReferenceGuidedModule())
    x = images.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference(x)[:, 1].sum(), x)
    torch.testing.assert_close(guided, expected)
    assert not torch.allclose(guided, VanillaGradient(model).input_gradients(images, 1))

    cam_product = GuidedGradCAM(model, "layer3").attributions(images, 1)
    assert cam_product.shape == images.shape and torch.isfinite(cam_product).all()


def test_guided_gradcam_is_the_product_of_the_two_methods():
    model, images = _tiny()
    for target in (None, torch.tensor([0, 3, 1])):
        classes = model.eval()(images).argmax(1) if target is None else target
        guided = GuidedBackprop(model).input_gradients(images, classes)
        cam = GradCAM(model, "stem").attribute(images, classes)
        product = guided * cam[:, None]
        method = GuidedGradCAM(model, "stem")
        torch.testing.assert_close(method.attributions(images, target), product)
        torch.testing.assert_close(method.attribute(images, target), product.abs().amax(dim=1))
        torch.testing.assert_close(
            GuidedGradCAM(model, "stem", reduce="sum").attribute(images, target), product.abs().sum(dim=1)
        )


def test_guided_backprop_without_relu_raises():
    model = _linear()
    with pytest.raises(ValueError, match="no ReLU"):
        GuidedBackprop(model).attribute(torch.randn(1, 3, 4, 5))


def test_guided_backprop_exits_its_mode_when_forward_raises():
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            F.relu(x)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        GuidedBackprop(Broken()).attribute(torch.randn(1, 1, 2, 2))
    model = _HandReLUNet("F.relu")
    x = torch.tensor([2.0, 3.0]).view(1, 1, 1, 2)
    assert VanillaGradient(model).input_gradients(x, 0).flatten().tolist() == [1.0, -1.0]


# ---------------------------------------------------------------------------------------------------------
# Integrated gradients
# ---------------------------------------------------------------------------------------------------------


def _smooth_net() -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    )


def test_integrated_gradients_completeness():
    model = _smooth_net()
    images = torch.randn(2, 3, 6, 6)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    method = IntegratedGradients(model, steps=300, mean=mean, std=std, chunk_size=128)
    attributions = method.attributions(images, 2)
    baseline = ((0 - torch.tensor(mean)) / torch.tensor(std)).view(1, 3, 1, 1).expand_as(images)
    torch.testing.assert_close(method.baseline_for(images), baseline)
    with torch.no_grad():
        gap = model(images)[:, 2] - model(baseline)[:, 2]
    torch.testing.assert_close(attributions.sum(dim=(1, 2, 3)), gap, rtol=1e-2, atol=1e-3)


def test_integrated_gradients_one_step_and_linear_model():
    model = _smooth_net()
    images = torch.randn(2, 3, 6, 6)
    one_step = IntegratedGradients(model, steps=1, baseline=0.3).attributions(images, 1)
    expected = (images - 0.3) * VanillaGradient(model).input_gradients(images, 1)
    torch.testing.assert_close(one_step, expected)

    linear = _linear()
    x = torch.randn(1, 3, 4, 5)
    baseline = torch.randn(3, 1, 1)
    ig = IntegratedGradients(linear, steps=7, baseline=baseline, chunk_size=3).attributions(x, 0)
    torch.testing.assert_close(ig, (x - baseline) * linear[1].weight.detach()[0].view(1, 3, 4, 5))


def test_integrated_gradients_bad_arguments():
    model = _smooth_net()
    with pytest.raises(ValueError, match="both mean and std"):
        IntegratedGradients(model, mean=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="only define the 'black' baseline"):
        IntegratedGradients(model, baseline=0.0, mean=[0.5] * 3, std=[0.2] * 3)
    with pytest.raises(ValueError, match="steps"):
        IntegratedGradients(model, steps=0)
    with pytest.raises(ValueError, match="does not broadcast"):
        IntegratedGradients(model, baseline=torch.zeros(2, 1, 1)).attribute(torch.randn(1, 3, 6, 6))
    with pytest.raises(ValueError, match="channels"):
        IntegratedGradients(model, mean=[0.5] * 2, std=[0.2] * 2).attribute(torch.randn(1, 3, 6, 6))


# ---------------------------------------------------------------------------------------------------------
# SmoothGrad
# ---------------------------------------------------------------------------------------------------------


def test_smoothgrad_level_zero_equals_the_wrapped_method():
    model, images = _tiny()
    for method in (VanillaGradient(model), GradCAM(model, "conv"), IntegratedGradients(model, steps=3)):
        expected = method.attribute(images, 1)
        assert torch.equal(SmoothGrad(method, level=0.0, n_samples=5).attribute(images, 1), expected)


def test_smoothgrad_seeding_and_squared():
    model, images = _tiny()
    vanilla = VanillaGradient(model)
    state = torch.random.get_rng_state()
    first = SmoothGrad(vanilla, n_samples=6, seed=1).attribute(images)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(SmoothGrad(vanilla, n_samples=6, seed=1).attribute(images), first)
    assert not torch.allclose(SmoothGrad(vanilla, n_samples=6, seed=2).attribute(images), first)
    assert not torch.allclose(SmoothGrad(vanilla, n_samples=6, seed=1, squared=True).attribute(images), first)
    assert not torch.allclose(first, vanilla.attribute(images))


class _SumOfSquares(nn.Module):
    """Class 0 scores sum(x^2): its gradient 2x changes sign under noise around x = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x**2).flatten(1).sum(dim=1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_smoothgrad_absolute_and_squared_hand_values():
    # One pixel at 1, three at 0: sigma = 0.5 * (1 - 0) = 0.5; gradients 2(x + eps), eps ~ N(0, 0.25).
    image = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    kwargs = {"level": 0.5, "n_samples": 4000, "chunk_size": 4000}
    plain = SmoothGrad(VanillaGradient(_SumOfSquares()), **kwargs).attribute(image, 0)[0]
    absolute = SmoothGrad(VanillaGradient(_SumOfSquares()), absolute=True, **kwargs).attribute(image, 0)[0]
    squared = SmoothGrad(VanillaGradient(_SumOfSquares()), squared=True, **kwargs).attribute(image, 0)[0]
    zeros = torch.tensor([[False, True], [True, True]])
    # |mean 2 eps| -> 0 while mean |2 eps| = 2 sigma sqrt(2 / pi) ~ 0.798;
    # SmoothGrad^2: E[(2(x + eps))^2] = 4(x^2 + sigma^2).
    assert plain[zeros].max() < 0.1
    torch.testing.assert_close(absolute[zeros], torch.full((3,), 0.7979), rtol=0.05, atol=0)
    torch.testing.assert_close(squared, torch.tensor([[5.0, 1.0], [1.0, 1.0]]), rtol=0.08, atol=0)
    torch.testing.assert_close(plain[0, 0], torch.tensor(2.0), rtol=0.05, atol=0)


def test_smoothgrad_cap_and_multiply_by_input_hand_values():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    model[1].weight.data = torch.tensor([[1.0, -2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    image = torch.tensor([[[[2.0, 1.0], [-1.0, 0.5]]]])
    vanilla = VanillaGradient(model)
    # Median of |w| = (1, 2, 3, 4) is 2.5: values above it are capped.
    capped = SmoothGrad(vanilla, level=0.0, cap_percentile=50).attribute(image, 0)
    torch.testing.assert_close(capped, torch.tensor([[[1.0, 2.0], [2.5, 2.5]]]))
    # The gradient of a linear model ignores the noise; the product uses the clean image: |w * x|.
    multiplied = SmoothGrad(vanilla, level=0.3, n_samples=5, multiply_by_input=True).attribute(image, 0)
    torch.testing.assert_close(multiplied, torch.tensor([[[2.0, 2.0], [3.0, 2.0]]]))
    with pytest.raises(ValueError, match="cap_percentile"):
        SmoothGrad(vanilla, cap_percentile=120)


def test_smoothgrad_wraps_gradcam_at_the_map_level():
    model, images = _tiny()
    image = images[:1]
    gradcam = GradCAM(model, "conv")
    smoothed = SmoothGrad(gradcam, level=0.2, n_samples=3, seed=5).attribute(image, 2)
    # The documented noise: n standard-normal patterns from a generator seeded with `seed`, times sigma.
    noise = torch.randn((3, *image.shape[1:]), generator=torch.Generator().manual_seed(5))
    sigma = 0.2 * (image.max() - image.min())
    expected = torch.stack([gradcam.attribute(image + sigma * n, 2) for n in noise]).mean(dim=0)
    torch.testing.assert_close(smoothed, expected)
    for option in ("absolute", "multiply_by_input"):
        with pytest.raises(ValueError, match="map level"):
            SmoothGrad(gradcam, **{option: True})


def test_smoothgrad_wraps_integrated_gradients_and_guided_backprop():
    model, images = _tiny()
    for method in (IntegratedGradients(model, steps=3), GuidedBackprop(model)):
        maps = SmoothGrad(method, n_samples=2).attribute(images, 0)
        assert maps.shape == (3, 12, 12) and not torch.allclose(maps, method.attribute(images, 0))


# ---------------------------------------------------------------------------------------------------------
# Occlusion
# ---------------------------------------------------------------------------------------------------------


class _TopLeftScore(nn.Module):
    """Class 0's logit is 0.1 * the sum of the top-left 4x4 pixels; class 1's is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = 0.1 * x[:, :, :4, :4].sum(dim=(1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_occlusion_is_positive_on_the_region_and_zero_far_away():
    maps = Occlusion(_TopLeftScore(), window=3, stride=1).attribute(torch.ones(2, 1, 16, 16), 0)
    assert (maps[:, :4, :4] > 0).all()
    # Windows covering a pixel reach at most 2 pixels away: rows/cols >= 6 never touch the region.
    assert (maps[:, 6:, :] == 0).all() and (maps[:, :, 6:] == 0).all()


def test_occlusion_single_pixel_windows_on_a_linear_model():
    model = _linear(channels=2, h=4, w=5, classes=2)
    x = torch.randn(1, 2, 4, 5)
    weight = model[1].weight.detach()[1].view(1, 2, 4, 5)
    maps = Occlusion(model, window=1, score="logit").attribute(x, 1)
    torch.testing.assert_close(maps, (weight * x).sum(dim=1), atol=1e-5, rtol=0)
    fill = torch.tensor([0.5, -1.0])
    maps = Occlusion(model, window=1, fill=fill, score="logit").attribute(x, 1)
    torch.testing.assert_close(maps, (weight * (x - fill.view(1, 2, 1, 1))).sum(dim=1), atol=1e-5, rtol=0)


def test_occlusion_mean_option_averages_the_windows_covering_each_pixel():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.LazyLinear(3))
    image = torch.randn(1, 1, 7, 6)
    model(image)
    method = Occlusion(model, window=3, stride=2, fill=0.5, aggregate="mean")  # not the paper's map
    # Padding 1: a window every 2 px on the padded axis, plus one flush with its end; clipped to the image.
    rows, cols = [[0, 2], [1, 4], [3, 6], [5, 7]], [[0, 2], [1, 4], [3, 6], [4, 6]]
    assert method.window_spans(7).tolist() == rows and method.window_spans(6).tolist() == cols
    with torch.no_grad():
        clean = model(image).softmax(1)[0, 2]
        total, count = torch.zeros(7, 6), torch.zeros(7, 6)
        for r0, r1 in rows:
            for c0, c1 in cols:
                masked = image.clone()
                masked[..., r0:r1, c0:c1] = 0.5
                total[r0:r1, c0:c1] += clean - model(masked).softmax(1)[0, 2]
                count[r0:r1, c0:c1] += 1
    torch.testing.assert_close(method.attribute(image, 2)[0], total / count)


def test_occlusion_bad_arguments():
    model, images = _tiny()
    with pytest.raises(ValueError, match="larger than the image"):
        Occlusion(model, window=13).attribute(images)
    with pytest.raises(ValueError, match="score"):
        Occlusion(model, score="loss")
    with pytest.raises(ValueError, match="fill"):
        Occlusion(model, window=3, fill=torch.zeros(2)).attribute(images)
    with pytest.raises(ValueError, match="aggregate must be one of"):
        Occlusion(model, aggregate="max")
    assert Occlusion(model).stride == 7 and Occlusion(model).aggregate == "centre"


def _window_drops(product: torch.Tensor, window: int, rows: list[int], cols: list[int]) -> torch.Tensor:
    """Closed form for a linear logit: the drop of the window centred on (r, c) is the sum of w * x in it."""
    h, w = product.shape
    out = torch.zeros(len(rows), len(cols), dtype=product.dtype)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            r0, c0 = r - window // 2, c - window // 2
            out[i, j] = product[max(r0, 0) : min(r0 + window, h), max(c0, 0) : min(c0 + window, w)].sum()
    return out


@pytest.mark.parametrize("window", [3, 4, 5])
def test_occlusion_stores_the_drop_of_the_window_centred_on_each_pixel(window):
    """Grad-CAM app. C.1: "At each location of the occlusion map we store the difference" in score."""
    torch.manual_seed(2)
    model = _linear(channels=2, h=7, w=9, classes=3).double()
    x = torch.randn(2, 2, 7, 9, dtype=torch.float64)
    weight = model[1].weight.detach()[2].view(2, 7, 9)
    maps = Occlusion(model, window=window, stride=1, score="logit").attribute(x, 2)  # fill 0
    for b in range(2):
        product = (weight * x[b]).sum(dim=0)  # logit(x) - logit(x masked) = sum of w * x over the window
        torch.testing.assert_close(maps[b], _window_drops(product, window, list(range(7)), list(range(9))))


def test_occlusion_with_a_stride_gives_each_cell_the_drop_of_the_window_at_its_centre():
    torch.manual_seed(3)
    model = _linear(channels=2, h=7, w=9, classes=3).double()
    x = torch.randn(1, 2, 7, 9, dtype=torch.float64)
    weight = model[1].weight.detach()[0].view(2, 7, 9)
    method = Occlusion(model, window=3, stride=3, score="logit")
    # Cells [0, 3), [3, 6), [6, 7) / [0, 3), [3, 6), [6, 9): centres start + (length - 1) // 2.
    assert method.window_centres(7).tolist() == [1, 4, 6] and method.window_centres(9).tolist() == [1, 4, 7]
    maps = method.attribute(x, 0)[0]
    drops = _window_drops((weight * x[0]).sum(dim=0), 3, [1, 4, 6], [1, 4, 7])
    cell_rows, cell_cols = torch.tensor([0, 0, 0, 1, 1, 1, 2]), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    torch.testing.assert_close(maps, drops[cell_rows][:, cell_cols])
    # At the cell centres the strided map is the dense (stride 1) paper map exactly.
    dense = Occlusion(model, window=3, stride=1, score="logit").attribute(x, 0)[0]
    centres = torch.tensor([1, 4, 6]), torch.tensor([1, 4, 7])
    torch.testing.assert_close(maps[centres[0]][:, centres[1]], dense[centres[0]][:, centres[1]])
    # The mean option is a box-blurred map, not the paper's.
    blurred = Occlusion(model, window=3, stride=1, score="logit", aggregate="mean").attribute(x, 0)[0]
    assert not torch.allclose(blurred, dense)
