"""The param_saliency command on a trained checkpoint and an export, as users run it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from icasc.models.export import load_exported
from icasc.saliency.parameter.stats import SaliencyStats
from icasc.tasks import param_saliency
from tests.conftest import compose_config
from tests.helpers import run_train_py, train_tiny

pytestmark = pytest.mark.slow
DATA = ["data.train_size=64", "data.val_size=32", "data.batch_size=16"]
FAST = [
    *DATA,
    "num_images=2",
    "pruning.k=[2]",
    "pruning.draws=2",
    "pruning.max_samples=4",
    "perturbation.draws=2",
    "perturbation.max_samples=4",
    "masking.draws=2",
    "masking.max_samples=4",
    "neighbours.k=3",
    "neighbours.grid_queries=2",
    "neighbours.grid_k=3",
    "progress=false",
]
TUNE = [
    "tune.enabled=true",
    "tune.max_samples=2",
    "tune.steps=2",
    "tune.neighbours=3",
    "tune.k=4",
    "tune.lr=0.01",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("trained"))


def test_command_on_a_checkpoint_writes_every_output(trained, tmp_path):
    ckpt = next((trained / "checkpoints").glob("epoch_*.ckpt"))
    report = param_saliency.run(
        compose_config("param_saliency", [f"ckpt_path={ckpt}", *FAST, *TUNE], tmp_path)
    )
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["samples"] == 32 and report["correct"] + report["misclassified"] == 32
    assert report["accuracy"] == pytest.approx(report["correct"] / 32)
    assert report["layers"] == ["stem.0", "layer1.0", "layer1.3", "layer2.0", "layer2.3"]
    assert report["n_filters"] == 16 + 32 + 32 + 64 + 64
    for name in ("profile.png", "neighbours.png", "stats.safetensors", "tuned/model.safetensors"):
        assert (tmp_path / name).is_file(), name
    shown = sorted((tmp_path / "input_saliency").glob("*.png"))
    assert len(shown) == min(2, report["misclassified"]) == len(report["files"]["input_saliency"])
    stats = SaliencyStats.load(tmp_path / "stats.safetensors")
    assert stats.count == 32 and stats.n_filters == report["n_filters"]
    mistakes = report["mistakes"]["top_filters"]
    assert len(mistakes) == 10 and mistakes[0]["mean_saliency"] >= mistakes[-1]["mean_saliency"]
    for ranking in ("standardized", "raw"):
        entry = report["pruning"][ranking]["misclassified"][0]
        assert entry["k"] == 2 and entry["samples"] == min(4, report["misclassified"])
    assert report["perturbation"]["std"] == 0.001 and report["masking"]["fraction"] == 0.05
    assert 0 <= report["neighbours"]["same_correctness"] <= 1
    tuning = report["tuning"]
    assert set(tuning["per_sample"]["arms"]) == {"salient", "random", "least"}
    joint = tuning["joint"]
    assert joint["tuned_on"] == report["misclassified"] and len(joint["filters"]) == 4
    # the tuned model is an export like any other, and its card says what was tuned
    model, card = load_exported(tmp_path / "tuned")
    assert card["param_saliency_tuning"]["filters"] == joint["filters"]
    assert card["tuned_from"] == str(ckpt) and card["num_classes"] == 10
    original = torch.load(ckpt, weights_only=False)["state_dict"]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, original[f"backbone.{k}"])]
    tuned_layers = {f"{layer}.weight" for layer, _ in joint["filters"]}
    assert changed and set(changed) <= tuned_layers | {f"{layer}.bias" for layer, _ in joint["filters"]}


def test_command_on_an_export_with_loaded_stats(trained, tmp_path):
    first = param_saliency.run(
        compose_config("param_saliency", [f"ckpt_path={trained / 'export'}", *FAST], tmp_path / "a")
    )
    stats = tmp_path / "a" / "stats.safetensors"
    second = param_saliency.run(
        compose_config(
            "param_saliency",
            [f"ckpt_path={trained / 'export'}", f"stats_path={stats}", *FAST],
            tmp_path / "b",
        )
    )
    assert second["stats"]["source"] == str(stats)
    assert second["mistakes"] == first["mistakes"]  # same statistics, same profiles


def test_command_bad_input(trained, tmp_path):
    export = trained / "export"
    with pytest.raises(ValueError, match="ckpt_path"):
        param_saliency.run(compose_config("param_saliency", FAST, tmp_path))
    with pytest.raises(ValueError, match="nope"):
        param_saliency.run(
            compose_config(
                "param_saliency", [f"ckpt_path={export}", "saliency.layers=[nope]", *FAST], tmp_path
            )
        )
    with pytest.raises(ValueError, match=r"10 classes but the data .* has 5.*data.num_classes=10"):
        param_saliency.run(
            compose_config("param_saliency", [f"ckpt_path={export}", "data.num_classes=5", *FAST], tmp_path)
        )
    # statistics of another layer selection (another filter count) do not fit this model's profiles
    other = tmp_path / "other"
    param_saliency.run(
        compose_config("param_saliency", [f"ckpt_path={export}", "saliency.layers=[layer2.0]", *FAST], other)
    )
    with pytest.raises(ValueError, match="another model"):
        param_saliency.run(
            compose_config(
                "param_saliency",
                [f"ckpt_path={export}", f"stats_path={other / 'stats.safetensors'}", *FAST],
                tmp_path,
            )
        )
    with pytest.raises(ValueError, match=r"unknown pruning\.ranking"):
        param_saliency.run(
            compose_config(
                "param_saliency", [f"ckpt_path={export}", "pruning.ranking=[best]", *FAST], tmp_path
            )
        )


def test_command_line(trained, tmp_path):
    proc = run_train_py(
        "-cn", "param_saliency", f"ckpt_path={trained / 'export'}", *FAST,
        "pruning.enabled=false", "perturbation.enabled=false", f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert '"misclassified"' in proc.stdout and "pruning" not in report and "masking" in report
    assert (tmp_path / "profile.png").is_file() and (tmp_path / "param_saliency.log").is_file()
