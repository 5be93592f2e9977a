"""Attention diagnostics per map (mass inside the box, peakedness, pointing game) on hand-built maps."""

from __future__ import annotations

import math

import pytest
import torch

from icasc.metrics import attention_stats, mass_in_box, peakedness, pointing_game_hits


def _spot(h: int, w: int, row: int, col: int, value: float = 1.0) -> torch.Tensor:
    maps = torch.zeros(1, h, w)
    maps[0, row, col] = value
    return maps


def test_mass_in_box_is_one_inside_zero_outside_and_a_known_fraction():
    maps = torch.zeros(1, 8, 8)
    maps[0, 2:4, 2:4] = 1.0  # mass on pixels (rows 2-3, cols 2-3): the square [2, 4) x [2, 4)
    inside = torch.tensor([[1.0, 1.0, 5.0, 5.0]])
    outside = torch.tensor([[5.0, 5.0, 8.0, 8.0]])
    assert mass_in_box(maps, inside, (8, 8)).tolist() == [1.0]
    assert mass_in_box(maps, outside, (8, 8)).tolist() == [0.0]
    # the band [0, 8) x [2, 3) holds row 2 of the square: half of the mass
    assert mass_in_box(maps, torch.tensor([[0.0, 2.0, 8.0, 3.0]]), (8, 8)).tolist() == [0.5]
    # the box [2, 3) x [2, 3) holds one of the four pixels
    assert mass_in_box(maps, torch.tensor([[2.0, 2.0, 3.0, 3.0]]), (8, 8)).tolist() == [0.25]
    # fractional edges count the covered share of a pixel: half of pixel column 3 -> (2 + 1) / 4 of the mass
    assert mass_in_box(maps, torch.tensor([[0.0, 0.0, 3.5, 8.0]]), (8, 8)).item() == pytest.approx(0.75)
    # boxes beyond the image count nothing there
    assert mass_in_box(maps, torch.tensor([[-10.0, -10.0, 30.0, 30.0]]), (8, 8)).tolist() == [1.0]


def test_mass_in_box_reads_the_map_at_input_resolution_like_the_pointing_game():
    # A 2x2 map on a 4x4 image: the top-left map pixel covers input pixels [0, 2) x [0, 2) after the resize.
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    full = torch.nn.functional.interpolate(maps[:, None], size=(4, 4), mode="bilinear")[:, 0]
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    expected = full[0, :2, :2].sum() / full.sum()
    assert mass_in_box(maps, box, (4, 4)).item() == pytest.approx(float(expected))
    assert pointing_game_hits(maps, box, (4, 4)).item()  # the maximum is inside that box too


def test_mass_in_box_is_scale_free_finite_on_empty_maps_and_ignores_negative_values():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 7, 7, generator=g)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [3.0, 5.0, 14.0, 9.5], [1.5, 1.5, 2.5, 2.5]])
    base = mass_in_box(maps, boxes, (14, 14))
    for scale in (1e-30, 1e-3, 1e6):
        torch.testing.assert_close(mass_in_box(maps * scale, boxes, (14, 14)), base)
    assert ((base >= 0) & (base <= 1)).all()
    assert mass_in_box(torch.zeros(2, 4, 4), boxes[:2], (8, 8)).tolist() == [0.0, 0.0]
    negative = _spot(4, 4, 0, 0) - 5.0 * _spot(4, 4, 3, 3)  # the negative pixel is no mass
    assert mass_in_box(negative, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), (4, 4)).tolist() == [1.0]


def test_mass_in_box_refuses_bad_input():
    maps = torch.ones(1, 4, 4)
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        mass_in_box(maps[0], torch.tensor([[0.0, 0.0, 1.0, 1.0]]), (4, 4))
    with pytest.raises(ValueError, match="one box per map"):
        mass_in_box(maps, torch.zeros(1, 2, 4), (4, 4))
    with pytest.raises(ValueError, match="x1 >= x0"):
        mass_in_box(maps, torch.tensor([[3.0, 0.0, 1.0, 1.0]]), (4, 4))
    with pytest.raises(ValueError, match="B = 1"):
        mass_in_box(maps, torch.zeros(2, 4), (4, 4))


def test_peakedness_is_zero_for_uniform_one_for_a_single_pixel_and_known_in_between():
    assert peakedness(torch.ones(1, 5, 5)).item() == pytest.approx(0.0, abs=1e-6)
    assert peakedness(_spot(5, 5, 2, 3)).item() == pytest.approx(1.0)
    half = torch.zeros(1, 4, 4)
    half[0, :, :2] = 1.0  # uniform over 8 of 16 pixels: H = log 8, so 1 - log 8 / log 16 = 1/4
    assert peakedness(half).item() == pytest.approx(1 - math.log(8) / math.log(16))
    two = torch.zeros(1, 2, 2)
    two[0, 0, 0], two[0, 1, 1] = 3.0, 1.0  # p = (3/4, 1/4): H = -(3/4 log 3/4 + 1/4 log 1/4)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert peakedness(two).item() == pytest.approx(1 - entropy / math.log(4))


def test_peakedness_is_scale_free_finite_on_empty_maps_and_bounded():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(4, 6, 9, generator=g) ** 4
    base = peakedness(maps)
    for scale in (1e-30, 1e-3, 1e8):
        torch.testing.assert_close(peakedness(maps * scale), base)
    assert ((base > 0) & (base < 1)).all()
    empty = peakedness(torch.zeros(3, 4, 4))
    assert torch.isfinite(empty).all() and empty.tolist() == [0.0, 0.0, 0.0]
    assert peakedness(torch.full((1, 3, 3), -1.0)).tolist() == [0.0]  # nothing positive: no mass
    assert peakedness(torch.ones(2, 1, 1)).tolist() == [0.0, 0.0]  # one pixel: no spatial preference
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        peakedness(torch.ones(4, 4))


def test_attention_stats_uses_the_one_pointing_game_definition():
    maps = torch.zeros(2, 10, 10)
    maps[0, 2, 3] = 1.0  # maximum at the pixel centre (3.5, 2.5)
    maps[1, 8, 8] = 1.0
    boxes = torch.tensor([[4.0, 2.0, 6.0, 4.0], [7.0, 7.0, 10.0, 10.0]])  # the first 0.5 px to the right
    stats = attention_stats(maps, (10, 10), boxes)
    assert set(stats) == {"peak", "in_box", "pointing"}
    assert stats["pointing"].tolist() == pointing_game_hits(maps, boxes, (10, 10)).float().tolist()
    assert stats["pointing"].tolist() == [0.0, 1.0]
    assert stats["in_box"].tolist() == [0.0, 1.0] and stats["peak"].tolist() == pytest.approx([1.0, 1.0])
    tolerant = attention_stats(maps, (10, 10), boxes, tolerance=15)
    assert tolerant["pointing"].tolist() == [1.0, 1.0]
    assert set(attention_stats(maps, (10, 10))) == {"peak"}  # no boxes: only what needs none


def test_attention_overlap_is_one_yardstick_whatever_the_maps_scale() -> None:
    from icasc.losses.functional import attention_separation, target_mask
    from icasc.metrics import attention_overlap

    torch.manual_seed(0)
    a_t, a_c = torch.rand(3, 6, 6), torch.rand(3, 6, 6)
    t, c = a_t / a_t.amax(dim=(1, 2), keepdim=True), a_c / a_c.amax(dim=(1, 2), keepdim=True)
    expected = attention_separation(t, c, target_mask(t))
    torch.testing.assert_close(attention_overlap(a_t, a_c), expected)
    torch.testing.assert_close(attention_overlap(7.0 * a_t, 0.1 * a_c), expected)  # raw scales do not matter
    assert attention_overlap(a_t, torch.zeros_like(a_c)).item() == 0.0
