"""Small helpers shared across icasc's rooms: eval mode, map resizing, denormalisation, devices, arguments.

This module sits below every room: it imports torch and the standard library only, never ``icasc``.

Argument checks follow one rule: **a bad argument raises** ``ValueError``, **whatever is wrong with it**:
its type (``2.5`` or ``"3"`` for a count), its range, or a value outside a set of choices. Options mostly
arrive from YAML configs and the command line, where a wrong type is one more wrong value, so a caller
catches one exception type for one kind of mistake. ``TypeError`` is left to objects of the wrong kind
that flow through the code (a batch that is not a dict, a layer output that is not a tensor). A ``bool`` is
never an int or a number here (``True`` is no count); ints are any ``numbers.Integral``, numbers any
``numbers.Real``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "check_choice",
    "check_int",
    "check_number",
    "check_option",
    "denormalize",
    "eval_mode",
    "is_int",
    "is_number",
    "resize_map",
    "resolve_device",
]


# ------------------------------------------------------------------------------------------ model and maps


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every sub-module in eval mode; restore each one's previous mode on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def resize_map(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[B, h, w]`` maps to ``size`` (``align_corners=False``); identity if equal."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo per-channel normalisation: ``[B,3,H,W]`` back to ``[0, 1]`` for display."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else the CPU; any other device name or ``torch.device`` as is.

    Raises:
        ValueError: ``device`` names no device type torch knows (e.g. ``"gpu"``).
    """
    if isinstance(device, torch.device):
        return device
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r} ({error})"
        ) from error


# ------------------------------------------------------------------------------------------ argument checks


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (``numbers.Integral``) and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (``numbers.Real``: int or float) and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_option(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``: for a check whose condition or message is the caller's."""
    if not ok:
        raise ValueError(message)


def check_int(name: str, value: Any, low: int, optional: bool = False, high: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is an int in ``[low, high]`` (or ``None`` when ``optional``).

    The message names the argument and the valid values: ``"n must be an int >= 1, got 0"``, ``"n must be
    None or an int >= 1, got 0"``, ``"n must be an int in [1, 4], got 5"``.
    """
    if optional and value is None:
        return
    if not is_int(value) or value < low or (high is not None and value > high):
        kind = "None or an int" if optional else "an int"
        valid = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {kind} {valid}, got {value!r}")


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a number within the bounds (or ``None`` when ``optional``).

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``; ``None`` leaves that side open-ended.
    NaN is refused whenever a bound is given. Message e.g. ``"p must be a number in [0, 1], got 2"``,
    ``"sigma must be a number > 0, got 0"``.
    """
    if optional and value is None:
        return
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    kind = "None or a number" if optional else "a number"
    if low is not None and high is not None:
        valid = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        valid = f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        valid = f" {'<' if high_open else '<='} {high:g}"
    else:
        valid = ""
    raise ValueError(f"{name} must be {kind}{valid}, got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (the message lists them)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
