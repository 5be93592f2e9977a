"""Statistics of a multi-seed comparison: mean ± sample std per run, paired differences against a reference.

Pure functions on plain numbers; a run's record is
``{"name": str, "seed": int, "metrics": {"test/top1": float, ...}}``.

Example:
    >>> mean_std([1.0, 2.0, 3.0])  # sample standard deviation (n - 1)
    {'mean': 2.0, 'std': 1.0, 'n': 3}
    >>> paired({0: 0.8, 1: 0.9}, {0: 0.7, 1: 0.7}, direction("top1"))["better_by_1sd"]
    True
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "compare",
    "direction",
    "mean_std",
    "paired",
    "split_metrics",
    "summarize",
]

# metrics where a larger value is better / worse; any other metric gets no verdict
HIGHER_IS_BETTER = frozenset({"top1", "top5", "pointing_game", "ks", "map", "auc"})
LOWER_IS_BETTER = frozenset(
    {"loss", "attention_overlap", "classification", "separation_inner", "separation_last", "consistency"}
)


def direction(metric: str) -> int | None:
    """+1 where a higher value of ``metric`` is better, -1 where lower is, ``None`` where unknown.

    Besides the named metrics, attention diagnostics that count hits (any name with ``in_box`` or
    ``pointing``, e.g. ``attn_last_true_in_box``) are higher-is-better, and any ``loss`` or ``overlap`` is
    lower-is-better; so are the faithfulness games (``insertion_auc`` higher, ``deletion_auc`` lower,
    e.g. the before/after report's ``groupcam_deletion_auc``); diagnostics of the most-confusing class's
    map (``_conf_``, e.g. ``attn_last_conf_in_box``) get no direction. Names may carry the split prefix
    (``test/top1``).
    """
    name = metric.rsplit("/", 1)[-1]
    if name in HIGHER_IS_BETTER:
        return 1
    if name in LOWER_IS_BETTER:
        return -1
    # where the most-confusing class's map lands is no measure of quality either way
    if "_conf_" in name:
        return None
    # hit rates before losses: "attn_overlap_in_box" counts where a map lands, so more is better
    if "in_box" in name or "pointing" in name or name.endswith("insertion_auc"):
        return 1
    if name.endswith("deletion_auc"):
        return -1
    if "loss" in name or "overlap" in name:
        return -1
    return None


def _finite(value: Any) -> bool:
    # bool is an int, but a flag is not a metric value
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def split_metrics(metrics: Mapping[str, Any], split: str) -> dict[str, float]:
    """The finite numbers among ``split``'s metrics, without the prefix (``"test/top1"`` -> ``"top1"``)."""
    prefix = f"{split}/"
    return {k[len(prefix) :]: float(v) for k, v in metrics.items() if k.startswith(prefix) and _finite(v)}


def mean_std(values: Iterable[float]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of the finite ``values``: sample std (n - 1), ``None`` below two values."""
    kept = [float(v) for v in values if _finite(v)]
    return {
        "mean": statistics.fmean(kept) if kept else None,
        "std": statistics.stdev(kept) if len(kept) > 1 else None,
        "n": len(kept),
    }


def paired(values: Mapping[int, float], reference: Mapping[int, float], sign: int | None) -> dict[str, Any]:
    """Differences ``values[s] - reference[s]`` over the seeds both have, and the verdict.

    Args:
        values: Seed -> the run's value (non-finite values count as missing).
        reference: Seed -> the reference run's value.
        sign: The metric's :func:`direction` (+1, -1 or ``None``).

    Returns:
        ``{"n", "seeds", "mean", "std", "t", "better_by_1sd", "worse_by_1sd"}``: mean and sample std of the
        differences, the paired t statistic ``mean / (std / sqrt(n))`` (``None`` for n < 2 or std 0), and
        whether the mean difference exceeds the std of the differences in the good (bad) direction; the
        verdicts are ``None`` where they cannot be told (n < 2 or no direction).
    """
    seeds = sorted(s for s in values if s in reference and _finite(values[s]) and _finite(reference[s]))
    diffs = [float(values[s]) - float(reference[s]) for s in seeds]
    stats = mean_std(diffs)
    mean, std, n = stats["mean"], stats["std"], stats["n"]
    t = mean / (std / math.sqrt(n)) if std else None
    better = worse = None
    if std is not None and sign is not None:
        better, worse = sign * mean > std, -sign * mean > std
    return {
        "n": n,
        "seeds": seeds,
        "mean": mean,
        "std": std,
        "t": t,
        "better_by_1sd": better,
        "worse_by_1sd": worse,
    }


def _by_run(records: Sequence[Mapping[str, Any]], split: str) -> dict[str, dict[int, dict[str, float]]]:
    runs: dict[str, dict[int, dict[str, float]]] = {}
    for record in records:
        runs.setdefault(record["name"], {})[int(record["seed"])] = split_metrics(record["metrics"], split)
    return runs


def summarize(
    records: Sequence[Mapping[str, Any]], names: Sequence[str], split: str
) -> dict[str, dict[str, Any]]:
    """Per run name: ``{"n": runs, "metrics": {metric: mean_std over its seeds}}`` of ``split``."""
    runs = _by_run(records, split)
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        seeds = runs.get(name, {})
        metrics = sorted({m for values in seeds.values() for m in values})
        summary[name] = {
            "n": len(seeds),
            "metrics": {m: mean_std(v[m] for v in seeds.values() if m in v) for m in metrics},
        }
    return summary


def compare(
    records: Sequence[Mapping[str, Any]], names: Sequence[str], reference: str, split: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per run name other than ``reference``, per metric both logged: :func:`paired` against the reference."""
    runs = _by_run(records, split)
    base = runs.get(reference, {})
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        if name == reference:
            continue
        seeds = runs.get(name, {})
        metrics = sorted(
            {m for values in seeds.values() for m in values} & {m for v in base.values() for m in v}
        )
        result[name] = {
            m: paired(
                {s: v[m] for s, v in seeds.items() if m in v},
                {s: v[m] for s, v in base.items() if m in v},
                direction(m),
            )
            for m in metrics
        }
    return result
