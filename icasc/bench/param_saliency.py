"""Batched vs batch-size-1 per-sample parameter saliency (``python -m icasc.bench param-saliency``).

Both paths compute the same ``[B, n_filters]`` profiles of the same images and targets on a random-init
backbone in eval mode; they run interleaved (:func:`icasc.bench.interleaved_medians`) and the report gives
per-sample-profile throughput of each, their ratio and how far apart the profiles are.
"""

from __future__ import annotations

import torch

from icasc.bench.timing import device_sync, interleaved_medians, run_info
from icasc.models import build_backbone
from icasc.saliency.parameter.grads import default_memory_mb
from icasc.saliency.parameter.saliency import ParameterSaliency

__all__ = ["param_saliency_benchmark", "relative_difference"]


def relative_difference(
    profiles: torch.Tensor, reference: torch.Tensor, layer_slices: dict[str, slice]
) -> float:
    """``max |a - b| / max |b|`` with the maxima taken per sample and per layer, then the worst case.

    Each layer has its own gradient scale, so the difference is measured against that layer's largest
    entry for that sample (an all-zero layer in both counts as 0). An element-wise ratio would report
    float32 rounding in entries many orders of magnitude below the rest of their layer (on ResNet-18
    such entries differ by ~1e-3 relatively, while both paths agree to ~1e-12 in float64).
    """
    worst = 0.0
    for cols in layer_slices.values():
        diff = (profiles[:, cols] - reference[:, cols]).abs().amax(dim=1)
        scale = reference[:, cols].abs().amax(dim=1)
        ratio = torch.where(scale > 0, diff / scale.clamp_min(torch.finfo(scale.dtype).tiny), diff)
        worst = max(worst, float(ratio.max()))
    return worst


def param_saliency_benchmark(
    backbone: str = "resnet18",
    image_size: int = 64,
    batch_size: int = 32,
    num_classes: int = 100,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    seed: int = 0,
    granularity: str = "filter",
    memory_mb: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, object]:
    """Per-sample-profile throughput of the batched path and of the batch-size-1 loop.

    Args:
        backbone: Registry name (random weights; BatchNorm running statistics are randomised so that
            eval mode is not the identity).
        image_size: Side of the square random images.
        batch_size: Images per batch ``B``.
        num_classes: Classes of the head.
        repeats: Timed rounds (median reported).
        warmup: Untimed rounds first.
        device: Torch device.
        seed: Seed of weights, statistics, images and targets.
        granularity: ``"filter"`` or ``"unit"``.
        memory_mb: Chunk budget of the batched path (``None``: the default for the device).
        dtype: Model and image dtype (``torch.float64`` separates rounding from disagreement).

    Returns:
        ``{"batched_ips", "loop_ips", "speedup", "max_rel_diff", ...}`` where ``*_ips`` are per-sample
        profiles per second, ``speedup = batched_ips / loop_ips`` and ``max_rel_diff`` is
        :func:`relative_difference` of the two paths' profiles.
    """
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = build_backbone(backbone, num_classes).to(device=dev, dtype=dtype).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    images = torch.randn(batch_size, 3, image_size, image_size, device=dev, dtype=dtype)
    targets = torch.randint(0, num_classes, (batch_size,), device=dev)
    batched = ParameterSaliency(model, granularity=granularity, memory_mb=memory_mb)
    loop = ParameterSaliency(model, granularity=granularity, method="loop")
    out: dict[str, torch.Tensor] = {}
    sides = {
        "batched": lambda: out.__setitem__("batched", batched.profile(images, targets)),
        "loop": lambda: out.__setitem__("loop", loop.profile(images, targets)),
    }
    med = interleaved_medians(sides, repeats, warmup, device_sync(dev))
    return {
        "batched_ips": batch_size / med["batched"],
        "loop_ips": batch_size / med["loop"],
        "speedup": med["loop"] / med["batched"],
        "max_rel_diff": relative_difference(out["batched"], out["loop"], batched.layer_slices),
        "batched_s": med["batched"],
        "loop_s": med["loop"],
        "n_filters": batched.n_filters,
        "granularity": granularity,
        "memory_mb": memory_mb if memory_mb is not None else default_memory_mb(dev),
        "backbone": backbone,
        "image_size": image_size,
        "batch_size": batch_size,
        "repeats": repeats,
        "dtype": str(dtype).removeprefix("torch."),
        **run_info(dev),
    }
