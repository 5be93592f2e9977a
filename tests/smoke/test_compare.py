"""python -m icasc.compare run tiny: 2 runs x 2 seeds, then reused, resumed and re-scored without training."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from icasc.compare import cli, store
from icasc.tasks import compare as compare_task
from tests.conftest import ROOT, TINY

pytestmark = pytest.mark.slow

RUNS = [
    "--run",
    "synthetic_baseline",
    "--run",
    "w01=experiment=synthetic_icasc model.loss.weights.consistency=0.1",
]


def _argv(out, *extra: str) -> list[str]:
    return [*RUNS, "--seeds", "0,1", "--out", str(out), *extra, *TINY]


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def _no_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("trained or scored a run that was to be reused")

    monkeypatch.setattr(compare_task, "train", refuse)
    monkeypatch.setattr(compare_task, "score", refuse)


def test_compare_runs_reports_and_reuses(tmp_path, capsys, monkeypatch):
    report = cli.main(_argv(tmp_path, "--per-seed"))
    captured = capsys.readouterr()
    assert _last_json(captured.out) == json.loads(json.dumps(report))
    assert report["runs"] == ["synthetic_baseline", "w01"] and report["reference"] == "synthetic_baseline"
    assert report["split"] == "test" and report["seeds"] == [0, 1]
    assert {(r["name"], r["seed"], r["how"]) for r in report["records"]} == {
        (n, s, "trained") for n in ("synthetic_baseline", "w01") for s in (0, 1)
    }
    for r in report["records"]:
        assert 0.0 <= r["metrics"]["test/top1"] <= 1.0 and "val/top1" in r["metrics"]
        # the ICASC run trains with the attention terms, the baseline without
        assert ("test/separation_inner" in r["metrics"]) == (r["name"] == "w01")
        assert (tmp_path / "runs" / r["name"] / f"seed{r['seed']}" / "checkpoints" / "last.ckpt").exists()
    top1 = [r["metrics"]["test/top1"] for r in report["records"] if r["name"] == "w01"]
    summary = report["summary"]["w01"]["metrics"]["top1"]
    assert summary["n"] == 2 and summary["mean"] == pytest.approx(sum(top1) / 2)
    paired = report["paired"]["w01"]["top1"]
    assert list(report["paired"]) == ["w01"] and paired["seeds"] == [0, 1]
    assert set(paired) >= {"mean", "std", "t", "better_by_1sd"}

    lines = captured.out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| run (test, mean ± std"))
    assert "top1 (%) ↑" in lines[head] and "attention_overlap ↓" in lines[head]
    assert lines[head + 2].startswith("| synthetic_baseline (reference) |")
    assert any(line.startswith("| test: run − synthetic_baseline (paired") for line in lines)
    assert sum(line.startswith("| w01 | 1 |") for line in lines) == 1  # the per-seed row
    progress = [line for line in captured.err.splitlines() if line.startswith("[compare]")]
    assert progress[-1].startswith("[compare] 4/4 w01 seed 1: trained in")
    assert (tmp_path / "summary.md").read_text().strip() == "\n".join(lines[:-1]).strip()
    assert json.loads((tmp_path / "summary.json").read_text())["summary"] == report["summary"]
    assert len(store.load_results(tmp_path / "results.json")) == 4

    # Again: nothing is trained, the numbers are the same; --metrics picks the columns.
    _no_training(monkeypatch)
    again = cli.main(_argv(tmp_path, "--metrics", "top1,test/ks"))
    captured = capsys.readouterr()
    assert again["summary"] == report["summary"]
    assert "| run (test, mean ± std over seeds) | top1 (%) ↑ | ks ↑ | seeds |" in captured.out
    assert captured.err.count(": reused (") == 4
    # The same name with other overrides: refused before anything runs, with the ways out.
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*_argv(tmp_path), "trainer.max_epochs=2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "with other overrides" in err and "--fresh" in err and "another --out" in err
    monkeypatch.undo()

    # An interrupted run resumes from its last.ckpt; a run recorded without test metrics is only scored.
    records = store.load_results(tmp_path / "results.json")
    by_key = {(r["name"], r["seed"]): r for r in records}
    resumed, scored = by_key[("w01", 1)], by_key[("synthetic_baseline", 0)]
    folder = tmp_path / "runs" / "w01" / "seed1"
    store.write_json(folder / store.RECORD, {k: resumed[k] for k in ("name", "seed", "overrides")})
    test_top1 = {"resumed": resumed["metrics"]["test/top1"], "scored": scored["metrics"]["test/top1"]}
    scored["metrics"] = {k: v for k, v in scored["metrics"].items() if not k.startswith("test/")}
    store.save_results(tmp_path / "results.json", [r for r in records if r is not resumed])
    third = cli.main(_argv(tmp_path))
    capsys.readouterr()
    how = {(r["name"], r["seed"]): r["how"] for r in third["records"]}
    assert how[("w01", 1)] == "resumed" and how[("synthetic_baseline", 0)] == "scored"
    assert how[("w01", 0)] == how[("synthetic_baseline", 1)] == "trained"  # reused as recorded
    # the same best checkpoints, scored again
    new = {(r["name"], r["seed"]): r["metrics"]["test/top1"] for r in third["records"]}
    assert new[("w01", 1)] == pytest.approx(test_top1["resumed"])
    assert new[("synthetic_baseline", 0)] == pytest.approx(test_top1["scored"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run", "synthetic_icasc", "--run", "synthetic_nope"], "unknown preset 'synthetic_nope'"),
        (["--run", "a=experiment=synthetic_baselin"], "unknown preset 'synthetic_baselin'"),
        (["--run", "a=", "--reference", "b"], "--reference 'b' is not one of the runs: a"),
        (["--run", "a=model.loss.weight.consistency=1"], "--run a: its config does not compose"),
        (["--run", "synthetic_groupcam_finetune"], "pass init_from="),  # a required value, resolved early
        (["--run", "a=", "seed=3"], "use --seeds"),
        (["--run", "a=", "trainer.max_epoch=1"], "its config does not compose"),  # a common override
    ],
)
def test_refused_before_anything_runs(argv, message, tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--out", str(out), *TINY])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_module_entry_point_help():
    proc = subprocess.run(
        [sys.executable, "-m", "icasc.compare", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--run NAME=OVERRIDES|PRESET" in proc.stdout and "--reference" in proc.stdout


def test_fine_tunes_score_their_before_after_report_on_the_compared_split(tmp_path, capsys):
    """A run with init_from adds the report's Group-CAM faithfulness and pointing game to its metrics."""
    import torch

    from icasc.models.backbones import build_backbone
    from icasc.models.export import export_backbone

    torch.manual_seed(0)
    card = {"backbone": "tiny_cnn", "num_classes": 10, "backbone_kwargs": {"width": 16, "batchnorm": True}}
    export_backbone(build_backbone("tiny_cnn", 10, width=16, batchnorm=True), tmp_path / "base0", card)
    init = f"init_from={tmp_path}/base{{seed}}/model.safetensors"
    run = f"plain=experiment=synthetic_groupcam_finetune callbacks=default {init} before_after.num_images=4"
    argv = [
        "--run",
        run,
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "cmp"),
        "--metrics=top1,groupcam_deletion_auc",
    ]
    report = cli.main([*argv, *TINY, "figure.enabled=false"])
    capsys.readouterr()
    (record,) = report["records"]
    written = json.loads((tmp_path / "cmp" / "runs" / "plain" / "seed0" / "before_after.json").read_text())
    assert written["split"] == "test" and written["images"] == 4
    assert record["metrics"]["test/groupcam_deletion_auc"] == written["finetuned"]["deletion_auc"]
    assert record["metrics"]["test/groupcam_pointing_game"] == written["finetuned"]["pointing_game"]
    assert report["summary"]["plain"]["metrics"]["groupcam_deletion_auc"]["n"] == 1
