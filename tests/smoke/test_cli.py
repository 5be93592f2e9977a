"""The command line as users type it: train.py, Hydra multirun sweeps, sweeper/launcher presets, the bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT, TINY, compose_train

pytestmark = pytest.mark.slow
CLI_TINY = [o.lstrip("+") if "limit_" not in o else o for o in TINY]


def _train(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_train_py_prints_metrics_and_outputs(tmp_path):
    proc = _train([*CLI_TINY, f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout
    for key in (
        "val/top1",
        "val/top5",
        "val/attention_overlap",
        "val/pointing_game",
        "best checkpoint",
        "exported model",
        "attention figure",
    ):
        assert key in table, key
    assert str(tmp_path / "export" / "model.safetensors") in table
    assert (tmp_path / "attention_maps.png").stat().st_size > 10_000
    assert (tmp_path / "train.log").exists()


def test_multirun_sweep_over_loss_weight_and_seed(tmp_path):
    proc = _train(
        [
            "-m",
            "model.loss.weights.separation_inner=0,1",
            "seed=1",
            *CLI_TINY,
            "export=false",
            "figure.enabled=false",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in runs] == ["0", "1"]
    weights = [OmegaConf.load(p / ".hydra" / "config.yaml").model.loss.weights.separation_inner for p in runs]
    assert weights == [0, 1]
    assert all((p / "csv" / "metrics.csv").exists() for p in runs)


def test_grid_search_preset_composes_as_multirun():
    cfg = compose_train(["hparams_search=synthetic_grid"], tiny=False)
    assert cfg.export is False
    grid = OmegaConf.load(CONF / "hparams_search" / "synthetic_grid.yaml").hydra.sweeper.params
    for key in grid:
        assert OmegaConf.select(cfg, key) is not None, f"sweep parameter {key} is not in the train config"


def test_optuna_preset_parameters_exist_in_the_train_config():
    preset = OmegaConf.load(CONF / "hparams_search" / "synthetic_optuna.yaml")
    cfg = compose_train([], tiny=False)
    assert preset.optimized_metric == "val/top1" and preset.hydra.sweeper.direction == "maximize"
    for key in preset.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, f"search parameter {key} is not in the train config"
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    assert compose_train(["hparams_search=synthetic_optuna"], tiny=False).optimized_metric == "val/top1"


def test_slurm_launcher_preset():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4 and launcher.nodes == 2


def test_bench_step_prints_json_last_line():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "icasc.bench",
            "step",
            "--backbone",
            "tiny_cnn",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--num-classes",
            "10",
            "--repeats",
            "2",
            "--warmup",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["baseline_s"] > 0 and result["icasc_s"] > 0
    assert result["ratio"] == pytest.approx(result["icasc_s"] / result["baseline_s"])
    assert result["ratio_first"] == pytest.approx(result["icasc_first_s"] / result["baseline_s"])
    assert result["layers"] == {"inner": "layer1", "last": "layer2"}


def test_readme_commands_are_the_ci_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = next(line.strip() for line in ci.splitlines() if "pytest" in line and not line.startswith("#"))
    assert test_cmd in readme
    assert "python train.py" in readme
    assert Path(ROOT / "train.py").exists()


def test_optuna_sweep_runs_two_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = _train(
        [
            "-m",
            "hparams_search=synthetic_optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
            *CLI_TINY,
            "figure.enabled=false",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert 0.0 <= result.best_value <= 1.0
    assert set(result.best_params) == {
        "model.optimizer.lr",
        "model.loss.weights.separation_inner",
        "model.loss.weights.separation_last",
        "model.loss.weights.consistency",
    }


def test_bench_all_quick_prints_every_report_in_one_json_last_line():
    proc = subprocess.run(
        [sys.executable, "-m", "icasc.bench", "all", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # progress goes to stderr
    result = json.loads(lines[-1])
    assert set(result) == {"device", "tf32", "step", "step_timm", "saliency", "augment", "param_saliency"}
    assert result["device"] == "cpu" and result["tf32"] is None and result["step"]["tf32"] is None
    step = result["step"]
    assert step["ratio"] == pytest.approx(step["icasc_s"] / step["baseline_s"]) and step["device"] == "cpu"
    timm_step = result["step_timm"]
    assert "skipped" in timm_step or (timm_step["source"] == "timm" and timm_step["icasc_s"] > 0)
    assert set(result["saliency"]) == {"gradcam", "groupcam", "smoothgrad"}
    assert result["augment"]["mask_agreement"] == 1.0 and result["augment"]["speedup"] > 0
    assert result["param_saliency"]["max_rel_diff"] < 1e-4
