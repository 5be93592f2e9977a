"""Model-parameter randomisation sanity check (Group-CAM §4.5, after Adebayo et al., "Sanity Checks for
Saliency Maps").

A saliency method that explains the model must change when the model's weights are destroyed. Layers are
re-initialised from the output towards the input, either *cascading* (cumulatively: after layer ``i`` all
layers from the output down to ``i`` are random) or *independently* (one layer at a time, the others as
trained). After each randomisation the maps are recomputed and compared with the original maps by Spearman
rank correlation and SSIM. Low similarity means the method is sensitive to the parameters, as it should be.

Everything happens on deep copies: the caller's model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from icasc.metrics.faithfulness import spearman
from icasc.saliency.base import TargetLike, check_images, normalize, resolve_target
from icasc.utils import eval_mode

__all__ = ["parameter_layers", "sanity_check", "ssim"]


class _Attributes(Protocol):
    def attribute(self, images: torch.Tensor, target: TargetLike = None) -> torch.Tensor: ...


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    kernel_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per sample (Wang et al. 2004) with a Gaussian window.

    ``torchmetrics.functional.image.structural_similarity_index_measure`` with ``reduction="none"``: local
    means, variances and covariance use a ``kernel_size x kernel_size`` Gaussian window of std ``sigma`` on
    reflect-padded inputs; the SSIM map (one value per pixel) is averaged per sample, over channels too.
    ``C1 = (k1 * data_range)^2``, ``C2 = (k2 * data_range)^2``. Computed in float32.

    Args:
        x: ``[B, H, W]`` or ``[B, C, H, W]``.
        y: Same shape as ``x``.
        data_range: Range of the values (1 for maps normalised to ``[0, 1]``).
        kernel_size: Odd window size (standard: 11). torchmetrics derives the Gaussian window's size from
            ``sigma`` (``2 * int(3.5 * sigma + 0.5) + 1``, 11 for ``sigma=1.5``), so it must equal that size.
        sigma: Window std (standard: 1.5).
        k1: Luminance constant.
        k2: Contrast constant.

    Returns:
        ``[B]`` float32.

    Raises:
        ValueError: Shapes differ or are not 3-D/4-D, bad window parameters, or images smaller than the
            window.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape:
        raise ValueError(f"ssim needs two tensors of one shape, got {_shape(x)} and {_shape(y)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"ssim expects [B, H, W] or [B, C, H, W], got {tuple(x.shape)}")
    if kernel_size < 1 or kernel_size % 2 == 0 or sigma <= 0 or data_range <= 0:
        raise ValueError("ssim needs an odd kernel_size, sigma > 0 and data_range > 0")
    window = 2 * int(3.5 * sigma + 0.5) + 1
    if kernel_size != window:
        raise ValueError(
            f"ssim's Gaussian window for sigma={sigma} has {window} taps (torchmetrics' rule), "
            f"got kernel_size={kernel_size}"
        )
    pad = kernel_size // 2
    if min(x.shape[-2:]) <= pad:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are too small for the {kernel_size}px SSIM window")
    if x.dim() == 3:
        x, y = x.unsqueeze(1), y.unsqueeze(1)
    index = structural_similarity_index_measure(
        x.detach().float(),
        y.detach().to(device=x.device, dtype=torch.float32),
        gaussian_kernel=True,
        sigma=sigma,
        data_range=data_range,
        k1=k1,
        k2=k2,
        reduction="none",
    )
    return index.float()


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, in reverse ``named_modules()`` order.

    For models whose modules are registered in forward order this runs from the output towards the input.
    """
    return [
        name for name, m in reversed(list(model.named_modules())) if any(True for _ in m.parameters(False))
    ]


def _reinitialise(module: nn.Module, name: str, seed: int) -> None:
    reset = getattr(module, "reset_parameters", None)
    if not callable(reset):
        raise ValueError(f"layer {name!r} ({type(module).__name__}) has no reset_parameters(); pass layers=")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        reset()


def _maps(
    factory: Callable[[nn.Module], _Attributes], model: nn.Module, images: torch.Tensor, target: torch.Tensor
):
    maps = factory(model).attribute(images, target)
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"the method must return [B, H, W] maps, got {getattr(maps, 'shape', type(maps))}")
    return normalize(maps.detach().float().abs())


def sanity_check(
    model: nn.Module,
    method_factory: Callable[[nn.Module], _Attributes],
    images: torch.Tensor,
    target: TargetLike = None,
    layers: Sequence[str] | None = None,
    mode: Literal["cascading", "independent"] = "cascading",
    seed: int = 0,
) -> list[dict[str, object]]:
    """Model-parameter randomisation test (Group-CAM §4.5, Fig. 6).

    Layer ``i`` of ``layers`` is re-initialised with its own ``reset_parameters()`` under the seed
    ``seed + i`` (the caller's global RNG state is preserved), so both modes draw the same random weights for
    a layer. The class explained is fixed to ``target`` resolved on the original model (its prediction for
    ``None``), so every randomised map explains the same class. Maps are compared by absolute value, min-max
    normalised to ``[0, 1]``.

    Args:
        model: The trained classifier (left untouched: the test runs on deep copies).
        method_factory: ``model -> Attribution``, e.g. ``lambda m: GradCAM(m, layer="layer4")``.
        images: ``[B, C, H, W]`` normalised images (at least 11 px per side for SSIM).
        target: ``None``, an int, or a ``[B]`` tensor of classes.
        layers: Dotted module names, in randomisation order; default: :func:`parameter_layers`.
        mode: ``"cascading"`` or ``"independent"``.
        seed: Base seed of the re-initialisations.

    Returns:
        One dict per layer: ``{"layer": name, "spearman": [B], "ssim": [B]}``; Spearman is NaN for an image
        whose randomised (or original) map is constant.
    """
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    check_images(images)
    reference = copy.deepcopy(model)
    modules = dict(reference.named_modules())
    names = parameter_layers(reference) if layers is None else list(layers)
    if not names:
        raise ValueError("no layers to randomise")
    for name in names:
        if name not in modules or not any(True for _ in modules[name].parameters(False)):
            raise ValueError(f"{name!r} is not a module of the model that owns parameters")
    with eval_mode(reference), torch.no_grad():
        target = resolve_target(reference(images), target)
    original = _maps(method_factory, reference, images, target)

    results: list[dict[str, object]] = []
    cascade = copy.deepcopy(model) if mode == "cascading" else None
    for i, name in enumerate(names):
        randomised = cascade if cascade is not None else copy.deepcopy(model)
        _reinitialise(randomised.get_submodule(name), name, seed + i)
        maps = _maps(method_factory, randomised, images, target)
        results.append({"layer": name, "spearman": spearman(original, maps), "ssim": ssim(original, maps)})
    return results
