"""Deletion and insertion games (Group-CAM §4.3, following the RISE protocol).

Pixels are ranked by descending saliency. *Deletion* replaces the most salient pixels first with a substrate
(a heavily blurred copy of the image by default) until nothing of the original is left; a good map makes the
target-class probability fall fast (low AUC). *Insertion* starts from the substrate and puts the original
pixels back in the same order; a good map makes the probability rise fast (high AUC). The over-all score is
``AUC(insertion) - AUC(deletion)``.

Step size: Group-CAM changes 3.6% of the pixels per step, i.e. ``224 * 8`` pixels of a ``224 x 224`` image.
Here ``step_fraction`` of the pixels, rounded to a whole number of pixels (at least one), change per step,
the last step takes what is left, and ``S = ceil(H * W / pixels_per_step)`` steps follow the start: at
``224 x 224`` and 0.036 that is 1806 pixels per step and 28 steps (29 points per curve). The curves are
integrated with the trapezoidal rule over the fraction of pixels changed, ``x in [0, 1]``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn
from torchmetrics import Metric

from icasc.saliency.base import TargetLike, check_images, resolve_target
from icasc.saliency.blur import gaussian_blur
from icasc.utils import eval_mode, is_int, resize_map

__all__ = ["InsertionDeletion", "insertion_deletion", "step_counts"]

Substrate = Literal["blur", "zeros"]


def step_counts(num_pixels: int, step_fraction: float = 0.036) -> torch.Tensor:
    """Number of pixels changed after each step ``0..S`` (``[S + 1]`` int64, from 0 to ``num_pixels``).

    Args:
        num_pixels: ``H * W``.
        step_fraction: Fraction of the pixels changed per step, in ``(0, 1]`` (Group-CAM: 0.036).
    """
    if not 0.0 < step_fraction <= 1.0:
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
    if num_pixels < 1:
        raise ValueError(f"num_pixels must be positive, got {num_pixels}")
    per_step = max(1, round(step_fraction * num_pixels))
    steps = math.ceil(num_pixels / per_step)
    return (torch.arange(steps + 1) * per_step).clamp(max=num_pixels)


def _make_substrate(images: torch.Tensor, substrate: str, kernel_size: int, sigma: float) -> torch.Tensor:
    if substrate == "blur":
        return gaussian_blur(images, kernel_size, sigma)
    if substrate == "zeros":
        return torch.zeros_like(images)
    raise ValueError(f"substrate must be 'blur' or 'zeros', got {substrate!r}")


def _scores(model: nn.Module, batch: torch.Tensor, expected: int) -> torch.Tensor:
    logits = model(batch)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != expected:
        raise ValueError(
            f"model must return [N, num_classes] logits, got {_shape(logits)} for {expected} images"
        )
    return logits.float()


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


@torch.no_grad()
def insertion_deletion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    target: TargetLike = None,
    step_fraction: float = 0.036,
    substrate: Substrate = "blur",
    blur_kernel: int = 51,
    blur_sigma: float = 50.0,
    chunk_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Deletion and insertion curves and AUCs of saliency maps (Group-CAM §4.3).

    All ``B * 2S`` perturbed images (the original and the substrate are shared by both games) are scored in
    no-grad forwards of at most ``chunk_size`` images, built chunk by chunk, with the model in eval mode (its
    modes are restored afterwards). Pixel order: descending saliency, ties in raster order.

    Args:
        model: Classifier returning ``[N, C]`` logits.
        images: ``[B, C, H, W]`` normalised images.
        maps: ``[B, h, w]`` saliency maps (resized bilinearly to ``H x W`` when smaller).
        target: Class per image: ``None`` (the model's prediction on the original image), an int or ``[B]``.
        step_fraction: Fraction of the pixels changed per step, in ``(0, 1]`` (see the module docstring).
        substrate: ``"blur"`` (Gaussian blur of the image) or ``"zeros"`` (zeros in the model's input space).
        blur_kernel: Blur kernel size, clipped to the image
            (:func:`~icasc.saliency.blur.clip_kernel_size`).
        blur_sigma: Blur standard deviation in pixels.
        chunk_size: Images per forward pass.

    Returns:
        ``insertion_auc``, ``deletion_auc`` and ``overall`` ``[B]``; ``insertion_curve`` and
        ``deletion_curve`` ``[B, S + 1]`` softmax probabilities of the target class (start and end
        included; deletion ends and insertion starts at the substrate); ``fraction`` ``[S + 1]``, the share
        of pixels changed at each point.
    """
    check_images(images)
    b, _, h, w = images.shape
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3 or maps.shape[0] != b:
        raise ValueError(f"maps must be [B, h, w] with B = {b}, got {_shape(maps)}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or inf")
    if not is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    counts = step_counts(h * w, step_fraction).to(images.device)
    steps = counts.numel() - 1
    base = _make_substrate(images, substrate, blur_kernel, blur_sigma)
    saliency = resize_map(maps.detach().float().to(images.device), (h, w)).flatten(1)
    order = saliency.sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=images.device).expand(b, -1))

    with eval_mode(model):
        logits = torch.cat([_scores(model, c, c.shape[0]) for c in images.split(chunk_size)])
        tgt = resolve_target(logits, target)
        p_original = logits.softmax(dim=1).gather(1, tgt[:, None]).squeeze(1)
        # Jobs (image, game, step): deletion steps 1..S-1 and insertion steps 0..S-1 (step 0 = the substrate).
        image_idx = torch.arange(b, device=images.device).repeat_interleave(2 * steps - 1)
        insertion = torch.cat([torch.zeros(steps - 1), torch.ones(steps)]).bool().to(images.device).repeat(b)
        step = torch.cat([torch.arange(1, steps), torch.arange(steps)]).to(images.device).repeat(b)
        probs = []
        for start in range(0, image_idx.numel(), chunk_size):
            i, ins, k = (t[start : start + chunk_size] for t in (image_idx, insertion, step))
            changed = rank[i] < counts[k, None]
            from_base = (changed ^ ins[:, None]).view(-1, 1, h, w)
            batch = torch.where(from_base, base[i], images[i])
            p = _scores(model, batch, i.numel()).softmax(dim=1)
            probs.append(p.gather(1, tgt[i, None]).squeeze(1))

    probs = torch.cat(probs).view(b, 2 * steps - 1)
    p_substrate = probs[:, steps - 1]
    deletion_curve = torch.cat([p_original[:, None], probs[:, : steps - 1], p_substrate[:, None]], dim=1)
    insertion_curve = torch.cat([probs[:, steps - 1 :], p_original[:, None]], dim=1)
    fraction = counts.float() / (h * w)
    insertion_auc = torch.trapezoid(insertion_curve, x=fraction, dim=1)
    deletion_auc = torch.trapezoid(deletion_curve, x=fraction, dim=1)
    return {
        "insertion_auc": insertion_auc,
        "deletion_auc": deletion_auc,
        "overall": insertion_auc - deletion_auc,
        "insertion_curve": insertion_curve,
        "deletion_curve": deletion_curve,
        "fraction": fraction,
    }


class InsertionDeletion(Metric):
    """Mean insertion AUC, deletion AUC and over-all score over all images seen (Group-CAM §4.3, Table 1).

    The model is held by reference, not registered as a sub-module: it is not moved by ``.to()`` nor saved in
    the metric's ``state_dict``. Sums and counts are summed across processes.

    Args:
        model: The classifier the maps explain.
        step_fraction, substrate, blur_kernel, blur_sigma, chunk_size: As :func:`insertion_deletion`.
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    ``compute()`` returns ``{"insertion": ..., "deletion": ..., "overall": ...}``.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        model: nn.Module,
        step_fraction: float = 0.036,
        substrate: Substrate = "blur",
        blur_kernel: int = 51,
        blur_sigma: float = 50.0,
        chunk_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        step_counts(1, step_fraction)  # validates step_fraction
        if substrate not in ("blur", "zeros"):
            raise ValueError(f"substrate must be 'blur' or 'zeros', got {substrate!r}")
        object.__setattr__(self, "model", model)  # a reference, not a sub-module
        self.options = {
            "step_fraction": step_fraction,
            "substrate": substrate,
            "blur_kernel": blur_kernel,
            "blur_sigma": blur_sigma,
            "chunk_size": chunk_size,
        }
        self.add_state("insertion_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("deletion_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor, maps: torch.Tensor, target: TargetLike = None) -> None:
        """Play both games on a batch; arguments as :func:`insertion_deletion`."""
        out = insertion_deletion(self.model, images, maps, target, **self.options)
        self.insertion_sum += out["insertion_auc"].double().sum().to(self.insertion_sum.device)
        self.deletion_sum += out["deletion_auc"].double().sum().to(self.deletion_sum.device)
        self.count += out["insertion_auc"].numel()

    def compute(self) -> dict[str, torch.Tensor]:
        """Mean AUCs (NaN before any image)."""
        insertion = (self.insertion_sum / self.count).float()
        deletion = (self.deletion_sum / self.count).float()
        return {"insertion": insertion, "deletion": deletion, "overall": insertion - deletion}
