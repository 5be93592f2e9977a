"""Reliability of runs: resume after SIGKILL, one folder per run, safe checkpoints, true records."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml

from icasc.tasks import _new_dir
from icasc.tasks.train import run
from tests.conftest import compose_train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# 8 optimiser steps per epoch, 6 epochs: long enough that a kill after the first checkpoint lands in training
RUN = [
    "data.train_size=256",
    "data.val_size=64",
    "data.test_size=32",
    "data.batch_size=32",
    "trainer.max_epochs=6",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=2",
    "figure.num_images=2",
    "seed=3",
]


def _train_py(*args: str, cwd: Path = ROOT) -> subprocess.Popen:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def _state(path: Path) -> dict[str, torch.Tensor]:
    # plain torch.load with weights_only=True: checkpoints hold only tensors and plain data
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _finish(_train_py(*RUN, f"hydra.run.dir={reference}"))

    proc = _train_py(*RUN, f"hydra.run.dir={killed}")
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists():
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert killed_at < 5, "the kill must land before the last epoch to test a resume"
    logged_before = len(_rows(killed))

    _finish(_train_py(*RUN, f"hydra.run.dir={killed}", f"ckpt_path={last}"))

    # the same weights as the uninterrupted run, bit for bit
    want, got = _state(reference / "checkpoints" / "last.ckpt"), _state(last)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 5  # last.ckpt is current
    exported = [safetensors.torch.load_file(d / "export" / "model.safetensors") for d in (reference, killed)]
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])

    # one metrics.csv that kept the rows logged before the kill and has every row once, as uninterrupted
    rows = _rows(killed)
    assert len(rows) >= logged_before
    assert rows == _rows(reference)
    epochs = [r["epoch"] for r in rows if r.get("val/top1")]
    # each epoch validated once, then the best checkpoint's re-validation after fit (logged as epoch 6)
    assert epochs == [str(e) for e in range(7)]


def test_resume_keeps_the_run_config_records(tmp_path):
    """hparams.yaml records the run's seed (not a data module's own seed) and the checkpoint loads safely."""
    cfg = compose_train(["seed=5", "export=false", "figure.enabled=false"], tmp_path)
    run(cfg)
    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert hparams["seed"] == 5 and hparams["data"]["seed"] == 0
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    loss = checkpoint["hyper_parameters"]["loss"]
    assert loss["weights"]["consistency"] == cfg.model.loss.weights.consistency
    assert loss["separation_gradient"] == cfg.model.loss.separation_gradient
    assert checkpoint["hyper_parameters"]["optimizer"]["target"] == "torch.optim.sgd.SGD"


def test_a_new_run_refuses_a_folder_that_holds_a_run(tmp_path):
    run(compose_train(["export=false", "figure.enabled=false"], tmp_path))
    with pytest.raises(FileExistsError, match=r"already holds a run .*ckpt_path=.*last\.ckpt"):
        run(compose_train(["export=false", "figure.enabled=false"], tmp_path))


def test_two_runs_started_together_get_their_own_folders(tmp_path):
    tiny = ["data.train_size=32", "data.val_size=16", "data.test_size=16", "data.batch_size=16"]
    tiny += ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "figure.enabled=false"]
    procs = [_train_py(*tiny, f"seed={seed}", cwd=tmp_path) for seed in (11, 12)]
    for proc in procs:
        _finish(proc)
    runs = sorted((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 2
    seeds = {yaml.safe_load((r / ".hydra" / "config.yaml").read_text())["seed"] for r in runs}
    assert seeds == {11, 12}
    for r in runs:
        config_seed = yaml.safe_load((r / ".hydra" / "config.yaml").read_text())["seed"]
        assert yaml.safe_load((r / "csv" / "hparams.yaml").read_text())["seed"] == config_seed
        assert (r / "export" / "model.safetensors").exists()


def test_new_dir_resolver_gives_each_concurrent_caller_its_own_folder(tmp_path):
    base = tmp_path / "runs" / "2026-01-01_00-00-00"
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(_new_dir(str(base)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 8
    assert sorted(Path(r).name for r in results)[0] == base.name
    assert all(Path(r).is_dir() for r in results)
