"""benchmarks/synthetic_seeds.py: the multi-seed synthetic comparison, run tiny (1 seed, 1 short epoch)."""

from __future__ import annotations

import importlib.util
import json
import statistics

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _load():
    spec = importlib.util.spec_from_file_location(
        "synthetic_seeds", ROOT / "benchmarks" / "synthetic_seeds.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load()

TINY_RUN = [
    "data.train_size=48",
    "data.val_size=16",
    "data.test_size=16",
    "data.batch_size=16",
    "+trainer.limit_train_batches=2",
    "trainer.log_every_n_steps=1",
]


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_tiny_benchmark_prints_table_and_json_and_resumes(tmp_path, capsys, monkeypatch):
    argv = ["--seeds", "0", "--epochs", "1", "--per-seed", "--out", str(tmp_path), *TINY_RUN]
    bench.main(argv)
    out = capsys.readouterr().out
    report = _last_json(out)

    assert report["split"] == "test" and report["seeds"] == [0] and report["epochs"] == 1
    runs = {r["method"]: r for r in report["runs"]}
    assert sorted(runs) == ["baseline", "icasc_ach", "icasc_gradcam"]
    presets = {m: r["preset"] for m, r in runs.items()}
    assert presets == {
        "baseline": "synthetic_baseline",
        "icasc_gradcam": "synthetic_icasc_gradcam",
        "icasc_ach": "synthetic_icasc",
    }
    for method, r in runs.items():
        assert r["seed"] == 0 and set(r["metrics"]) == {"top1", "attention_overlap", "pointing_game", "ks"}
        for name, value in r["metrics"].items():
            assert value is not None and 0.0 <= value <= 1.0, (method, name)
            assert value == pytest.approx(r["all_metrics"][f"test/{name}"])  # the held-out split
        # the ICASC runs train with the attention terms, the baseline without
        assert ("test/separation_inner" in r["all_metrics"]) == (method != "baseline")
        assert (tmp_path / "runs" / method / "seed0" / "checkpoints" / "last.ckpt").exists()
    for method, stats in report["summary"].items():
        assert stats["n"] == 1
        assert stats["top1"]["mean"] == pytest.approx(runs[method]["metrics"]["top1"])
        assert stats["top1"]["std"] is None  # one seed: no spread

    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| method (test"))
    assert "top-1 (%)" in lines[header] and "KS margin" in lines[header]
    table = lines[header + 2 : header + 5]
    assert [row.split("|")[1].strip() for row in table] == ["baseline", "ICASC_Grad-CAM", "ICASC_A_ch"]
    top1 = f"{runs['baseline']['metrics']['top1'] * 100:.2f}"
    assert table[0].split("|")[2].strip() == top1
    assert sum(line.startswith("| ICASC_A_ch | 0 |") for line in lines) == 1  # the per-seed row

    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == 3 and saved["settings"]["epochs"] == 1

    # A second call with the same settings trains nothing and reports the same numbers.
    monkeypatch.setattr(bench, "train_once", lambda *a, **k: pytest.fail("a finished run was trained again"))
    bench.main(argv)
    again = _last_json(capsys.readouterr().out)
    assert again["summary"] == report["summary"]

    # Other settings into the same directory: refused, with the fix.
    with pytest.raises(SystemExit, match="--fresh"):
        bench.main(["--seeds", "0", "--epochs", "2", "--out", str(tmp_path), *TINY_RUN])


def test_aggregate_mean_and_sample_std():
    runs = [
        {
            "method": "baseline",
            "seed": s,
            "metrics": {"top1": v, "attention_overlap": 0.2, "pointing_game": None, "ks": v},
        }
        for s, v in enumerate([0.5, 0.7, 0.9])
    ]
    summary = bench.aggregate(runs, ["baseline"])["baseline"]
    assert summary["n"] == 3
    assert summary["top1"]["mean"] == pytest.approx(0.7)
    assert summary["top1"]["std"] == pytest.approx(0.2)  # sample std (n - 1) of 0.5, 0.7, 0.9
    assert summary["top1"]["std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert summary["attention_overlap"] == {"mean": pytest.approx(0.2), "std": pytest.approx(0.0), "n": 3}
    assert summary["pointing_game"] == {"mean": None, "std": None, "n": 0}
    table = bench.markdown_tables({"baseline": summary}, runs, "test", per_seed=False)
    assert "| baseline | 70.00 ± 20.00 | 0.2000 ± 0.0000 | n/a | 0.7000 ± 0.2000 | 3 |" in table


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "baseline,icasc"], "unknown method"),
        (["--seeds", "0,x"], "comma-separated list"),
        (["--seeds", "1,1"], "duplicates"),
        (["--epochs", "0"], "--epochs must be >= 1"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_run_overrides_put_the_users_last():
    overrides = bench.run_overrides("icasc_gradcam", 2, 5, "test", ["export=true"])
    assert overrides[:2] == ["experiment=synthetic_icasc_gradcam", "seed=2"]
    assert "trainer.max_epochs=5" in overrides and "test=true" in overrides
    assert overrides[-1] == "export=true"  # after the benchmark's own export=false
    assert "test=true" not in bench.run_overrides("baseline", 0, None, "val", [])
