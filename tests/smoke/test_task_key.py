"""`task` chooses what train.py runs; `task_name` only names the output folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, compose_config
from tests.helpers import save_tiny_checkpoint

pytestmark = pytest.mark.slow

CONFIGS = ("train", "eval", "explain", "export", "param_saliency")


def test_each_config_runs_its_own_task_and_names_its_folder_after_it():
    for name in CONFIGS:
        cfg = compose_config(name)
        assert cfg.task == name and cfg.task_name == name


def test_an_unknown_task_names_the_valid_ones():
    import train

    assert set(train.TASKS) == set(CONFIGS)
    assert train.task_module("eval") == "icasc.tasks.evaluate"
    with pytest.raises(ValueError, match="unknown task 'evaluate'") as error:
        train.task_module("evaluate")
    assert all(name in str(error.value) for name in CONFIGS)


def test_renaming_task_name_keeps_the_task_and_moves_the_folder(tmp_path):
    ckpt = tmp_path / "tiny.ckpt"
    save_tiny_checkpoint(ckpt)
    args = [
        "-cn",
        "eval",
        "task_name=my_eval",
        f"ckpt_path={ckpt}",
        "data.num_classes=5",
        "data.train_size=4",
        "data.val_size=4",
        "data.test_size=4",
        "data.batch_size=4",
        "attention_metrics=false",
        "gallery.num_images=0",
        "progress=false",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,  # the default run folder, outputs/<task_name>/runs/<date>_<time>, is relative to it
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "my_eval" / "runs").iterdir())
    assert len(runs) == 1 and not (tmp_path / "outputs" / "eval").exists()
    report = json.loads((runs[0] / "report.json").read_text())  # the eval task ran
    assert report["split"] == "test" and report["checkpoint"]["kind"] == "lightning checkpoint"
    assert (runs[0] / "my_eval.log").is_file()

    bad = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, "task=evaluate"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert bad.returncode != 0
    assert "unknown task 'evaluate'" in bad.stderr and "param_saliency" in bad.stderr
