"""icasc.compare.stats and report: mean ± std, paired differences and verdicts on hand-made numbers."""

from __future__ import annotations

import math

import pytest

from icasc.compare import report, stats


@pytest.mark.parametrize(
    "metric, expected",
    [
        ("top1", 1),
        ("test/top5", 1),
        ("pointing_game", 1),
        ("ks", 1),
        ("map", 1),
        ("auc", 1),
        ("attn_last_true_in_box", 1),
        ("val/attn_inner_true_pointing", 1),
        ("attention_overlap", -1),
        ("loss", -1),
        ("separation_last", -1),
        ("consistency", -1),
        ("attn_last_conf_in_box", None),  # where the confusing class's map lands: no better or worse
        ("ks_threshold", None),
        ("attn_last_true_peak", None),
    ],
)
def test_direction(metric, expected):
    assert stats.direction(metric) == expected


def test_mean_std_is_the_sample_std_and_skips_non_finite_values():
    assert stats.mean_std([1.0, 2.0, 3.0, 4.0]) == {
        "mean": 2.5,
        "std": pytest.approx(math.sqrt(5 / 3), rel=1e-15),
        "n": 4,
    }
    assert stats.mean_std([1.0, math.nan, 3.0, math.inf]) == {"mean": 2.0, "std": math.sqrt(2.0), "n": 2}
    assert stats.mean_std([0.25]) == {"mean": 0.25, "std": None, "n": 1}
    assert stats.mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_paired_uses_the_seeds_both_runs_have():
    run = {0: 1.0, 1: 0.75, 2: 0.5, 3: 0.9}
    ref = {1: 0.5, 2: 0.5, 3: 0.5, 4: 0.1}
    # seeds 1, 2, 3: differences 0.25, 0.0, 0.4
    result = stats.paired(run, ref, 1)
    assert result["seeds"] == [1, 2, 3] and result["n"] == 3
    assert result["mean"] == pytest.approx(0.65 / 3, abs=1e-15)


def test_paired_mean_std_t_and_verdict_higher_is_better():
    # differences 0.5, 0.25, 0.75: mean 0.5, sample std 0.25, t = 0.5 / (0.25 / sqrt(3)) = 2 sqrt(3)
    run, ref = {0: 1.0, 1: 0.75, 2: 1.25}, {0: 0.5, 1: 0.5, 2: 0.5}
    result = stats.paired(run, ref, 1)
    assert result["mean"] == 0.5 and result["std"] == 0.25
    assert result["t"] == pytest.approx(2 * math.sqrt(3), rel=1e-15)
    assert result["better_by_1sd"] is True and result["worse_by_1sd"] is False
    # the same differences of a lower-is-better metric are worse, of a metric without direction: no verdict
    lower = stats.paired(run, ref, -1)
    assert lower["better_by_1sd"] is False and lower["worse_by_1sd"] is True
    unknown = stats.paired(run, ref, None)
    assert (
        unknown["better_by_1sd"] is None and unknown["worse_by_1sd"] is None and unknown["t"] == result["t"]
    )


def test_paired_verdict_needs_the_mean_to_exceed_one_std():
    # differences 0.25, 0.0, 0.5: mean 0.25 equals the std 0.25 -> not better (strictly greater is asked)
    result = stats.paired({0: 0.75, 1: 0.5, 2: 1.0}, {0: 0.5, 1: 0.5, 2: 0.5}, 1)
    assert result["mean"] == 0.25 and result["std"] == 0.25
    assert result["t"] == pytest.approx(math.sqrt(3), rel=1e-15)
    assert result["better_by_1sd"] is False and result["worse_by_1sd"] is False


def test_paired_edge_cases():
    # one pair: a mean, no spread, no t and no verdict
    one = stats.paired({0: 0.75}, {0: 0.5, 1: 0.5}, 1)
    assert one == {
        "n": 1,
        "seeds": [0],
        "mean": 0.25,
        "std": None,
        "t": None,
        "better_by_1sd": None,
        "worse_by_1sd": None,
    }
    # identical differences: std 0, t undefined (None, never inf), any gain is more than one std
    same = stats.paired({0: 0.75, 1: 0.75}, {0: 0.5, 1: 0.5}, 1)
    assert same["std"] == 0.0 and same["t"] is None and same["better_by_1sd"] is True
    # no common seed, and NaN counted as missing
    assert stats.paired({0: 1.0}, {1: 1.0}, 1)["n"] == 0
    assert stats.paired({0: math.nan, 1: 1.0}, {0: 1.0, 1: 0.5}, 1)["seeds"] == [1]


RECORDS = [
    {"name": "base", "seed": 0, "metrics": {"test/top1": 0.5, "test/loss": 1.0, "val/top1": 0.9}},
    {"name": "base", "seed": 1, "metrics": {"test/top1": 0.5, "test/loss": 1.5, "val/top1": 0.9}},
    {"name": "new", "seed": 0, "metrics": {"test/top1": 0.75, "test/loss": 0.5, "test/attn_x": 2.0}},
    {"name": "new", "seed": 1, "metrics": {"test/top1": 1.0, "test/loss": 0.5, "test/attn_x": 4.0}},
]


def test_split_metrics_keeps_the_finite_numbers_of_the_split():
    metrics = {"test/top1": 0.5, "test/ks": math.nan, "test/flag": True, "val/top1": 0.9, "test/name": "x"}
    assert stats.split_metrics(metrics, "test") == {"top1": 0.5}


def test_summarize_and_compare():
    summary = stats.summarize(RECORDS, ["base", "new"], "test")
    assert summary["base"] == {
        "n": 2,
        "metrics": {
            "loss": {"mean": 1.25, "std": math.sqrt(0.125), "n": 2},
            "top1": {"mean": 0.5, "std": 0.0, "n": 2},
        },
    }
    assert summary["new"]["metrics"]["attn_x"] == {"mean": 3.0, "std": math.sqrt(2.0), "n": 2}
    paired = stats.compare(RECORDS, ["base", "new"], "base", "test")
    assert list(paired) == ["new"] and sorted(paired["new"]) == ["loss", "top1"]  # attn_x: base has none
    # top1 differences 0.25, 0.5; loss differences -0.5, -1.0 (lower is better)
    assert paired["new"]["top1"]["mean"] == 0.375 and paired["new"]["top1"]["better_by_1sd"] is True
    assert paired["new"]["loss"]["mean"] == -0.75 and paired["new"]["loss"]["better_by_1sd"] is True
    assert stats.summarize(RECORDS, ["missing"], "test") == {"missing": {"n": 0, "metrics": {}}}


def test_report_tables():
    built = report.build(RECORDS, ["base", "new"], "base", "test", [0, 1], {"runs": {}, "common": []})
    assert report.columns(built) == ["top1", "pointing_game", "attention_overlap", "ks", "attn_x"]
    assert report.columns(built, ["loss"]) == ["loss"]
    text = report.markdown(built, ["top1", "loss"], per_seed=False)
    lines = text.splitlines()
    assert lines[0] == "| run (test, mean ± std over seeds) | top1 (%) ↑ | loss ↓ | seeds |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| base (reference) | 50.00 ± 0.00 | 1.2500 ± 0.3536 | 2 |"
    assert lines[3] == "| new | 87.50 ± 17.68 | 0.5000 ± 0.0000 | 2 |"
    assert "| new | +37.50 ± 17.68 **better** | -0.7500 ± 0.3536 **better** | 2 |" in lines
    assert "| run | seed |" not in text
    records = [{**r, "wall_s": 3.0, "how": "trained"} for r in RECORDS]
    built = report.build(records, ["base", "new"], "base", "test", [0, 1], {"runs": {}, "common": []})
    per_seed = report.markdown(built, ["top1", "ks"], per_seed=True).splitlines()
    assert "| new | 1 | 100.00 | n/a | 3 | trained |" in per_seed
