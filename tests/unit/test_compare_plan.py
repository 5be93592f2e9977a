"""icasc.compare.plan and store: run specs, checks before anything runs, and what each run still needs."""

from __future__ import annotations

import json

import pytest

from icasc.compare import store
from icasc.compare.plan import (
    RUN_DEFAULTS,
    CompareError,
    RunSpec,
    check_overrides,
    check_plan,
    override_key,
    parse_run,
    presets,
)
from tests.conftest import CONF


def test_parse_run_forms():
    assert parse_run("synthetic_icasc") == RunSpec("synthetic_icasc", ("experiment=synthetic_icasc",))
    assert parse_run("cifar100/resnet110_baseline").overrides == ("experiment=cifar100/resnet110_baseline",)
    spec = parse_run("w05=experiment=synthetic_icasc model.loss.weights.consistency=0.5 'tags=[a, b]'")
    assert spec == RunSpec(
        "w05", ("experiment=synthetic_icasc", "model.loss.weights.consistency=0.5", "tags=[a, b]")
    )
    assert parse_run("plain=") == RunSpec("plain", ())  # conf/train.yaml as it is
    assert parse_run("x=~callbacks.model_summary").overrides == ("~callbacks.model_summary",)


@pytest.mark.parametrize(
    "text, message",
    [
        ("experiment=synthetic_icasc", "is not a Hydra override"),  # NAME= forgotten
        ("../up=seed=1", "must be letters"),
        ("a b=x=1", "must be letters"),
        ("x=a='b", "cannot split"),
    ],
)
def test_parse_run_refuses(text, message):
    with pytest.raises(CompareError, match=message):
        parse_run(text)


def test_presets_are_the_experiment_files_without_bases():
    found = presets(CONF)
    assert {"synthetic_baseline", "synthetic_icasc", "cifar100/resnet110_icasc_ach"} <= set(found)
    assert "cifar100/_base" not in found and not [p for p in found if p.split("/")[-1].startswith("_")]


def test_override_key():
    assert override_key("+trainer.limit_train_batches=2") == "trainer.limit_train_batches"
    assert override_key("~callbacks.model_summary") == "callbacks.model_summary"
    assert override_key("model/loss@model.loss=baseline") == "model/loss"


@pytest.mark.parametrize(
    "override, message",
    [
        ("experiment=nope", "unknown preset 'nope'; the presets are: .*synthetic_baseline"),
        ("seed=3", "use --seeds"),
        ("test=false", "use --split"),
        ("paths.output_dir=/tmp/x", "use --out"),
        ("ckpt_path=x.ckpt", "resume"),
    ],
)
def test_check_overrides_refuses(override, message):
    with pytest.raises(CompareError, match=message):
        check_overrides("--run x", [override], ["synthetic_baseline"])


def test_check_overrides_accepts_known_presets():
    check_overrides(
        "--run x",
        ["experiment=synthetic_baseline", "+experiment=null", "data.seed=4"],
        ["synthetic_baseline"],
    )


def test_check_plan():
    runs = [RunSpec("a", ()), RunSpec("b", ())]
    check_plan(runs, "b", [0, 1])
    with pytest.raises(CompareError, match="--reference 'c' is not one of the runs: a, b"):
        check_plan(runs, "c", [0])
    with pytest.raises(CompareError, match="more than once"):
        check_plan([*runs, RunSpec("a", ("seed=1",))], "a", [0])
    with pytest.raises(CompareError, match="duplicates"):
        check_plan(runs, "a", [0, 0])


SPEC = RunSpec("a", ("experiment=synthetic_icasc",))
IDENTITY = [*RUN_DEFAULTS, "experiment=synthetic_icasc", "trainer.max_epochs=1"]


def _plan(out, records=(), split="test", fresh=False, common=("trainer.max_epochs=1",)):
    return store.plan_jobs(out, [SPEC], [0], list(common), split, list(records), fresh)


def _record(out, **metrics):
    best = out / "best.ckpt"
    best.write_text("")
    return {"name": "a", "seed": 0, "overrides": IDENTITY, "metrics": metrics, "best_checkpoint": str(best)}


def test_plan_jobs_from_results(tmp_path):
    (job,) = _plan(tmp_path)
    assert (job.action, job.clear, job.overrides) == ("train", False, IDENTITY)
    assert job.run_dir == tmp_path / "runs" / "a" / "seed0"
    record = _record(tmp_path, **{"test/top1": 0.5, "val/top1": 0.6})
    assert _plan(tmp_path, [record])[0].action == "reuse"
    assert _plan(tmp_path, [record], split="val")[0].action == "reuse"
    only_val = _record(tmp_path, **{"val/top1": 0.6})
    assert _plan(tmp_path, [only_val])[0].action == "score"  # no test metrics yet: score the best checkpoint
    with pytest.raises(CompareError, match=r"(?s)recorded in .*results.json with other overrides.*--fresh"):
        _plan(tmp_path, [record], common=["trainer.max_epochs=2"])
    (job,) = _plan(tmp_path, [record], fresh=True)
    assert job.action == "train"


def test_plan_jobs_from_run_folders(tmp_path):
    folder = store.run_dir(tmp_path, "a", 0)
    # started, stopped before its first checkpoint: trained again in a cleared folder
    store.write_json(folder / store.RECORD, {"name": "a", "seed": 0, "overrides": IDENTITY})
    (job,) = _plan(tmp_path)
    assert (job.action, job.clear) == ("train", True)
    # interrupted after a checkpoint: resumed
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_text("")
    assert _plan(tmp_path)[0].action == "resume"
    # finished, but results.json lost it: reused from the folder
    store.write_json(folder / store.RECORD, _record(tmp_path, **{"test/top1": 0.5}))
    (job,) = _plan(tmp_path)
    assert job.action == "reuse" and job.record["metrics"] == {"test/top1": 0.5}
    with pytest.raises(CompareError, match=r"compare_run\.json with other overrides"):
        _plan(tmp_path, common=["trainer.max_epochs=3"])


def test_plan_jobs_never_takes_over_a_foreign_run(tmp_path):
    folder = store.run_dir(tmp_path, "a", 0)
    (folder / "csv").mkdir(parents=True)
    (folder / "csv" / "metrics.csv").write_text("")
    for fresh in (False, True):
        with pytest.raises(CompareError, match="did not start"):
            _plan(tmp_path, fresh=fresh)
    store.clear(folder)  # no compare_run.json: left alone
    assert (folder / "csv" / "metrics.csv").exists()


def test_results_file_round_trip_and_damage(tmp_path):
    path = tmp_path / "results.json"
    assert store.load_results(path) == []
    store.save_results(path, [{"name": "a", "seed": 0}])
    assert json.loads(path.read_text()) == {"version": 1, "runs": [{"name": "a", "seed": 0}]}
    assert store.load_results(path) == [{"name": "a", "seed": 0}]
    assert not list(tmp_path.glob("*.tmp"))
    path.write_text("{")
    with pytest.raises(CompareError, match="not valid JSON"):
        store.load_results(path)
    path.write_text("[]")
    with pytest.raises(CompareError, match="not a results file"):
        store.load_results(path)


def test_run_folders_with_odd_names_compose(tmp_path):
    from icasc.tasks.compare import compose_train, default_config_dir

    folder = tmp_path / "a b=c,d's"
    cfg = compose_train(default_config_dir(), ["experiment=synthetic_baseline"], folder)
    assert cfg.paths.output_dir == str(folder) and cfg.trainer.default_root_dir == str(folder)


def test_seed_placeholder_is_filled_per_seed_and_hydra_interpolations_are_kept() -> None:
    from icasc.compare.store import seeded

    got = seeded(["init_from=out/runs/baseline/seed{seed}/export", "tags=[${seed}]"], 4)
    assert got == ["init_from=out/runs/baseline/seed4/export", "tags=[${seed}]"]
