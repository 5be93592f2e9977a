"""The comparison's report: one JSON object, and Markdown tables of the columns asked for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from icasc.compare import stats

__all__ = ["DEFAULT_COLUMNS", "build", "columns", "markdown"]

# shown unless --metrics says otherwise, with every attention diagnostic (attn_*) the runs logged
DEFAULT_COLUMNS = ("top1", "pointing_game", "attention_overlap", "ks")
# fractions shown as percentages (differences in percentage points)
_PERCENT = frozenset({"top1", "top5", "pointing_game", "groupcam_pointing_game"})


def build(
    records: Sequence[dict[str, Any]],
    names: Sequence[str],
    reference: str,
    split: str,
    seeds: Sequence[int],
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """The JSON report: settings, every record, mean ± std of every metric and the paired comparison.

    Args:
        records: The runs' records (see :mod:`icasc.compare.store`).
        names: The run names, in table order.
        reference: The run the others are compared with.
        split: The split the numbers are of.
        seeds: The seeds asked for.
        overrides: ``{"runs": {name: [...]}, "common": [...]}``, as given.
    """
    return {
        "split": split,
        "seeds": list(seeds),
        "reference": reference,
        "runs": list(names),
        "overrides": overrides,
        "summary": stats.summarize(records, names, split),
        "paired": stats.compare(records, names, reference, split),
        "records": list(records),
    }


def columns(report: dict[str, Any], asked: Sequence[str] | None = None) -> list[str]:
    """The metrics to show: ``asked``, or the defaults plus every ``attn_*`` metric of the runs."""
    if asked:
        return list(asked)
    logged = {m for run in report["summary"].values() for m in run["metrics"]}
    return [*DEFAULT_COLUMNS, *sorted(m for m in logged if m.startswith("attn_"))]


def _header(metric: str) -> str:
    arrow = {1: " ↑", -1: " ↓"}.get(stats.direction(metric) or 0, "")
    return f"{metric}{' (%)' if metric in _PERCENT else ''}{arrow}"


def _number(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    scale, digits = (100.0, 2) if metric in _PERCENT else (1.0, 4)
    return f"{value * scale:{'+' if signed else ''}.{digits}f}"


def _mean_std(cell: dict[str, Any] | None, metric: str, signed: bool = False) -> str:
    if not cell or cell["mean"] is None:
        return "n/a"
    text = _number(cell["mean"], metric, signed)
    return text if cell["std"] is None else f"{text} ± {_number(cell['std'], metric)}"


def _verdict(cell: dict[str, Any]) -> str:
    if cell["better_by_1sd"]:
        return " **better**"
    if cell["worse_by_1sd"]:
        return " **worse**"
    return ""


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> list[str]:
    rule = "|" + "---|" * text_columns + "---:|" * (len(head) - text_columns)
    return ["| " + " | ".join(head) + " |", rule, *("| " + " | ".join(row) + " |" for row in rows)]


def markdown(report: dict[str, Any], shown: Sequence[str], per_seed: bool = False) -> str:
    """The mean ± std table, the paired table against the reference and (``per_seed``) one row per run."""
    split, reference = report["split"], report["reference"]
    heads = [_header(m) for m in shown]
    rows = []
    for name in report["runs"]:
        run = report["summary"][name]
        label = f"{name} (reference)" if name == reference else name
        rows.append([label, *(_mean_std(run["metrics"].get(m), m) for m in shown), str(run["n"])])
    lines = _table([f"run ({split}, mean ± std over seeds)", *heads, "seeds"], rows)

    rows = []
    for name, metrics in report["paired"].items():
        cells = []
        for m in shown:
            cell = metrics.get(m)
            cells.append(
                "n/a" if not cell or cell["n"] == 0 else _mean_std(cell, m, signed=True) + _verdict(cell)
            )
        pairs = max((c["n"] for c in metrics.values()), default=0)
        rows.append([name, *cells, str(pairs)])
    if rows:
        lines += [
            "",
            *_table([f"{split}: run − {reference} (paired by seed, mean ± std)", *heads, "pairs"], rows),
            "",
            "**better** / **worse**: the mean paired difference exceeds its standard deviation in the "
            "metric's good / bad direction (↑ higher is better, ↓ lower is better; needs two or more seeds).",
        ]
    if per_seed:
        rows = []
        order = {name: i for i, name in enumerate(report["runs"])}
        for r in sorted(report["records"], key=lambda r: (order.get(r["name"], len(order)), r["seed"])):
            values = stats.split_metrics(r["metrics"], split)
            cells = [_number(values.get(m), m) for m in shown]
            rows.append([r["name"], str(r["seed"]), *cells, f"{r['wall_s']:.0f}", r["how"]])
        lines += ["", *_table(["run", "seed", *heads, "wall (s)", "how"], rows)]
    return "\n".join(lines)
