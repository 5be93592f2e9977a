"""Speed of the saliency methods on a whole batch vs one image at a time (``python -m icasc.bench saliency``).

For every method the same code runs on the batch at once and in a one-image-at-a-time loop, interleaved
(:func:`icasc.bench.interleaved_medians`); the report gives images per second of both, their ratio, and
how far apart the two results are after per-sample min-max normalisation. For Group-CAM it also gives
``essential_ratio``: the batched time over the time of the passes Group-CAM cannot avoid (one
forward + backward of the batch to the layer, and the ``B * (G + 1)`` no-grad forwards at the same chunk
size), so a value near 1 means its bookkeeping is negligible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from icasc.attention.capture import FeatureCapture
from icasc.bench.timing import device_sync, interleaved_medians
from icasc.models import build_backbone, default_attention_layers
from icasc.saliency.base import Attribution, normalize
from icasc.saliency.groupcam import GroupCAM
from icasc.saliency.registry import SALIENCY_METHODS, build_method
from icasc.utils import eval_mode

__all__ = ["DEFAULT_METHODS", "groupcam_essential_passes", "saliency_benchmark"]

DEFAULT_METHODS = ("gradcam", "groupcam", "smoothgrad")


def groupcam_essential_passes(
    method: GroupCAM, images: torch.Tensor, target: torch.Tensor
) -> Callable[[], None]:
    """A callable running only the model passes that ``method.attribute(images, target)`` cannot avoid.

    That is one forward of the batch with the layer captured plus the backward from the target scores to
    the layer (skipped when ``method.gradient_weights`` is False), then no-grad forwards of
    ``B * (G + 1)`` images in chunks of ``method.chunk_size_for(images)``. The scored images are prepared
    once, outside the returned callable.

    Args:
        method: The Group-CAM instance being timed.
        images: ``[B, C, H, W]`` batch.
        target: ``[B]`` classes.

    Returns:
        A function of no arguments.
    """
    model, layer = method.model, method.layer
    n_rows = images.shape[0] * (method.groups + 1)
    scored = images.repeat(method.groups + 1, 1, 1, 1)
    chunk = method.chunk_size_for(images)

    def first_pass() -> None:  # its graph is freed on return, before the scoring forwards (as in GroupCAM)
        with FeatureCapture(model, [layer]) as capture:
            if method.gradient_weights:
                logits = model(images.detach().requires_grad_(True))
                torch.autograd.grad(logits.gather(1, target[:, None]).sum(), capture.features[layer])
            else:
                with torch.no_grad():
                    model(images)

    def run() -> None:
        with eval_mode(model):
            first_pass()
            with torch.no_grad():
                for rows in method.chunks(n_rows, chunk):
                    model(scored[rows])

    return run


def _per_image(method: Attribution, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``method.attribute`` one image at a time, concatenated."""
    return torch.cat([method.attribute(images[i : i + 1], target[i : i + 1]) for i in range(images.shape[0])])


def saliency_benchmark(
    backbone: str = "resnet18",
    image_size: int = 224,
    batch_size: int = 8,
    num_classes: int = 1000,
    methods: Sequence[str] = DEFAULT_METHODS,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    smoothgrad_samples: int = 50,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, float]]:
    """Batched vs one-image-at-a-time throughput of saliency methods on a random-init backbone.

    The backbone comes from :func:`icasc.models.build_backbone` (random weights); layer methods explain
    its default last attention layer (:func:`icasc.models.default_attention_layers`). Both sides get the
    same images and the same explicit random targets.

    Args:
        backbone: Registry name of the backbone.
        image_size: Side of the square random images.
        batch_size: Images per batch ``B``.
        num_classes: Classes of the backbone's head.
        methods: Names from :data:`icasc.saliency.registry.SALIENCY_METHODS`.
        repeats: Timed rounds (median reported).
        warmup: Untimed rounds first.
        device: Torch device.
        smoothgrad_samples: Noise samples of SmoothGrad (SmoothGrad paper: 50).
        seed: Seed of the weights, images and targets.
        dtype: Floating dtype of the model and images. On a random-init network Group-CAM's scores are
            tiny differences of probabilities, and float32 rounding (the convolution kernels differ with
            the batch size) puts ``max_abs_diff`` near 1e-5; ``torch.float64`` separates rounding from
            real disagreement.
        options: Extra constructor keyword arguments per method name.

    Returns:
        ``{method: {"batched_ips", "per_image_ips", "speedup", "max_abs_diff", "batched_s", "per_image_s"}}``
        where ``*_ips`` are images per second, ``speedup = batched_ips / per_image_ips`` and
        ``max_abs_diff = max |normalize(batched) - normalize(per_image)|``; ``"groupcam"`` also has
        ``"essential_s"``, ``"essential_ratio"`` (batched time over the essential passes' time) and
        ``"chunk_size"``.

    Raises:
        ValueError: An unknown method name or a non-positive sample count.
    """
    unknown = [m for m in methods if m not in SALIENCY_METHODS]
    if unknown:
        raise ValueError(f"unknown saliency methods {unknown}; choose from {', '.join(SALIENCY_METHODS)}")
    if smoothgrad_samples < 1:
        raise ValueError(f"smoothgrad_samples must be >= 1, got {smoothgrad_samples}")
    torch.manual_seed(seed)
    dev = torch.device(device)
    model: nn.Module = build_backbone(backbone, num_classes).to(device=dev, dtype=dtype).eval()
    layer = default_attention_layers(model)[1]
    images = torch.randn(batch_size, 3, image_size, image_size, device=dev, dtype=dtype)
    target = torch.randint(0, num_classes, (batch_size,), device=dev)
    sync = device_sync(dev)
    per_method = {"smoothgrad": {"n_samples": smoothgrad_samples}}
    for name, extra in (options or {}).items():
        per_method[name] = {**per_method.get(name, {}), **extra}

    report: dict[str, dict[str, float]] = {}
    for name in methods:
        method = build_method(name, model, layer, per_method.get(name))
        outputs: dict[str, torch.Tensor] = {}

        def batched(method: Attribution = method, outputs: dict = outputs) -> None:
            outputs["batched"] = method.attribute(images, target)

        def per_image(method: Attribution = method, outputs: dict = outputs) -> None:
            outputs["per_image"] = _per_image(method, images, target)

        sides: dict[str, Callable[[], None]] = {"batched": batched, "per_image": per_image}
        if isinstance(method, GroupCAM):
            sides["essential"] = groupcam_essential_passes(method, images, target)
        med = interleaved_medians(sides, repeats, warmup, sync)
        diff = (normalize(outputs["batched"]) - normalize(outputs["per_image"])).abs().max()
        entry = {
            "batched_ips": batch_size / med["batched"],
            "per_image_ips": batch_size / med["per_image"],
            "speedup": med["per_image"] / med["batched"],
            "max_abs_diff": float(diff),
            "batched_s": med["batched"],
            "per_image_s": med["per_image"],
        }
        if isinstance(method, GroupCAM):
            entry["essential_s"] = med["essential"]
            entry["essential_ratio"] = med["batched"] / med["essential"]
            entry["chunk_size"] = method.chunk_size_for(images)
        report[name] = entry
    return report
