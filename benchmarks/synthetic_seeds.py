"""Baseline vs ICASC_Grad-CAM vs ICASC_A_ch on the embedded synthetic data, over several seeds (issue 3).

Trains the presets ``synthetic_baseline``, ``synthetic_icasc_gradcam`` and ``synthetic_icasc`` once per seed
with the train task, takes each run's best checkpoint (chosen on validation top-1, re-scored by the task), and
reports top-1, attention overlap (L_AS at the last layer, lower is better), pointing game and the KS margin
(the largest gap between the true-class and the most-confusing-class probability distributions, ICASC Fig. 9;
two-sided, so it reads as separation, higher is better, once top-1 is well above chance)
as mean ± sample standard deviation over the seeds. By default the numbers are those of the held-out test
split (``--split test``): the checkpoint is selected on validation, so validation numbers would be biased up.

Usage (the full benchmark: 9 runs of the default 12-epoch job, each about a minute on 2 CPU cores)::

    python benchmarks/synthetic_seeds.py
    python benchmarks/synthetic_seeds.py --seeds 0,1,2 --epochs 12 --per-seed
    python benchmarks/synthetic_seeds.py --methods baseline,icasc_ach data.train_size=1000   # Hydra overrides

Stdout carries the markdown table(s) and, as its last line, one JSON object with every run and the aggregates;
the train task's own output goes to stderr. Every finished run is added to ``<out>/results.json`` at once, and
a second call with the same ``--out`` and settings skips the runs already there (``--fresh`` starts over).

The runs are in-process (Hydra's compose API + :func:`icasc.tasks.train.run`), not ``python train.py``
subprocesses: ``run`` returns the best checkpoint's metrics as a dict (no parsing of printed tables), a run
costs no interpreter and torch start-up, and the smoke test can drive the same code. Each run is isolated
where it matters: the task re-seeds everything and builds a fresh datamodule, model and trainer. The seed
varies the initialisation, data order and augmentation; the synthetic dataset itself (``data.seed``) is the
same for every run, so the methods are compared on identical data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# method name -> the synthetic preset it runs (they differ in the loss / attention only)
METHODS: dict[str, str] = {
    "baseline": "synthetic_baseline",
    "icasc_gradcam": "synthetic_icasc_gradcam",
    "icasc_ach": "synthetic_icasc",
}
LABELS = {"baseline": "baseline", "icasc_gradcam": "ICASC_Grad-CAM", "icasc_ach": "ICASC_A_ch"}
# reported metric -> (logged name without the split prefix, shown as a percentage)
METRICS: dict[str, tuple[str, bool]] = {
    "top1": ("top1", True),
    "attention_overlap": ("attention_overlap", False),
    "pointing_game": ("pointing_game", True),
    "ks": ("ks", False),
}
HEADERS = {
    "top1": "top-1 (%)",
    "attention_overlap": "attention overlap ↓",
    "pointing_game": "pointing game (%)",
    "ks": "KS margin",
}
# benchmark runs need no export, figure or progress bar; the user's overrides come after these
RUN_DEFAULTS = ["export=false", "figure.enabled=false", "trainer.enable_progress_bar=false"]


def _comma_list(text: str, kind: type, name: str) -> list[Any]:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{name}: expected a comma-separated list, got {text!r}") from err
    if not values:
        raise argparse.ArgumentTypeError(f"{name}: the list is empty")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description="3-seed comparison of baseline, ICASC_Grad-CAM and ICASC_A_ch on the synthetic data",
    )
    parser.add_argument(
        "--seeds",
        type=lambda s: _comma_list(s, int, "--seeds"),
        default=[0, 1, 2],
        help="comma-separated seeds (default 0,1,2)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="trainer.max_epochs (default: the presets' 12)"
    )
    parser.add_argument(
        "--methods",
        type=lambda s: _comma_list(s, str, "--methods"),
        default=list(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)}",
    )
    parser.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="the split the table reports (test: held out from checkpoint selection)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "outputs" / "benchmarks" / "synthetic_seeds",
        help="run directories and results.json",
    )
    parser.add_argument("--per-seed", action="store_true", help="also print one row per run")
    parser.add_argument(
        "--fresh", action="store_true", help="ignore (and overwrite) an existing results.json"
    )
    parser.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides for every run, e.g. data.train_size=500"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has duplicates: {args.seeds}")
    return args


def run_overrides(method: str, seed: int, epochs: int | None, split: str, extra: Sequence[str]) -> list[str]:
    """The Hydra overrides of one run (without its output directory)."""
    overrides = [f"experiment={METHODS[method]}", f"seed={seed}", *RUN_DEFAULTS]
    if epochs is not None:
        overrides.append(f"trainer.max_epochs={epochs}")
    if split == "test":
        overrides.append("test=true")
    return [*overrides, *extra]


def train_once(overrides: Sequence[str], run_dir: Path) -> dict[str, float]:
    """Compose ``conf/train.yaml`` with ``overrides`` and run the train task; return its metrics."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import icasc.tasks  # noqa: F401  (registers the configs' resolvers)
    from icasc.tasks.train import run

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, f"paths.output_dir={run_dir}"])
    # the task's summary table goes to stderr: stdout is the benchmark's table and JSON
    with contextlib.redirect_stdout(sys.stderr):
        result = run(cfg)
    return {k: float(v) for k, v in result["metrics"].items() if isinstance(v, (int, float))}


def _pick(metrics: dict[str, float], split: str) -> dict[str, float | None]:
    return {name: metrics.get(f"{split}/{logged}") for name, (logged, _) in METRICS.items()}


def aggregate(runs: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Mean and sample standard deviation (n - 1) over seeds, per method and metric; std is None for n < 2."""
    summary: dict[str, dict[str, Any]] = {}
    for method in methods:
        rows = [r for r in runs if r["method"] == method]
        summary[method] = {"n": len(rows)}
        for name in METRICS:
            values = [r["metrics"][name] for r in rows if r["metrics"].get(name) is not None]
            summary[method][name] = {
                "mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "n": len(values),
            }
    return summary


def _fmt(value: float | None, percent: bool, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    text = f"{value * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def markdown_tables(
    summary: dict[str, dict[str, Any]], runs: Sequence[dict[str, Any]], split: str, per_seed: bool
) -> str:
    """The mean ± std table (and, with ``per_seed``, one row per run)."""
    head = f"| method ({split}, mean ± std over seeds) | " + " | ".join(HEADERS.values()) + " | seeds |"
    rule = "|---|" + "---:|" * (len(HEADERS) + 1)
    lines = [head, rule]
    for method, stats in summary.items():
        cells = [_fmt(stats[m]["mean"], METRICS[m][1], stats[m]["std"]) for m in METRICS]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + f" | {stats['n']} |")
    if per_seed:
        lines += ["", "| method | seed | " + " | ".join(HEADERS.values()) + " | wall (s) |"]
        lines.append("|---|---:|" + "---:|" * (len(HEADERS) + 1))
        for r in sorted(runs, key=lambda r: (list(summary).index(r["method"]), r["seed"])):
            cells = [_fmt(r["metrics"][m], METRICS[m][1]) for m in METRICS]
            lines.append(
                f"| {LABELS[r['method']]} | {r['seed']} | " + " | ".join(cells) + f" | {r['wall_s']:.0f} |"
            )
    return "\n".join(lines)


def _load_previous(path: Path, settings: dict[str, Any], fresh: bool) -> list[dict[str, Any]]:
    if fresh or not path.exists():
        return []
    previous = json.loads(path.read_text())
    if previous.get("settings") != settings:
        raise SystemExit(
            f"{path} was written with other settings ({previous.get('settings')}, now {settings}); "
            "pass --fresh to overwrite it or --out <another directory>"
        )
    return list(previous.get("runs", []))


def _save(path: Path, settings: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"settings": settings, "runs": runs}, indent=1))
    os.replace(tmp, path)  # a crash never leaves half a file


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the benchmark, print the table(s) and the JSON line; return the JSON object."""
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    settings = {"epochs": args.epochs, "split": args.split, "overrides": list(args.overrides)}
    runs = _load_previous(results_path, settings, args.fresh)
    done = {(r["method"], r["seed"]) for r in runs}
    for method in args.methods:
        for seed in args.seeds:
            if (method, seed) in done:
                print(f"[synthetic_seeds] {method} seed {seed}: in {results_path}, skipped", file=sys.stderr)
                continue
            run_dir = out / "runs" / method / f"seed{seed}"
            overrides = run_overrides(method, seed, args.epochs, args.split, args.overrides)
            print(f"[synthetic_seeds] {method} seed {seed}: {' '.join(overrides)}", file=sys.stderr)
            start = time.perf_counter()
            metrics = train_once(overrides, run_dir)
            runs.append(
                {
                    "method": method,
                    "preset": METHODS[method],
                    "seed": seed,
                    "metrics": _pick(metrics, args.split),
                    "all_metrics": metrics,
                    "wall_s": round(time.perf_counter() - start, 1),
                    "run_dir": str(run_dir),
                }
            )
            _save(results_path, settings, runs)
    selected = [r for r in runs if r["method"] in args.methods and r["seed"] in args.seeds]
    summary = aggregate(selected, args.methods)
    print(markdown_tables(summary, selected, args.split, args.per_seed))
    report = {
        "split": args.split,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "overrides": list(args.overrides),
        "results": str(results_path),
        "runs": selected,
        "summary": summary,
    }
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
