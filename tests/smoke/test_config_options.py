"""Every option of every config group composes and trains (a documented option must not crash).

The options are found by globbing ``conf/``, so a new option is covered at once. Each one is composed into
``conf/train.yaml`` and trained for a couple of steps with export and figure, as ``python train.py
<group>=<option>`` would. Options that cannot run in this process name the test that runs them instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from icasc.tasks.train import run
from tests import fakedata
from tests.conftest import CONF, compose_train

pytestmark = pytest.mark.slow

# Groups whose options are run by other tests (they need more than one short in-process run).
RUN_ELSEWHERE = {
    "experiment": "tests/smoke/test_paper_presets.py and test_train_presets.py run every preset",
    "hydra/launcher": "tests/smoke/test_cli.py::test_slurm_launcher_preset (running needs a SLURM cluster)",
    "hydra": "hydra/default (run folders): every train.py subprocess of tests/smoke/test_resume.py uses it",
}
# Single options run elsewhere or needing hardware, with the reason.
OPTION_ELSEWHERE = {
    "trainer/ddp": "tests/smoke/test_ddp.py::test_train_py_with_ddp_preset_runs_two_processes (2 processes)",
}
NEEDS = {
    "trainer/gpu": lambda: torch.cuda.is_available() or "needs a CUDA GPU",
    "logger/tensorboard": lambda: importlib.util.find_spec("tensorboard") is not None or "no tensorboard",
    "logger/wandb": lambda: importlib.util.find_spec("wandb") is not None or "wandb is not installed",
}


def _options() -> list[str]:
    found = []
    for path in sorted(CONF.rglob("*.yaml")):
        group = path.parent.relative_to(CONF).as_posix()
        if group == "." or path.name.startswith("_"):
            continue  # primary configs (train, eval, ...) and shared bases
        if any(group == g or group.startswith(g + "/") for g in RUN_ELSEWHERE):
            continue
        found.append(f"{group}/{path.stem}")
    return found


OPTIONS = _options()


def test_the_walk_sees_every_group():
    groups = {o.rsplit("/", 1)[0] for o in OPTIONS}
    expected = {
        "data", "model", "model/backbone", "model/attention", "model/loss", "model/optimizer",
        "model/scheduler", "callbacks", "logger", "trainer", "paths", "hparams_search",
    }  # fmt: skip
    assert groups == expected
    assert "model/scheduler/none" in OPTIONS and "callbacks/none" in OPTIONS


def _overrides(group: str, option: str, fake_roots) -> list[str]:
    if (group, option) == ("model/backbone", "timm"):
        return ["model.backbone.name=convnext_atto"]  # the option needs a timm architecture's name
    if group != "data" or option == "synthetic":
        return []
    root, extra = fake_roots(option)
    return [
        f"data.root={root}",
        *extra,
        *fakedata.SHRINK[option],
        "data.batch_size=4",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "figure.num_images=2",
    ]


# four fake VOC validation images leave most classes without positives: torchmetrics warns
@pytest.mark.filterwarnings(
    "ignore:No positive samples:UserWarning", "ignore:No negative samples:UserWarning"
)
@pytest.mark.parametrize("option", OPTIONS)
def test_option_composes_and_trains(option, fake_roots, tmp_path):
    group, name = option.rsplit("/", 1)
    if option in OPTION_ELSEWHERE:
        pytest.skip(OPTION_ELSEWHERE[option])
    ready = NEEDS.get(option, lambda: True)()
    if ready is not True:
        pytest.skip(ready)
    synthetic = group != "data" or name == "synthetic"
    cfg = compose_train(
        [f"{group}={name}", *_overrides(group, name, fake_roots)], output_dir=tmp_path, tiny=synthetic
    )
    result = run(cfg)
    metrics, outputs = result["metrics"], result["outputs"]
    assert cfg.optimized_metric in metrics and 0.0 <= metrics[cfg.optimized_metric] <= 1.0
    assert all(v == v for v in metrics.values() if isinstance(v, float)), metrics  # no NaN
    # every option leaves export and figure on, except the sweep presets (export=false: many runs)
    assert cfg.export == (group != "hparams_search") and cfg.figure.enabled
    if cfg.export:
        assert outputs["exported model"] and Path(outputs["exported model"]).exists()
    assert outputs["attention figure"] and Path(outputs["attention figure"]).exists()
