"""Training-step speed of the baseline and of ICASC (``python -m icasc.bench step``)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

import torch

from icasc.bench.timing import baseline_loss, device_sync, interleaved_medians, run_info, sgd_step
from icasc.losses.icasc import ICASCLoss
from icasc.models.module import ICASCModule

__all__ = ["step_benchmark"]


def step_benchmark(
    backbone: str = "resnet18",
    image_size: int = 112,
    batch_size: int = 16,
    num_classes: int = 100,
    attention: str = "ach",
    repeats: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    seed: int = 0,
    source: str | None = None,
) -> dict[str, object]:
    """Training-step time (forward, loss, backward, SGD step) of the baseline and of ICASC (all terms).

    ICASC is timed in both orders (``order="second"``: exact, ``"first"``: constant channel weights), all
    three sides interleaved in one process, starting from the same weights and seeing the same batch.

    Args:
        backbone: Registered backbone name, or a timm name with ``source="timm"`` (random weights).
        image_size: Side of the square random images.
        batch_size: Images per batch.
        num_classes: Classes of the head; the targets are random.
        attention: Attention method of ICASC (``"ach"`` or ``"gradcam"``).
        repeats: Timed rounds (median reported).
        warmup: Untimed rounds first.
        device: Torch device.
        seed: Seed of weights and data.
        source: ``"timm"`` looks ``backbone`` up in timm (e.g. ``"convnext_atto"``), not icasc's registry.

    Returns:
        ``baseline_s``, ``icasc_s``, ``icasc_first_s``, ``ratio`` and ``ratio_first`` (the ICASC step over
        the baseline step), the attention ``layers`` and the settings.
    """
    torch.manual_seed(seed)
    dev = torch.device(device)
    spec: str | Mapping[str, Any] = backbone if source is None else {"name": backbone, "source": source}
    base = ICASCModule(spec, num_classes, loss=baseline_loss(), attention=attention).to(dev)
    icasc = ICASCModule(copy.deepcopy(base.backbone), num_classes, loss=ICASCLoss(), attention=attention)
    icasc.to(dev)
    first = ICASCModule(
        copy.deepcopy(base.backbone),
        num_classes,
        loss=ICASCLoss(),
        attention={"method": attention, "order": "first"},
    ).to(dev)
    images = torch.randn(batch_size, 3, image_size, image_size, device=dev)
    targets = torch.randint(0, num_classes, (batch_size,), device=dev)
    modules = {"baseline": base, "icasc": icasc, "icasc_first": first}
    sides = {name: functools.partial(sgd_step(m.train(), targets), images) for name, m in modules.items()}
    med = interleaved_medians(sides, repeats, warmup, device_sync(dev))
    return {
        "baseline_s": med["baseline"],
        "icasc_s": med["icasc"],
        "icasc_first_s": med["icasc_first"],
        "ratio": med["icasc"] / med["baseline"],
        "ratio_first": med["icasc_first"] / med["baseline"],
        "backbone": backbone,
        "source": source,
        "image_size": image_size,
        "batch_size": batch_size,
        "attention": attention,
        "layers": dict(icasc.attention.layers),
        "repeats": repeats,
        **run_info(dev),
    }
