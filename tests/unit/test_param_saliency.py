"""Parameter-space saliency: exact profiles on hand-built nets, batched == loop, input saliency, variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from icasc.bench.param_saliency import relative_difference
from icasc.saliency import ParameterSaliency
from icasc.saliency.blur import gaussian_blur
from icasc.saliency.parameter import (
    L1ParameterSaliency,
    SmoothParameterSaliency,
    boost_profile,
    postprocess_input_saliency,
    top_filters,
)
from icasc.saliency.parameter.per_sample import Magnitude, conv_weight_totals

# ---------------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------------


class LinearConvNet(nn.Module):
    """conv (2 -> 3, 2x2, bias) -> global average pool -> linear (3 -> 4): gradients have a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


class MixedNet(nn.Module):
    """Stride, padding, dilation, groups, reflect padding, 1x1 conv, bias/no bias, BN (eval), inplace ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2, bias=False)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1, groups=4, padding_mode="reflect")
        self.bn3 = nn.BatchNorm2d(8)
        self.c4 = nn.Conv2d(8, 4, 1, padding="same")
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 5)
        for bn in (self.bn1, self.bn3):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.c1(x)), inplace=True)
        x = F.relu(self.c2(x))
        x = torch.relu_(self.bn3(self.c3(x)))
        x = self.c4(x)
        return self.fc(self.drop(x.mean(dim=(2, 3))))


def _mixed(dtype: torch.dtype = torch.float64, n: int = 5) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = MixedNet().to(dtype)
    return model, torch.randn(n, 3, 10, 10, dtype=dtype), torch.randint(0, 5, (n,))


def _state(model: nn.Module) -> dict:
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": sum(len(getattr(m, h)) for m in model.modules() for h in hooks),
    }


def _assert_same_state(model: nn.Module, before: dict) -> None:
    after = _state(model)
    assert after["modes"] == before["modes"]
    assert after["flags"] == before["flags"]
    assert after["hooks"] == before["hooks"] == 0
    for k, v in before["weights"].items():
        assert torch.equal(after["weights"][k], v), k
    for a, b in zip(after["grads"], before["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def _autograd_param_grads(model: nn.Module, image: torch.Tensor, target: int, params: list) -> list:
    """Plain autograd on one sample (the model in eval mode), independent of the package's engines."""
    model.eval()
    loss = F.cross_entropy(model(image[None]), torch.tensor([target]))
    return torch.autograd.grad(loss, params)


# ---------------------------------------------------------------------------------------------------------
# The filter-wise profile
# ---------------------------------------------------------------------------------------------------------


def test_profile_equals_the_closed_form_gradient_of_a_linear_conv_net() -> None:
    torch.manual_seed(3)
    model = LinearConvNet().double()
    images = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    targets = torch.tensor([0, 3, 1])
    w, fc = model.conv.weight.detach(), model.fc.weight.detach()
    expected = torch.empty(3, 3, dtype=torch.float64)
    for b in range(3):
        z = F.conv2d(images[b : b + 1], w, model.conv.bias.detach())  # [1, 3, 3, 4]
        logits = fc @ z.mean(dim=(2, 3))[0] + model.fc.bias.detach()
        dlogits = logits.softmax(0) - F.one_hot(targets[b], 4).double()
        g = (fc.T @ dlogits) / z[0, 0].numel()  # dL/dz, constant over positions
        # dL/dW[o, i, p, q] = g_o * sum over output positions of x[i, h + p, w + q]
        windows = torch.stack(
            [
                torch.stack([images[b, :, p : p + 3, q : q + 4].sum(dim=(1, 2)) for q in range(2)], -1)
                for p in range(2)
            ],
            -2,
        )  # [2, 2, 2] = [i, p, q]
        expected[b] = (g[:, None, None, None] * windows[None]).abs().mean(dim=(1, 2, 3))
    for method in ("batched", "loop"):
        ps = ParameterSaliency(model, method=method)
        assert ps.filters == [("conv", 0), ("conv", 1), ("conv", 2)]
        torch.testing.assert_close(ps.profile(images, targets), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("granularity", ["filter", "unit"])
def test_batched_equals_loop_in_float64(granularity: str) -> None:
    model, images, targets = _mixed()
    batched = ParameterSaliency(model, granularity=granularity, memory_mb=0.001)  # one sample per chunk
    loop = ParameterSaliency(model, granularity=granularity, method="loop")
    a, b = batched.profile(images, targets), loop.profile(images, targets)
    n = 6 + 8 + 8 + 4 + (5 if granularity == "unit" else 0)
    assert a.shape == (5, n) and batched.n_filters == n
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)
    assert (a > 0).float().mean() > 0.5


def test_batched_equals_loop_in_float32_within_the_bench_tolerance() -> None:
    model, images, targets = _mixed(torch.float32, n=6)
    a = ParameterSaliency(model).profile(images, targets)
    b = ParameterSaliency(model, method="loop").profile(images, targets)
    assert relative_difference(a, b, ParameterSaliency(model).layer_slices) < 1e-4


def test_filter_profile_is_the_mean_abs_weight_gradient_from_plain_autograd() -> None:
    model, images, targets = _mixed()
    profile = ParameterSaliency(model).profile(images, targets)
    convs = [model.c1, model.c2, model.c3, model.c4]
    for b in range(images.shape[0]):
        grads = _autograd_param_grads(model, images[b], int(targets[b]), [c.weight for c in convs])
        expected = torch.cat([g.abs().flatten(1).mean(1) for g in grads])
        torch.testing.assert_close(profile[b], expected, rtol=1e-10, atol=0)


def test_unit_granularity_groups_bias_batchnorm_and_linear_rows() -> None:
    model, images, targets = _mixed()
    ps = ParameterSaliency(model, granularity="unit")
    profile = ps.profile(images, targets)
    assert ps.layers == ["c1", "c2", "c3", "c4", "fc"]
    m = model
    for b in range(images.shape[0]):
        params = [m.c1.weight, m.c1.bias, m.bn1.weight, m.bn1.bias, m.c2.weight, m.c3.weight, m.c3.bias]
        params += [m.bn3.weight, m.bn3.bias, m.c4.weight, m.c4.bias, m.fc.weight, m.fc.bias]
        g = dict(zip(range(len(params)), _autograd_param_grads(model, images[b], int(targets[b]), params)))
        c1 = (g[0].abs().flatten(1).sum(1) + g[1].abs() + g[2].abs() + g[3].abs()) / (27 + 3)
        c2 = g[4].abs().flatten(1).mean(1)  # no bias, no BatchNorm after it
        c3 = (g[5].abs().flatten(1).sum(1) + g[6].abs() + g[7].abs() + g[8].abs()) / (18 + 3)
        c4 = (g[9].abs().flatten(1).sum(1) + g[10].abs()) / (8 + 1)
        fc = (g[11].abs().sum(1) + g[12].abs()) / (4 + 1)
        torch.testing.assert_close(profile[b], torch.cat([c1, c2, c3, c4, fc]), rtol=1e-10, atol=0)


class SequenceHead(nn.Module):
    """A conv whose features go through a Linear applied per position ([B, T, C] input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.proj = nn.Linear(4, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(x).flatten(2).transpose(1, 2)  # [B, T, 4]
        return self.fc(torch.tanh(self.proj(tokens)).mean(dim=1))


def test_unit_granularity_linear_on_sequences_batched_equals_loop() -> None:
    torch.manual_seed(0)
    model = SequenceHead().double()
    images, targets = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    a = ParameterSaliency(model, granularity="unit").profile(images, targets)
    b = ParameterSaliency(model, granularity="unit", method="loop").profile(images, targets)
    assert a.shape == (4, 4 + 6 + 3)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)


def test_a_sample_profile_does_not_depend_on_its_batch() -> None:
    model, images, targets = _mixed()
    model.train()  # the analysis must switch BatchNorm and dropout to eval mode by itself
    ps = ParameterSaliency(model)
    whole = ps.profile(images, targets)
    torch.testing.assert_close(ps.profile(images[2:3], targets[2:3]), whole[2:3], rtol=1e-12, atol=0)


def test_columns_follow_module_order_whatever_the_order_given() -> None:
    model, images, targets = _mixed()
    ps = ParameterSaliency(model, layers=["c4", "c2"])
    assert ps.layers == ["c2", "c4"]
    assert ps.filters == [("c2", i) for i in range(8)] + [("c4", i) for i in range(4)]
    assert ps.layer_slices == {"c2": slice(0, 8), "c4": slice(8, 12)}
    full = ParameterSaliency(model).profile(images, targets)
    torch.testing.assert_close(ps.profile(images, targets), torch.cat([full[:, 6:14], full[:, 22:26]], 1))


def test_bad_layers_and_options_are_clear_errors() -> None:
    model, images, targets = _mixed()
    with pytest.raises(ValueError, match=r"valid layer names: c1, c2, c3, c4$"):
        ParameterSaliency(model, layers=["c9"])
    with pytest.raises(ValueError, match="unknown or non-Conv2d layers \\['fc'\\]"):
        ParameterSaliency(model, layers=["fc"])
    ParameterSaliency(model, layers=["fc"], granularity="unit")
    with pytest.raises(ValueError, match="granularity must be one of"):
        ParameterSaliency(model, granularity="layer")
    with pytest.raises(ValueError, match="method must be one of"):
        ParameterSaliency(model, method="vmap")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ParameterSaliency(model).profile(images[0], targets)
    with pytest.raises(ValueError, match="tensor with 5 rows"):
        ParameterSaliency(model).profile(images, targets[:2])
    with pytest.raises(ValueError, match="out of range"):
        ParameterSaliency(model).profile(images, torch.full((5,), 7))
    no_stats = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        ParameterSaliency(no_stats)
    layer_norm = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(), nn.LayerNorm(2))
    with pytest.raises(ValueError, match=r"other parameters: 2 \(LayerNorm\)"):
        ParameterSaliency(layer_norm, granularity="unit")


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.conv(x)).mean(dim=(2, 3)))


class PreActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.bn(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["batched", "loop"])
def test_errors_inside_the_pass_leave_the_model_untouched(method: str) -> None:
    targets = torch.tensor([0, 1])
    for model, channels, kwargs, match in [
        (Shared(), 3, {}, "ran more than once"),
        (PreActivation(), 3, {"granularity": "unit"}, "does not normalise such an output"),
        (LinearConvNet(), 2, {"loss": lambda logits, t: F.cross_entropy(logits, t)}, "per-sample losses"),
    ]:
        images = torch.randn(2, channels, 6, 6)
        model.train()
        next(model.parameters()).requires_grad_(False)
        before = _state(model)
        with pytest.raises((ValueError, RuntimeError), match=match):
            ParameterSaliency(model, method=method, **kwargs).profile(images, targets)
        _assert_same_state(model, before)


def test_every_analysis_leaves_the_model_untouched() -> None:
    model, images, targets = _mixed(torch.float32)
    model.train()
    model.bn1.eval()  # mixed modes must come back exactly
    model.c3.weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 7.0)  # an existing .grad must stay as it is
    before = _state(model)
    loader = [(images[:3], targets[:3]), {"image": images[3:], "target": targets[3:]}]
    for granularity in ("filter", "unit"):
        for method in ("batched", "loop"):
            ps = ParameterSaliency(model, granularity=granularity, method=method)
            ps.profile(images, targets)
            ps.profiles(loader)
            ps.fit_stats(loader)
            maps = ps.input_saliency(images[:2], targets[:2], k=3)
            assert maps.shape == (2, 10, 10)
            _assert_same_state(model, before)
    SmoothParameterSaliency(model, level=0.1, n_samples=2).input_saliency(images[:2], targets[:2], k=2)
    L1ParameterSaliency(model, alpha=1e-4).profile(images, targets)
    _assert_same_state(model, before)


def test_profile_works_under_no_grad_and_takes_a_custom_loss() -> None:
    model, images, targets = _mixed()
    ps = ParameterSaliency(model)
    expected = ps.profile(images, targets)
    with torch.no_grad():
        torch.testing.assert_close(ps.profile(images, targets), expected)
    multi_hot = F.one_hot(targets, 5).double()

    def bce(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, t, reduction="none").sum(1)

    a = ParameterSaliency(model, loss=bce).profile(images, multi_hot)
    b = ParameterSaliency(model, loss=bce, method="loop").profile(images, multi_hot)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)
    assert not torch.allclose(a, expected)
    with pytest.raises(ValueError, match=r"pass loss=\.\.\."):
        ps.profile(images, multi_hot)


def test_profiles_of_a_loader_carry_predictions_and_confidences() -> None:
    model, images, targets = _mixed()
    ps = ParameterSaliency(model)
    loader = [{"image": images[:2], "target": targets[:2]}, {"image": images[2:], "target": targets[2:]}]
    out = ps.profiles(loader)
    torch.testing.assert_close(out.profiles, ps.profile(images, targets))
    model.eval()
    with torch.no_grad():
        probs = model(images).softmax(1)
    assert torch.equal(out.predictions, probs.argmax(1)) and torch.equal(out.targets, targets)
    torch.testing.assert_close(out.confidences, probs.amax(1).float())
    torch.testing.assert_close(out.true_confidences, probs.gather(1, targets[:, None])[:, 0].float())
    assert torch.equal(out.correct, probs.argmax(1) == targets) and len(out) == 5
    assert len(ps.profiles(loader, max_batches=1)) == 2
    with pytest.raises(ValueError, match="'image' and 'target'"):
        ps.profiles([{"x": images}])


# ---------------------------------------------------------------------------------------------------------
# Top filters, boosting, input-space saliency
# ---------------------------------------------------------------------------------------------------------


def test_top_filters_on_a_hand_tensor() -> None:
    s = torch.tensor([[0.1, 3.0, -2.0, 7.0, 0.5], [5.0, -1.0, 4.0, 0.0, 6.0]])
    assert top_filters(s, k=3).tolist() == [[3, 1, 4], [4, 0, 2]]
    assert top_filters(s[0], k=2).tolist() == [3, 1]
    assert ParameterSaliency.top_filters(s, 1).dtype == torch.long
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 5\]"):
        top_filters(s, k=6)


def test_boosting_changes_only_the_chosen_filters() -> None:
    profile = torch.tensor([[1.0, -2.0, 3.0, 4.0], [0.5, 0.25, -1.0, 2.0]], requires_grad=True)
    boosted = boost_profile(profile, torch.tensor([[2, 0], [3, 1]]), boost=100.0)
    expected = torch.tensor([[100.0, -2.0, 300.0, 4.0], [0.5, 25.0, -1.0, 200.0]])
    assert torch.equal(boosted, expected) and not boosted.requires_grad
    shared = boost_profile(profile, torch.tensor([1]), boost=10.0)
    assert torch.equal(shared, torch.tensor([[1.0, -20.0, 3.0, 4.0], [0.5, 2.5, -1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"filter indices must lie in \[0, 4\)"):
        boost_profile(profile, torch.tensor([4]))


def _reference_input_saliency(model: nn.Module, image: torch.Tensor, target: int, convs: list, k: int):
    """The authors' recipe on one sample: autograd w.r.t. the weights with create_graph, cosine, backward."""
    model.eval()
    x = image[None].clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), torch.tensor([target]))
    grads = torch.autograd.grad(loss, [c.weight for c in convs], create_graph=True)
    profile = torch.cat([g.abs().flatten(1).mean(1) for g in grads])
    boosted = profile.detach().clone()
    boosted[torch.argsort(profile.detach(), descending=True)[:k]] *= 100.0
    similarity = F.cosine_similarity(profile[None], boosted[None])
    (gx,) = torch.autograd.grad(similarity.sum(), x)
    return gx[0].abs().amax(0), similarity.detach()


def test_input_saliency_equals_the_authors_recipe_and_increases_similarity() -> None:
    model, images, targets = _mixed(n=3)
    convs = [model.c1, model.c2, model.c3, model.c4]
    maps = ParameterSaliency(model).input_saliency(images, targets, k=4)
    loop_maps = ParameterSaliency(model, method="loop").input_saliency(images, targets, k=4)
    assert maps.shape == (3, 10, 10) and torch.isfinite(maps).all() and (maps > 0).any()
    for b in range(3):
        expected, _ = _reference_input_saliency(model, images[b], int(targets[b]), convs, k=4)
        torch.testing.assert_close(maps[b], expected, rtol=1e-8, atol=1e-14)
        torch.testing.assert_close(loop_maps[b], expected, rtol=1e-8, atol=1e-14)
    # Sign convention: a small step along the signed gradient raises the cosine similarity.
    model.eval()
    ps = ParameterSaliency(model)
    x = images[:1].clone().requires_grad_(True)
    profile, _ = ps._compute(x, targets[:1], create_graph=True)
    top = top_filters(profile.detach(), 4)
    target = boost_profile(profile, top)
    sim = F.cosine_similarity(profile, target)
    (g,) = torch.autograd.grad(sim.sum(), x)
    stepped, _ = ps._compute(images[:1] + 1e-4 * g / g.norm(), targets[:1])
    assert F.cosine_similarity(stepped, target) > sim.detach()


def test_input_saliency_uses_standardised_profiles_when_stats_are_set() -> None:
    model, images, targets = _mixed(n=4)
    ps = ParameterSaliency(model)
    raw = ps.input_saliency(images[:1], targets[:1], k=3)
    ps.fit_stats([(images, targets)])
    standardised = ps.input_saliency(images[:1], targets[:1], k=3)
    assert not torch.allclose(raw, standardised)
    # Explicit filters: the same columns for both samples.
    maps = ps.input_saliency(images[:2], targets[:2], filters=torch.tensor([0, 5]))
    assert maps.shape == (2, 10, 10) and torch.isfinite(maps).all()


def test_postprocess_thresholds_scales_and_blurs() -> None:
    maps = torch.arange(100.0).view(1, 10, 10)
    q90 = torch.quantile(torch.arange(100.0), 0.9)
    q99 = torch.quantile(torch.arange(100.0), 0.99)
    expected = (maps.clamp(q90, q99) - q90) / (q99 - q90)
    out = postprocess_input_saliency(maps, blur=None)
    torch.testing.assert_close(out, expected)
    assert (out[0].flatten()[:90] == 0).all() and out.max() == 1
    blurred = postprocess_input_saliency(maps[0])
    torch.testing.assert_close(blurred, gaussian_blur(expected[:, None], 3, 0.8)[0, 0])
    assert torch.equal(postprocess_input_saliency(torch.ones(2, 4, 4)), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="percentile < cap_percentile"):
        postprocess_input_saliency(maps, percentile=99, cap_percentile=90)


# ---------------------------------------------------------------------------------------------------------
# Variants (appendix A.1, A.7)
# ---------------------------------------------------------------------------------------------------------


def test_smoothgrad_variant() -> None:
    model, images, targets = _mixed(n=3)
    plain = ParameterSaliency(model).profile(images, targets)
    torch.testing.assert_close(SmoothParameterSaliency(model, level=0.0).profile(images, targets), plain)
    smooth = SmoothParameterSaliency(model, level=0.2, n_samples=3, seed=5)
    out = smooth.profile(images, targets)
    torch.testing.assert_close(smooth.profile(images, targets), out, rtol=0, atol=0)  # seeded
    # By hand: the same three noise patterns, scaled by each image's range, profiled and averaged.
    noise = torch.randn((3, 3, 10, 10), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sigma = 0.2 * (images.flatten(1).amax(1) - images.flatten(1).amin(1))
    expected = sum(
        ParameterSaliency(model).profile(images + sigma.view(-1, 1, 1, 1) * n, targets) for n in noise
    )
    torch.testing.assert_close(out, expected / 3, rtol=1e-10, atol=0)
    assert not torch.allclose(out, plain)
    # One image alone gets the same profile as in the batch (shared noise patterns).
    torch.testing.assert_close(smooth.profile(images[1:2], targets[1:2]), out[1:2])
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        SmoothParameterSaliency(model, n_samples=0)


def test_l1_variant_soft_thresholds_each_parameter_gradient() -> None:
    model, images, targets = _mixed(n=3)
    plain = ParameterSaliency(model).profile(images, targets)
    torch.testing.assert_close(L1ParameterSaliency(model, alpha=0.0).profile(images, targets), plain)
    alpha = 0.99  # relative to each image's mean plain saliency (appendix A.7's value)
    a = L1ParameterSaliency(model, alpha=alpha).profile(images, targets)
    b = L1ParameterSaliency(model, alpha=alpha, method="loop").profile(images, targets)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)
    convs = [model.c1, model.c2, model.c3, model.c4]
    for i in range(3):  # the threshold is alpha times this image's mean plain saliency
        grads = _autograd_param_grads(model, images[i], int(targets[i]), [c.weight for c in convs])
        threshold = alpha * float(plain[i].mean())
        expected = torch.cat(
            [((g.abs() - threshold).clamp_min(0) * (1 - alpha)).flatten(1).mean(1) for g in grads]
        )
        torch.testing.assert_close(a[i], expected, rtol=1e-10, atol=0)
    assert (a == 0).sum() > (plain == 0).sum()  # sparser
    assert (a > 0).any(dim=1).all()  # but never empty: the parameters above the mean survive
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\)"):
        L1ParameterSaliency(model, alpha=1.0)


@pytest.mark.parametrize("block_mb", [1e-6, 1e-3, 10.0])  # 1 row, a few rows, whole samples per block
@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2),
        nn.Conv2d(4, 4, (1, 3), stride=(2, 1), padding=(0, 2), groups=4, padding_mode="circular"),
        nn.Conv2d(4, 5, 1, stride=2),
    ],
)
def test_conv_weight_totals_equal_autograd_per_sample_gradients(conv: nn.Conv2d, block_mb: float) -> None:
    torch.manual_seed(0)
    conv = conv.double()
    x = torch.randn(3, 4, 7, 9, dtype=torch.float64)
    gy = torch.randn_like(conv(x))
    expected = torch.stack(
        [
            torch.autograd.grad(conv(x[b : b + 1]), conv.weight, gy[b : b + 1])[0].abs().flatten(1).sum(1)
            for b in range(3)
        ]
    )
    got = conv_weight_totals(conv, x, gy, Magnitude(), memory_mb=1e-4, block_mb=block_mb)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    soft = conv_weight_totals(
        conv, x, gy, Magnitude(threshold=0.5, scale=0.25), memory_mb=1.0, block_mb=block_mb
    )
    grads = [torch.autograd.grad(conv(x[b : b + 1]), conv.weight, gy[b : b + 1])[0] for b in range(3)]
    soft_expected = torch.stack([((g.abs() - 0.5).clamp_min(0) * 0.25).flatten(1).sum(1) for g in grads])
    torch.testing.assert_close(soft, soft_expected, rtol=1e-12, atol=0)


def test_input_saliency_in_chunks_equals_one_pass() -> None:
    model, images, targets = _mixed(n=5)
    ps = ParameterSaliency(model)
    whole = ps.input_saliency(images, targets, k=3, chunk_size=5)
    torch.testing.assert_close(
        ps.input_saliency(images, targets, k=3, chunk_size=2), whole, rtol=1e-10, atol=0
    )
    filters = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    torch.testing.assert_close(
        ps.input_saliency(images, targets, filters=filters, chunk_size=2),
        ps.input_saliency(images, targets, filters=filters, chunk_size=5),
        rtol=1e-10,
        atol=0,
    )
    with pytest.raises(ValueError, match=r"filters must be \[k\] or \[B=5, k\]"):
        ps.input_saliency(images, targets, filters=filters[:2])


class ConstantBranch(nn.Module):
    """A conv on a constant map (its output needs no input gradient), added to the image's features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.prior = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.per_sample = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prior = self.prior(torch.ones(x.shape[0] if self.per_sample else 1, 1, *x.shape[2:], dtype=x.dtype))
        return self.fc(torch.relu(self.conv(x) * prior).mean(dim=(2, 3)))


@pytest.mark.parametrize("layers", [None, ["prior"], ["conv"]])
def test_layers_that_start_the_backward_pass_anywhere(layers: list[str] | None) -> None:
    torch.manual_seed(0)
    model = ConstantBranch().double()
    images, targets = torch.randn(3, 3, 5, 5, dtype=torch.float64), torch.tensor([0, 2, 1])
    a = ParameterSaliency(model, layers=layers).profile(images, targets)
    b = ParameterSaliency(model, layers=layers, method="loop").profile(images, targets)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)
    assert (a > 0).all()
    model.per_sample = False  # one constant map broadcast over the batch: not separable per sample
    torch.testing.assert_close(
        ParameterSaliency(model, layers=layers, method="loop").profile(images, targets), b
    )
    if layers != ["conv"]:
        with pytest.raises(
            ValueError, match=r"'prior' ran on a batch of 1, not on the 3 images.*method='loop'"
        ):
            ParameterSaliency(model, layers=layers).profile(images, targets)
