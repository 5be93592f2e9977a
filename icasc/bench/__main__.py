"""Speed measurements that print one JSON object as the last line of stdout.

    python -m icasc.bench step --backbone resnet18 --image-size 112 --batch-size 16
    python -m icasc.bench step --source timm --backbone convnext_atto --image-size 112 --batch-size 16
    python -m icasc.bench saliency --backbone resnet18 --image-size 224 --batch-size 8
    python -m icasc.bench augment --backbone resnet18 --image-size 112 --batch-size 16
    python -m icasc.bench param-saliency --backbone resnet18 --image-size 64 --batch-size 32
    python -m icasc.bench all [--device cuda] [--quick]

Two sides run interleaved in one process (alternating which goes first), after a warm-up; the report
gives medians. ``all`` runs each of the command lines above (``--quick``: tiny sizes, one round) and prints
``{"device", "step", "step_timm", "saliency", "augment", "param_saliency"}``, each the JSON of its command.
Never used as a timed test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from collections.abc import Sequence

import torch

from icasc.bench.augment import augment_benchmark
from icasc.bench.param_saliency import param_saliency_benchmark
from icasc.bench.saliency import saliency_benchmark
from icasc.bench.step import step_benchmark
from icasc.bench.timing import tf32_state

__all__ = ["ALL_FULL", "ALL_QUICK", "build_parser", "main", "run", "run_all"]

# What ``all`` runs: report key -> the command line (the README's); ``--device`` is appended to each.
ALL_FULL = {
    "step": "step --backbone resnet18 --image-size 112 --batch-size 16 --repeats 20",
    "step_timm": "step --source timm --backbone convnext_atto --image-size 112 --batch-size 16",
    "saliency": "saliency --backbone resnet18 --image-size 224 --batch-size 8",
    "augment": "augment --backbone resnet18 --image-size 112 --batch-size 16",
    "param_saliency": "param-saliency --backbone resnet18 --image-size 64 --batch-size 32",
}
_TINY = "--image-size 32 --batch-size 2 --num-classes 4 --repeats 1 --warmup 0"
ALL_QUICK = {
    "step": f"step --backbone tiny_cnn {_TINY}",
    "step_timm": f"step --source timm --backbone convnext_atto {_TINY}",
    "saliency": f"saliency --backbone tiny_cnn {_TINY} --smoothgrad-samples 2",
    "augment": f"augment --backbone tiny_cnn {_TINY} --groups 4",
    "param_saliency": f"param-saliency --backbone tiny_cnn {_TINY}",
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


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m icasc.bench`` parser: one subcommand per benchmark, plus ``all``."""
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
    every = sub.add_parser("all", help="every benchmark at the README's sizes, one JSON object")
    every.add_argument("--device", default="cpu")
    every.add_argument("--quick", action="store_true", help="tiny sizes, one round: a check, not a timing")
    return parser


def run(args: argparse.Namespace) -> dict[str, object]:
    """The report of the one benchmark that parsed ``args`` name (not ``all``)."""
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
        return augment_benchmark(**common, groups=args.groups, memory_budget_mb=args.memory_budget_mb)
    if args.what == "saliency":
        return saliency_benchmark(
            **common,
            methods=[m.strip() for m in args.methods.split(",") if m.strip()],
            smoothgrad_samples=args.smoothgrad_samples,
            dtype=getattr(torch, args.dtype),
        )
    if args.what == "param-saliency":
        return param_saliency_benchmark(
            **common,
            granularity=args.granularity,
            memory_mb=args.memory_mb,
            dtype=getattr(torch, args.dtype),
        )
    return step_benchmark(**common, attention=args.attention, source=args.source)


def run_all(device: str = "cpu", quick: bool = False) -> dict[str, object]:
    """Every benchmark of :data:`ALL_FULL` (``quick``: :data:`ALL_QUICK`) on ``device``, one after the other.

    Progress goes to stderr. ``step_timm`` is ``{"skipped": ...}`` when timm is not installed.

    Args:
        device: Torch device of every benchmark.
        quick: Tiny sizes and one round: checks that everything runs, measures nothing.

    Returns:
        ``{"device": device, "tf32": ..., "step": ..., "step_timm": ..., "saliency": ..., "augment": ...,
        "param_saliency": ...}``, each value the report its own command prints (``tf32``: see
        :func:`~icasc.bench.timing.tf32_state`).
    """
    parser = build_parser()
    report: dict[str, object] = {"device": device, "tf32": tf32_state(torch.device(device))}
    for key, line in (ALL_QUICK if quick else ALL_FULL).items():
        if "--source timm" in line and importlib.util.find_spec("timm") is None:
            report[key] = {"skipped": "timm is not installed (pip install timm)"}
            continue
        print(f"[bench all] {key}: {line} --device {device}", file=sys.stderr, flush=True)
        report[key] = run(parser.parse_args([*shlex.split(line), "--device", device]))
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Parse ``argv``, run the benchmark(s), print the report as one JSON line and return it."""
    args = build_parser().parse_args(argv)
    report = run_all(args.device, args.quick) if args.what == "all" else run(args)
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
