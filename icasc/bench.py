"""Speed measurements that print one JSON object as the last line of stdout.

    python -m icasc.bench step --backbone resnet18 --image-size 112 --batch-size 16
    python -m icasc.bench step --source timm --backbone convnext_atto --image-size 112 --batch-size 16
    python -m icasc.bench saliency --backbone resnet18 --image-size 224 --batch-size 8
    python -m icasc.bench augment --backbone resnet18 --image-size 112 --batch-size 16
    python -m icasc.bench param-saliency --backbone resnet18 --image-size 64 --batch-size 32

Two sides run interleaved in one process (alternating which goes first), after a warm-up; the report
gives medians. Never used as a timed test.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from icasc.losses.icasc import ICASCLoss
from icasc.models.module import ICASCModule

__all__ = ["interleaved_medians", "main", "step_benchmark"]


def interleaved_medians(
    sides: dict[str, Callable[[], None]], repeats: int, warmup: int, sync: Callable[[], None] | None = None
) -> dict[str, float]:
    """Median seconds per call of each side, run interleaved (order alternating every round)."""
    sync = sync or (lambda: None)
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            sync()
            start = time.perf_counter()
            sides[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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
    ``ratio`` and ``ratio_first`` are the ICASC step over the baseline step. ``source="timm"`` takes
    ``backbone`` from timm (e.g. ``"convnext_atto"``) instead of icasc's registry.
    """
    torch.manual_seed(seed)
    dev = torch.device(device)
    off = {"separation_inner": 0.0, "separation_last": 0.0, "consistency": 0.0}
    spec: str | Mapping[str, Any] = backbone if source is None else {"name": backbone, "source": source}
    base = ICASCModule(spec, num_classes, loss=ICASCLoss(weights=off), attention=attention).to(dev)
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

    def make_step(module: ICASCModule) -> Callable[[], None]:
        module.train()
        opt = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            total, _, _ = module.compute_loss(images, targets)
            total.backward()
            opt.step()

        return step

    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    sides = {"baseline": make_step(base), "icasc": make_step(icasc), "icasc_first": make_step(first)}
    med = interleaved_medians(sides, repeats, warmup, sync)
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
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _add_common(
    parser: argparse.ArgumentParser,
    image_size: int,
    batch_size: int,
    num_classes: int,
    repeats: int,
    warmup: int,
) -> argparse.ArgumentParser:
    """The arguments every benchmark takes, with that benchmark's defaults."""
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=image_size)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--num-classes", type=int, default=num_classes)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m icasc.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    step = _add_common(
        sub.add_parser("step", help="training step: baseline vs ICASC (all terms), second and first order"),
        image_size=112,
        batch_size=16,
        num_classes=100,
        repeats=10,
        warmup=2,
    )
    step.add_argument("--attention", default="ach", choices=["ach", "gradcam"])
    step.add_argument(
        "--source", default=None, choices=["timm"], help="look --backbone up in timm (e.g. convnext_atto)"
    )
    sal = _add_common(
        sub.add_parser("saliency", help="saliency methods: whole batch vs one image at a time"),
        image_size=224,
        batch_size=8,
        num_classes=1000,
        repeats=3,
        warmup=1,
    )
    sal.add_argument(
        "--methods", default="gradcam,groupcam,smoothgrad", help="comma-separated names, e.g. gradcam,ach"
    )
    sal.add_argument("--smoothgrad-samples", type=int, default=50)
    sal.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    aug = _add_common(
        sub.add_parser(
            "augment", help="Group-CAM augmentation: callback vs plain step vs one image at a time"
        ),
        image_size=112,
        batch_size=16,
        num_classes=100,
        repeats=10,
        warmup=2,
    )
    aug.add_argument("--groups", type=int, default=16)
    aug.add_argument(
        "--memory-budget-mb", type=float, default=None, help="scoring chunk budget (default: per device)"
    )
    psal = _add_common(
        sub.add_parser(
            "param-saliency", help="parameter saliency profiles: one batched pass vs a batch-size-1 loop"
        ),
        image_size=64,
        batch_size=32,
        num_classes=100,
        repeats=3,
        warmup=1,
    )
    psal.add_argument("--granularity", default="filter", choices=["filter", "unit"])
    psal.add_argument(
        "--memory-mb", type=float, default=None, help="per-layer chunk budget of the batched path"
    )
    psal.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    common = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_classes": args.num_classes,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "device": args.device,
        "seed": args.seed,
    }
    if args.what == "augment":
        # Imported here: icasc.callbacks.benchmark imports interleaved_medians from this module.
        from icasc.callbacks.benchmark import augment_benchmark

        report = augment_benchmark(**common, groups=args.groups, memory_budget_mb=args.memory_budget_mb)
    elif args.what == "saliency":
        # Imported here: icasc.saliency.benchmark imports interleaved_medians from this module.
        from icasc.saliency.benchmark import saliency_benchmark

        report = saliency_benchmark(
            **common,
            methods=[m.strip() for m in args.methods.split(",") if m.strip()],
            smoothgrad_samples=args.smoothgrad_samples,
            dtype=getattr(torch, args.dtype),
        )
    elif args.what == "param-saliency":
        # Imported here: icasc.saliency.parameter.benchmark imports interleaved_medians from this module.
        from icasc.saliency.parameter.benchmark import param_saliency_benchmark

        report = param_saliency_benchmark(
            **common,
            granularity=args.granularity,
            memory_mb=args.memory_mb,
            dtype=getattr(torch, args.dtype),
        )
    else:
        report = step_benchmark(**common, attention=args.attention, source=args.source)
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
