"""Explainability metrics: constructed inputs with answers known by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from icasc.metrics import (
    Faithfulness,
    InsertionDeletion,
    LocalizationError,
    PointingGame,
    box_iou,
    connected_components,
    faithfulness,
    insertion_deletion,
    largest_component_boxes,
    localization_correct,
    localization_error,
    parameter_layers,
    pointing_game_hits,
    rankdata,
    sanity_check,
    spearman,
    ssim,
    step_counts,
)
from icasc.metrics.faithfulness import occlusion_faithfulness
from icasc.metrics.pointing_game import POINTING_TOLERANCE
from icasc.saliency import Occlusion
from icasc.saliency.base import Attribution, resolve_target
from icasc.saliency.blur import gaussian_blur
from icasc.utils import resize_map

# ---------------------------------------------------------------------------------------------------------
# Deletion / insertion
# ---------------------------------------------------------------------------------------------------------


class RegionModel(nn.Module):
    """Two classes: the logit of class 0 is ``scale * (mean over a known region - 0.5)``, class 1's is 0."""

    def __init__(self, region: tuple[slice, slice], scale: float = 6.0) -> None:
        super().__init__()
        self.region = region
        self.scale = scale
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        s = x[:, :, self.region[0], self.region[1]].mean(dim=(1, 2, 3))
        return torch.stack([self.scale * (s - 0.5), torch.zeros_like(s)], dim=1)


REGION = (slice(0, 4), slice(0, 4))


def _region_images(b: int = 3, size: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, size, size, generator=g) - 0.5  # clutter the model ignores
    images[:, :, REGION[0], REGION[1]] = 1.0
    return images


def _region_map(b: int = 3, size: int = 12) -> torch.Tensor:
    """Region first: a gradient that is highest inside the region."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    base = -(ys + xs).float()
    base[REGION[0], REGION[1]] += 100.0
    return base.expand(b, size, size).clone()


def test_step_counts_papers_setting():
    counts = step_counts(224 * 224, 0.036)
    assert counts.numel() - 1 == 28 == math.ceil(1 / 0.036)
    assert counts[1] == 1806 and counts[0] == 0 and counts[-1] == 224 * 224
    exact = step_counts(224 * 224, 8 / 224)  # RISE: 224 * 8 pixels per step
    assert exact.numel() - 1 == 28 and bool((exact.diff() == 224 * 8).all())
    assert step_counts(100, 1.0).tolist() == [0, 100]
    assert step_counts(100, 0.3).tolist() == [0, 30, 60, 90, 100]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_step_fraction_out_of_range(fraction):
    with pytest.raises(ValueError, match="step_fraction"):
        step_counts(100, fraction)
    with pytest.raises(ValueError, match="step_fraction"):
        insertion_deletion(RegionModel(REGION), _region_images(), _region_map(), 0, step_fraction=fraction)


def test_good_map_beats_reversed_map():
    model, images, good = RegionModel(REGION), _region_images(), _region_map()
    for substrate in ("blur", "zeros"):
        out_good = insertion_deletion(model, images, good, 0, step_fraction=0.05, substrate=substrate)
        out_bad = insertion_deletion(model, images, -good, 0, step_fraction=0.05, substrate=substrate)
        assert bool((out_good["insertion_auc"] > out_bad["insertion_auc"] + 0.1).all())
        assert bool((out_good["deletion_auc"] < out_bad["deletion_auc"] - 0.1).all())
        assert torch.allclose(out_good["overall"], out_good["insertion_auc"] - out_good["deletion_auc"])


def test_curve_endpoints_and_chunking_match_a_naive_loop():
    model, images, maps = RegionModel(REGION), _region_images(b=2, size=10), _region_map(b=2, size=10)
    maps[1] = torch.rand(10, 10, generator=torch.Generator().manual_seed(1))
    maps[1].view(-1)[::2][:40] = 5.0  # 40 tied maxima straddle the first step: raster order decides
    out = insertion_deletion(model, images, maps, 0, step_fraction=0.3, substrate="blur", chunk_size=3)
    counts = [0, 30, 60, 90, 100]
    assert out["deletion_curve"].shape == out["insertion_curve"].shape == (2, 5)
    assert torch.allclose(out["fraction"], torch.tensor(counts) / 100.0)

    def prob(x: torch.Tensor) -> torch.Tensor:
        return model(x).softmax(dim=1)[:, 0]

    base = gaussian_blur(images)
    for b in range(2):
        order = sorted(range(100), key=lambda p: (-float(maps[b].flatten()[p]), p))
        for k, n in enumerate(counts):
            changed = torch.zeros(100, dtype=torch.bool)
            changed[order[:n]] = True
            changed = changed.view(1, 10, 10)
            deleted = torch.where(changed, base[b], images[b])
            inserted = torch.where(changed, images[b], base[b])
            assert torch.allclose(out["deletion_curve"][b, k], prob(deleted[None])[0], atol=1e-6)
            assert torch.allclose(out["insertion_curve"][b, k], prob(inserted[None])[0], atol=1e-6)
    p_orig, p_sub = prob(images), prob(base)
    assert torch.allclose(out["deletion_curve"][:, 0], p_orig) and torch.allclose(
        out["insertion_curve"][:, -1], p_orig
    )
    assert torch.allclose(out["deletion_curve"][:, -1], p_sub) and torch.allclose(
        out["insertion_curve"][:, 0], p_sub
    )
    # Trapezoids over the non-uniform last step (0.9 -> 1.0).
    x = torch.tensor(counts) / 100.0
    y = out["insertion_curve"][0]
    manual = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(4))
    assert torch.allclose(out["insertion_auc"][0], manual)


def test_curve_length_at_224():
    images = torch.zeros(1, 3, 224, 224)
    out = insertion_deletion(RegionModel(REGION), images, torch.rand(1, 7, 7), 0, substrate="zeros")
    assert out["insertion_curve"].shape == out["deletion_curve"].shape == (1, 29)
    assert out["fraction"][1].item() == pytest.approx(1806 / 224**2)


def test_auc_of_constant_curve_is_the_constant():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, math.log(3.0)]]).expand(x.shape[0], 2)

    out = insertion_deletion(
        Constant(), torch.rand(2, 3, 10, 10), torch.rand(2, 10, 10), 1, step_fraction=0.3
    )
    assert torch.allclose(out["insertion_auc"], torch.full((2,), 0.75))
    assert torch.allclose(out["deletion_auc"], torch.full((2,), 0.75))


def test_insertion_deletion_target_none_eval_mode_and_low_res_maps():
    model = RegionModel(REGION).train()
    images = _region_images(size=8)
    out = insertion_deletion(model, images, torch.rand(3, 2, 2), None, step_fraction=0.25)
    assert model.training and not any(model.modes)
    assert torch.allclose(out["deletion_curve"][:, 0], model(images).softmax(1)[:, 0])  # predicted class 0


def test_insertion_deletion_bad_input():
    model, images, maps = RegionModel(REGION), _region_images(), _region_map()
    with pytest.raises(ValueError, match="maps"):
        insertion_deletion(model, images, maps[:2], 0)
    with pytest.raises(ValueError, match="maps"):
        insertion_deletion(model, images, maps[:, None], 0)
    with pytest.raises(ValueError, match="substrate"):
        insertion_deletion(model, images, maps, 0, substrate="noise")
    with pytest.raises(ValueError, match="kernel"):
        insertion_deletion(model, images, maps, 0, blur_kernel=4)
    with pytest.raises(ValueError, match="target"):
        insertion_deletion(model, images, maps, 5)
    with pytest.raises(ValueError, match="images"):
        insertion_deletion(model, images[0], maps, 0)


def test_insertion_deletion_metric_accumulates():
    model, images, maps = RegionModel(REGION), _region_images(b=4), _region_map(b=4)
    maps[2:] = -maps[2:]
    one = InsertionDeletion(model, step_fraction=0.1)
    one.update(images, maps, 0)
    many = InsertionDeletion(model, step_fraction=0.1)
    many.update(images[:1], maps[:1], 0)
    many.update(images[1:], maps[1:], 0)
    a, b = one.compute(), many.compute()
    ref = insertion_deletion(model, images, maps, 0, step_fraction=0.1)
    assert torch.allclose(a["insertion"], ref["insertion_auc"].mean())
    for key in ("insertion", "deletion", "overall"):
        assert torch.allclose(a[key], b[key])
    assert torch.allclose(a["overall"], a["insertion"] - a["deletion"])
    assert "model" not in dict(one.named_children()) and not any(
        k.startswith("model") for k in one.state_dict()
    )
    with pytest.raises(ValueError, match="step_fraction"):
        InsertionDeletion(model, step_fraction=1.5)


# ---------------------------------------------------------------------------------------------------------
# Pointing game
# ---------------------------------------------------------------------------------------------------------


def _peak_map(row: int, col: int, size: int = 10) -> torch.Tensor:
    m = torch.zeros(size, size)
    m[row, col] = 1.0
    return m


def test_pointing_game_hit_miss_tolerance():
    maps = _peak_map(2, 3)[None]  # maximum at pixel centre (x, y) = (3.5, 2.5)
    assert pointing_game_hits(maps, torch.tensor([[3.0, 2.0, 4.0, 3.0]]), (10, 10)).item()
    far = torch.tensor([[5.0, 5.0, 8.0, 8.0]])  # distance sqrt(1.5^2 + 2.5^2) = 2.915
    assert not pointing_game_hits(maps, far, (10, 10)).item()
    assert pointing_game_hits(maps, far, (10, 10), tolerance=3.0).item()
    assert not pointing_game_hits(maps, far, (10, 10), tolerance=2.9).item()
    # A low-resolution map is resized to the image: the peak of a 2x2 map's top-left cell stays top-left.
    low = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert pointing_game_hits(low, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), (8, 8)).item()
    assert not pointing_game_hits(low, torch.tensor([[4.0, 4.0, 8.0, 8.0]]), (8, 8)).item()


def test_pointing_game_multiple_boxes():
    maps = torch.stack([_peak_map(2, 3), _peak_map(8, 8)])
    boxes = torch.tensor(
        [[[6.0, 6.0, 9.0, 9.0], [3.0, 2.0, 4.0, 3.0]], [[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]]]
    )
    assert pointing_game_hits(maps, boxes, (10, 10)).tolist() == [True, False]
    mask = torch.tensor([[True, False], [True, True]])
    assert pointing_game_hits(maps, boxes, (10, 10), box_mask=mask).tolist() == [False, False]
    with pytest.raises(ValueError, match="at least one valid box"):
        pointing_game_hits(maps, boxes, (10, 10), box_mask=torch.tensor([[False, False], [True, True]]))


def test_pointing_game_bad_input():
    maps = _peak_map(2, 3)[None]
    box = torch.tensor([[3.0, 2.0, 4.0, 3.0]])
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game_hits(maps, box, (10, 10), tolerance=-1.0)
    with pytest.raises(ValueError, match="boxes"):
        pointing_game_hits(maps, box.repeat(2, 1), (10, 10))
    with pytest.raises(ValueError, match="maps"):
        pointing_game_hits(maps[0], box, (10, 10))
    with pytest.raises(ValueError, match="x1 >= x0"):
        pointing_game_hits(maps, torch.tensor([[4.0, 2.0, 3.0, 3.0]]), (10, 10))
    with pytest.raises(ValueError, match="tolerance"):
        PointingGame(3, tolerance=-1.0)
    with pytest.raises(ValueError, match="labels"):
        PointingGame(3).update(maps, box, torch.tensor([3]))


def test_pointing_game_metric_per_category_mean():
    hit, miss = _peak_map(2, 3), _peak_map(9, 9)
    maps = torch.stack([hit, hit, miss, hit, miss])
    boxes = torch.tensor([[3.0, 2.0, 4.0, 3.0]]).repeat(5, 1)
    labels = torch.tensor([0, 0, 1, 2, 2])  # class 0: 2/2, class 1: 0/1, class 2: 1/2, class 3: unseen
    macro = PointingGame(4, tolerance=0.0)
    macro.update(maps, boxes, labels)
    assert macro.compute().item() == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    micro = PointingGame(4, tolerance=0.0, average="micro")
    micro.update(maps, boxes, labels)
    assert micro.compute().item() == pytest.approx(3 / 5)
    per_class = PointingGame(4, tolerance=0.0, average="none")
    for i in range(5):  # several updates = one big update
        per_class.update(maps[i : i + 1], boxes[i : i + 1], labels[i : i + 1])
    out = per_class.compute()
    assert out[:3].tolist() == [1.0, 0.0, 0.5] and math.isnan(out[3].item())
    assert PointingGame(4).tolerance == POINTING_TOLERANCE == 0.0  # inside the box (Group-CAM §4.4)
    default = PointingGame(4)
    default.update(maps, boxes, labels)
    assert default.compute().item() == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    tolerant = PointingGame(4, tolerance=15.0)  # Zhang et al.'s 15 px turns the miss at (9.5, 9.5) into a hit
    tolerant.update(maps, boxes, labels)
    assert tolerant.compute().item() == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------
# Weakly-supervised localisation
# ---------------------------------------------------------------------------------------------------------


def test_connected_components_two_blobs_and_diagonals():
    mask = torch.zeros(6, 7, dtype=torch.bool)
    mask[0:2, 0:2] = True  # blob 1
    mask[3:6, 5] = True  # blob 2
    labels = connected_components(mask)
    assert set(labels[0:2, 0:2].flatten().tolist()) == {1}
    assert set(labels[3:6, 5].tolist()) == {2}
    assert int((labels > 0).sum()) == 7 and labels.max() == 2

    diagonal = torch.eye(4, dtype=torch.bool)
    diagonal[3, 0] = True
    assert connected_components(diagonal).tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [2, 0, 0, 1]]
    four = connected_components(diagonal, connectivity=4)
    assert sorted(four[diagonal].tolist()) == [1, 2, 3, 4, 5]


def test_connected_components_spiral_and_batch():
    # A snake whose first pixel is at the end of a long path: needs propagation all the way round.
    snake = torch.tensor(
        [
            [1, 1, 1, 1, 1],
            [0, 0, 0, 0, 1],
            [1, 1, 1, 0, 1],
            [1, 0, 0, 0, 1],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    empty = torch.zeros(5, 5, dtype=torch.bool)
    labels = connected_components(torch.stack([snake, empty, ~snake]))
    assert set(labels[0][snake].tolist()) == {1} and bool((labels[0][~snake] == 0).all())
    assert bool((labels[1] == 0).all())
    assert set(labels[2][~snake].tolist()) == {1}  # the complement is one winding piece


def test_connected_components_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(6, 13, 11, generator=g) > 0.55
    ours = connected_components(masks)
    for m, lab in zip(masks, ours):
        ref, count = ndimage.label(m.numpy(), structure=[[1, 1, 1], [1, 1, 1], [1, 1, 1]])
        assert lab.max().item() == count
        assert torch.equal(lab, torch.from_numpy(ref).long())  # both number in raster order


def test_largest_component_box_and_threshold():
    m = torch.zeros(10, 12)
    m[5:8, 2:6] = 0.5  # the largest segment: rows 5-7, cols 2-5
    m[0:2, 9:11] = 1.0  # smaller but brighter
    m[3, 0:12] = 0.1  # below 15% of the maximum: dropped, so it does not join the two
    box = largest_component_boxes(m[None])
    assert box.tolist() == [[2.0, 5.0, 6.0, 8.0]]
    assert largest_component_boxes(torch.zeros(1, 4, 6)).tolist() == [[0.0, 0.0, 6.0, 4.0]]
    with pytest.raises(ValueError, match="non-negative"):
        largest_component_boxes(-m[None])
    with pytest.raises(ValueError, match="threshold"):
        largest_component_boxes(m[None], threshold=1.5)


def test_box_iou_and_localization_error_by_hand():
    assert box_iou(
        torch.tensor([0.0, 0.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 3.0, 3.0])
    ).item() == pytest.approx(1 / 7)
    m = torch.zeros(10, 10)
    m[2:6, 2:6] = 1.0  # box (2, 2, 6, 6)
    maps = m.expand(3, 10, 10)
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0], [2.0, 2.0, 6.0, 6.0], [4.0, 4.0, 8.0, 8.0]])  # IoU 1, 1, 4/28
    labels = torch.tensor([1, 1, 1])
    predictions = torch.tensor([1, 0, 1])
    err = localization_error(maps, boxes, labels, predictions)
    assert err.tolist() == [False, True, True]  # right, wrong class, IoU 1/7 < 0.5
    assert localization_error(maps, boxes, labels, predictions, iou_threshold=0.1).tolist() == [
        False,
        True,
        False,
    ]


def test_top5_localization_error_and_metric():
    good, bad = torch.zeros(10, 10), torch.zeros(10, 10)
    good[2:6, 2:6] = 1.0
    bad[7:10, 7:10] = 1.0
    maps = torch.stack(
        [torch.stack([bad, good, good, bad, bad]), torch.stack([good] * 5), torch.stack([bad] * 5)]
    )
    predictions = torch.tensor([[4, 9, 3, 2, 1], [3, 0, 1, 2, 4], [3, 0, 1, 2, 4]])
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0]]).repeat(3, 1)
    labels = torch.tensor([3, 3, 3])
    correct = localization_correct(maps, boxes, labels, predictions)
    assert correct.tolist() == [[False, False, True, False, False], [True] + [False] * 4, [False] * 5]
    assert localization_error(maps[:, :1], boxes, labels, predictions[:, :1]).tolist() == [True, False, True]
    metric = LocalizationError(top_k=(1, 5))
    metric.update(maps[:2], boxes[:2], labels[:2], predictions[:2])
    metric.update(maps[2:], boxes[2:], labels[2:], predictions[2:])
    out = metric.compute()
    assert out["top1"].item() == pytest.approx(2 / 3) and out["top5"].item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="top_k"):
        metric.update(maps[:, :1], boxes, labels, predictions[:, :1])
    with pytest.raises(ValueError, match="predictions"):
        localization_error(maps, boxes, labels, predictions[:, :2])
    with pytest.raises(ValueError, match="boxes"):
        localization_error(maps, boxes[:2], labels, predictions)


# ---------------------------------------------------------------------------------------------------------
# Faithfulness (rank correlation)
# ---------------------------------------------------------------------------------------------------------


def test_rankdata_and_spearman_by_hand_with_ties():
    assert rankdata(torch.tensor([[3.0, 1.0, 3.0, 2.0]])).tolist() == [[3.5, 1.0, 3.5, 2.0]]
    rho = spearman(torch.tensor([[1.0, 2.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert rho.item() == pytest.approx(4.5 / math.sqrt(4.5 * 5.0), abs=1e-6)
    x = torch.rand(2, 5, 5)
    assert torch.allclose(spearman(x, x.exp()), torch.ones(2))
    assert torch.allclose(spearman(x, -x), -torch.ones(2))
    assert math.isnan(spearman(torch.ones(1, 4), torch.rand(1, 4)).item())


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(5)
    a = torch.randint(0, 5, (4, 6, 7), generator=g).float()  # many ties
    b = torch.randn(4, 6, 7, generator=g) + a
    ours = spearman(a, b)
    for i in range(4):
        ref = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0]
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)


def test_faithfulness_and_metric():
    g = torch.Generator().manual_seed(2)
    maps, occ = torch.rand(4, 6, 6, generator=g), torch.rand(4, 6, 6, generator=g)
    assert torch.allclose(faithfulness(maps, occ), spearman(maps, occ))
    with pytest.raises(ValueError, match="shape"):
        faithfulness(maps, occ[:, :5])
    with pytest.raises(ValueError, match="shape"):
        spearman(maps, occ[:3])
    metric = Faithfulness()
    metric.update(maps[:1], occ[:1])
    metric.update(maps[1:], occ[1:])
    metric.update(torch.ones(1, 6, 6), occ[:1])  # undefined: left out of the mean, counted
    assert metric.compute().item() == pytest.approx(spearman(maps, occ).mean().item(), abs=1e-6)
    assert metric.undefined.item() == 1


def test_occlusion_faithfulness_uses_the_papers_occlusion_map():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 3))
    images = torch.randn(2, 2, 8, 8)
    paper = Occlusion(model, window=3, stride=1, aggregate="centre").attribute(images, 1)
    blurred = Occlusion(model, window=3, stride=1, aggregate="mean").attribute(images, 1)
    rho = occlusion_faithfulness(model, paper, images, 1, window=3, stride=1)
    torch.testing.assert_close(rho, torch.ones(2))  # the reference itself: rank correlation 1
    rho_blurred = occlusion_faithfulness(model, blurred, images, 1, window=3, stride=1)
    torch.testing.assert_close(rho_blurred, faithfulness(blurred, paper))
    assert (rho_blurred < 1).all()
    low = resize_map(paper, (4, 4))  # low-resolution maps are resized to the images
    torch.testing.assert_close(
        occlusion_faithfulness(model, low, images, 1, window=3, stride=1),
        faithfulness(resize_map(low, (8, 8)), paper),
    )
    with pytest.raises(ValueError, match="maps must be"):
        occlusion_faithfulness(model, paper[:1], images, 1, window=3)


# ---------------------------------------------------------------------------------------------------------
# SSIM and the sanity check
# ---------------------------------------------------------------------------------------------------------


def test_ssim_matches_torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure

    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 1, 20, 24, generator=g)
    y = (x + 0.3 * torch.rand(3, 1, 20, 24, generator=g)).clamp(0, 1)
    ref = structural_similarity_index_measure(y, x, data_range=1.0, reduction="none")
    assert torch.allclose(ssim(y, x), ref, atol=1e-5)
    assert torch.allclose(ssim(y[:, 0], x[:, 0]), ref, atol=1e-5)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-6)
    rgb_x, rgb_y = torch.rand(2, 3, 16, 13, generator=g), torch.rand(2, 3, 16, 13, generator=g)
    rgb_ref = structural_similarity_index_measure(rgb_x, rgb_y, data_range=1.0, reduction="none")
    assert torch.allclose(ssim(rgb_x, rgb_y), rgb_ref, atol=1e-5)
    with pytest.raises(ValueError, match="too small"):
        ssim(x[..., :5, :8], y[..., :5, :8])
    with pytest.raises(ValueError, match="shape"):
        ssim(x, y[:2])


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


class TinyCAM(Attribution):
    """Grad-CAM-like maps at ``conv2`` (signed: no ReLU, so random nets do not give all-zero maps)."""

    def _attribute(self, images, target):
        store = {}
        hook = self.model.conv2.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
        try:
            with torch.enable_grad():
                logits = self.model(images)
                t = resolve_target(logits, target)
                (grads,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), store["a"])
        finally:
            hook.remove()
        cam = (grads.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(dim=1)
        return resize_map(cam, tuple(images.shape[-2:]))


def _trained_like_net() -> TinyNet:
    torch.manual_seed(11)
    net = TinyNet()
    with torch.no_grad():
        net.conv1.weight.mul_(3.0)
    return net.train()


def test_sanity_check_leaves_model_untouched_and_randomisation_decorrelates():
    net = _trained_like_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    results = sanity_check(net, TinyCAM, images, target=None, mode="cascading", seed=0)
    assert [r["layer"] for r in results] == ["fc", "conv2", "bn", "conv1"] == parameter_layers(net)
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert net.training and torch.equal(torch.get_rng_state(), rng)
    for r in results:
        assert r["spearman"].shape == (4,) and r["ssim"].shape == (4,)
    # Self-similarity is 1; with every layer random the maps no longer resemble the originals.
    assert results[-1]["spearman"].nanmean().item() < 0.5
    assert results[-1]["ssim"].mean().item() < 0.5

    independent = sanity_check(net, TinyCAM, images, layers=["fc", "bn", "conv1"], mode="independent")
    assert [r["layer"] for r in independent] == ["fc", "bn", "conv1"]
    # The BatchNorm is still at its initial values (weight 1, bias 0, running stats 0/1): re-initialising it
    # alone changes nothing, and the maps are identical to the originals.
    assert torch.allclose(independent[1]["spearman"], torch.ones(4)) and torch.allclose(
        independent[1]["ssim"], torch.ones(4)
    )
    assert independent[2]["spearman"].nanmean().item() < 0.5
    # The first layer is randomised identically (same seed) in both modes.
    assert torch.allclose(independent[0]["spearman"], results[0]["spearman"], equal_nan=True)
    assert torch.allclose(independent[0]["ssim"], results[0]["ssim"])


def test_sanity_check_bad_input():
    net, images = TinyNet(), torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="mode"):
        sanity_check(net, TinyCAM, images, mode="sideways")
    with pytest.raises(ValueError, match="owns parameters"):
        sanity_check(net, TinyCAM, images, layers=["nope"])
    with pytest.raises(ValueError, match="owns parameters"):
        sanity_check(net, TinyCAM, images, layers=[""])  # the root owns no parameters directly
