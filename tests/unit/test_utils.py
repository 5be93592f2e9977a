"""icasc.utils: the helpers shared across rooms, exactly."""

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

import icasc.utils
from icasc.utils import (
    check_choice,
    check_int,
    check_number,
    check_option,
    denormalize,
    eval_mode,
    is_int,
    is_number,
    resize_map,
    resolve_device,
)


def test_utils_imports_nothing_from_icasc():
    tree = ast.parse(Path(icasc.utils.__file__).read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m == "icasc" or m.startswith("icasc.") for m in modules)
    allowed = {"__future__", "numbers", "collections", "contextlib", "typing", "torch"}
    assert {m.split(".")[0] for m in modules} <= allowed


# ------------------------------------------------------------------------------------------------ eval_mode


def test_eval_mode_restores_each_modules_mode():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.BatchNorm1d(2))
    model[1].eval()  # mixed modes: only the dropout is in eval mode
    with eval_mode(model) as inside:
        assert inside is model
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_eval_mode_restores_on_error():
    model = nn.Sequential(nn.Linear(2, 2)).train()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert all(m.training for m in model.modules())


# ----------------------------------------------------------------------------------------------- resize_map


def test_resize_map_is_bilinear_without_aligned_corners():
    maps = torch.arange(2 * 3 * 5, dtype=torch.float32).view(2, 3, 5)
    out = resize_map(maps, (6, 10))
    assert out.shape == (2, 6, 10)
    expected = F.interpolate(maps[:, None], size=(6, 10), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out, expected)
    constant = torch.full((1, 2, 2), 3.0)
    torch.testing.assert_close(resize_map(constant, (5, 7)), torch.full((1, 5, 7), 3.0))


def test_resize_map_returns_the_input_at_its_own_size():
    maps = torch.rand(2, 4, 4)
    assert resize_map(maps, (4, 4)) is maps
    assert resize_map(maps, [4, 4]) is maps


# ---------------------------------------------------------------------------------------------- denormalize


def test_denormalize_inverts_normalize():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = torch.rand(2, 3, 5, 5)
    normalized = v2.Normalize(mean, std)(images)
    torch.testing.assert_close(denormalize(normalized, mean, std), images)


def test_denormalize_clamps_to_unit_range_and_keeps_dtype():
    out = denormalize(
        torch.tensor([-10.0, 10.0], dtype=torch.float64).view(1, 2, 1, 1), (0.5, 0.5), (1.0, 1.0)
    )
    assert out.dtype == torch.float64
    assert out.flatten().tolist() == [0.0, 1.0]


# ------------------------------------------------------------------------------------------- resolve_device


def test_resolve_device_auto_and_names(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "", "cuda:x"])
def test_resolve_device_refuses_unknown_names(bad):
    with pytest.raises(ValueError, match=rf"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got '{bad}'"):
        resolve_device(bad)


# ------------------------------------------------------------------------------------------- argument checks


def test_is_int_and_is_number_refuse_bools():
    assert is_int(3) and is_int(-1) and not is_int(True) and not is_int(2.0) and not is_int("3")
    assert is_number(3) and is_number(0.5) and not is_number(False) and not is_number("0.5")
    assert not is_int(None) and not is_number(None)


def test_check_option_raises_value_error_with_the_message():
    check_option(True, "never")
    with pytest.raises(ValueError, match=r"^the message$"):
        check_option(False, "the message")


@pytest.mark.parametrize("bad", [0, 2.5, "3", True, None])
def test_check_int_refuses_wrong_types_and_values_with_value_error(bad):
    with pytest.raises(ValueError, match=rf"^n must be an int >= 1, got {bad!r}$"):
        check_int("n", bad, 1)


def test_check_int_optional_and_upper_bound():
    check_int("n", 3, 1)
    check_int("n", None, 1, optional=True)
    check_int("n", 4, 1, high=4)
    with pytest.raises(ValueError, match=r"^n must be None or an int >= 1, got 0$"):
        check_int("n", 0, 1, optional=True)
    with pytest.raises(ValueError, match=r"^n must be an int in \[1, 4\], got 5$"):
        check_int("n", 5, 1, high=4)


def test_check_number_bounds():
    check_number("p", 0, 0, 1)
    check_number("p", 1.0, 0, 1)
    check_number("x", -3.5)
    check_number("p", None, 0, 1, optional=True)
    with pytest.raises(ValueError, match=r"^p must be a number in \[0, 1\], got 2$"):
        check_number("p", 2, 0, 1)
    with pytest.raises(ValueError, match=r"^f must be a number in \(0, 1\], got 0$"):
        check_number("f", 0, 0, 1, low_open=True)
    with pytest.raises(ValueError, match=r"^sigma must be a number > 0, got 0.0$"):
        check_number("sigma", 0.0, 0, low_open=True)
    with pytest.raises(ValueError, match=r"^x must be a number < 1, got 1$"):
        check_number("x", 1, high=1, high_open=True)
    with pytest.raises(ValueError, match=r"^x must be None or a number >= 0, got True$"):
        check_number("x", True, 0, optional=True)
    with pytest.raises(ValueError, match=r"^x must be a number, got 'a'$"):
        check_number("x", "a")
    with pytest.raises(ValueError, match=r"must be a number >= 0, got nan"):
        check_number("x", float("nan"), 0)


def test_check_choice_lists_the_choices():
    check_choice("mode", "a", ("a", "b"))
    with pytest.raises(ValueError, match=r"^mode must be one of 'a', 'b'; got 'c'$"):
        check_choice("mode", "c", ("a", "b"))
