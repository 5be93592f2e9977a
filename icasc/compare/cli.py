"""``python -m icasc.compare``: the command line (see the package docstring for the what and why)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from icasc.compare import report as reports
from icasc.compare import runner, store
from icasc.compare.plan import (
    DEFAULT_REFERENCE,
    DEFAULT_RUNS,
    CompareError,
    RunSpec,
    check_overrides,
    check_plan,
    parse_run,
    presets,
)

__all__ = ["main", "parse_args"]

_EXAMPLES = """examples:
  python -m icasc.compare                                   # the synthetic benchmark: 3 presets x seeds 0,1,2
  python -m icasc.compare --run synthetic_baseline \\
      --run w05="experiment=synthetic_icasc model.loss.weights.consistency=0.5" \\
      --seeds 0,1,2,3,4 --reference synthetic_baseline --per-seed trainer.max_epochs=8
"""


def _comma_list(kind: type, option: str):
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"{option}: expected a comma-separated list, got {text!r}"
            ) from err
        if not values:
            raise argparse.ArgumentTypeError(f"{option}: the list is empty")
        return values

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; options and common overrides may be given in any order."""
    from icasc.tasks.compare import default_config_dir

    parser = argparse.ArgumentParser(
        prog="python -m icasc.compare",
        description=(
            "Train presets or override sets over several seeds, score each best checkpoint on the held-out "
            "split and compare them with a reference run (mean ± std, paired by seed)."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run",
        dest="runs",
        action="append",
        metavar="NAME=OVERRIDES|PRESET",
        help='a run: NAME="key=value ..." (Hydra overrides of conf/train.yaml) or an experiment preset name; '
        f"repeat for more (default: {' '.join(DEFAULT_RUNS)})",
    )
    parser.add_argument(
        "--seeds", type=_comma_list(int, "--seeds"), default=[0, 1, 2], help="comma-separated (default 0,1,2)"
    )
    parser.add_argument(
        "--reference",
        help=f"the run the others are compared with (default: {DEFAULT_REFERENCE} without --run, "
        "else the first run)",
    )
    parser.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="the split reported (default test: held out, the best checkpoint is chosen on val)",
    )
    parser.add_argument(
        "--metrics",
        type=_comma_list(str, "--metrics"),
        help="the columns shown, e.g. top1,top5,ks (default: top1,pointing_game,attention_overlap,ks and "
        "every attn_* metric); the JSON keeps every metric",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs") / "compare",
        help="run folders, results.json, summary.md/json (default outputs/compare); "
        "calling again with the same --out reuses the finished runs and resumes interrupted ones",
    )
    parser.add_argument("--per-seed", action="store_true", help="also show one row per run and seed")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="train the listed runs again, replacing their folders and records",
    )
    parser.add_argument(
        "--config-dir", type=Path, default=default_config_dir(), help="where train.yaml is (default: conf/)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides for every run, e.g. trainer.max_epochs=8 data.train_size=500",
    )
    # intermixed: common overrides may come before, between or after the options
    args = parser.parse_intermixed_args(argv)
    args.metrics = [m.split("/", 1)[-1] for m in args.metrics] if args.metrics else None
    return args


def _fail(message: str) -> NoReturn:
    print(f"python -m icasc.compare: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _plan(args: argparse.Namespace) -> tuple[list[RunSpec], str]:
    """The runs and the reference, checked (presets, names, reference, seeds, reserved keys); no Hydra yet."""
    config_dir = args.config_dir.resolve()
    if not (config_dir / "train.yaml").is_file():
        raise CompareError(f"--config-dir {config_dir} has no train.yaml")
    specs = [parse_run(text) for text in (args.runs or DEFAULT_RUNS)]
    reference = args.reference or (specs[0].name if args.runs else DEFAULT_REFERENCE)
    known = presets(config_dir)
    for spec in specs:
        check_overrides(f"--run {spec.name}", spec.overrides, known)
    check_overrides("common overrides", args.overrides, known)
    check_plan(specs, reference, args.seeds)
    return specs, reference


def _check_configs(jobs: Sequence[store.Job], config_dir: Path) -> None:
    """Compose every run's config once, so a bad override fails before hours of training."""
    from icasc.tasks import compare as compare_task

    checked: set[str] = set()
    problems = []
    for job in jobs:
        if job.spec.name in checked or job.action == "reuse":
            continue
        checked.add(job.spec.name)
        try:
            compare_task.check(config_dir, [*job.overrides, f"seed={job.seed}"], job.run_dir)
        except ValueError as err:
            problems.append(f"--run {job.spec.name}: its config does not compose: {err}")
    if problems:
        raise CompareError("\n".join(problems) + "\nnothing was run")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the comparison, print the tables and, last, the JSON line; return the JSON object.

    Raises:
        SystemExit: With status 2 and the reason on stderr when the comparison cannot run as asked (an
            unknown preset, a reference that is not a run, an override that does not compose, a run recorded
            in ``--out`` with other overrides); nothing has been trained then.
    """
    args = parse_args(argv)
    out, config_dir = args.out.resolve(), args.config_dir.resolve()
    try:
        specs, reference = _plan(args)
        records = store.load_results(out / "results.json")
        jobs = store.plan_jobs(out, specs, args.seeds, args.overrides, args.split, records, args.fresh)
        _check_configs(jobs, config_dir)
        if args.fresh:
            planned = {(s.name, seed) for s in specs for seed in args.seeds}
            records = [r for r in records if (r["name"], int(r["seed"])) not in planned]
        out.mkdir(parents=True, exist_ok=True)
        done = runner.execute(jobs, records, out, config_dir, args.split)
    except CompareError as err:
        _fail(str(err))
    names = [s.name for s in specs]
    report = reports.build(
        done,
        names,
        reference,
        args.split,
        args.seeds,
        {"runs": {s.name: list(s.overrides) for s in specs}, "common": list(args.overrides)},
    )
    report["out"], report["results"] = str(out), str(out / "results.json")
    text = reports.markdown(report, reports.columns(report, args.metrics), args.per_seed)
    (out / "summary.md").write_text(text + "\n")
    store.write_json(out / "summary.json", report)
    print(text)
    print(json.dumps(report), flush=True)
    return report
