"""The eval command on trained checkpoints and exports, as users run it; its numbers equal Trainer.test's."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate

from icasc.models import ICASCModule
from icasc.tasks import evaluate
from tests.conftest import compose_config
from tests.helpers import run_train_py, train_tiny

pytestmark = pytest.mark.slow
DATA = ["data.train_size=64", "data.val_size=32", "data.test_size=32", "data.batch_size=16"]
FAST = [*DATA, "progress=false", "gallery.num_images=3"]
SINGLE = [
    "top1",
    "top5",
    "ks",
    "ks_threshold",
    "loss",
    "classification",
    "attention_overlap",
    "pointing_game",
    # the attention diagnostics, per layer and class (synthetic batches carry boxes)
    *(
        f"attn_{layer}_{kind}_{stat}"
        for layer in ("inner", "last")
        for kind in ("true", "conf")
        for stat in ("in_box", "pointing", "peak")
    ),
]


def _trainer_metrics(ckpt: Path, overrides: list[str], split: str = "test") -> dict[str, float]:
    """What Lightning's test (or validate) loop logs for the checkpoint on the same data."""
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", *overrides])
    module = ICASCModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
    )
    loop = trainer.test if split == "test" else trainer.validate
    return loop(module, datamodule=instantiate(cfg.data), verbose=False)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def trained_multilabel(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("trained_multilabel"), "data.multilabel=true")


def test_eval_checkpoint_report_equals_trainer_test(trained, tmp_path):
    ckpt = next((trained / "checkpoints").glob("epoch_*.ckpt"))
    result = evaluate.run(compose_config("eval", [f"ckpt_path={ckpt}", *FAST], tmp_path))
    expected = _trainer_metrics(ckpt, DATA)
    for name in SINGLE:
        assert result["metrics"][f"test/{name}"] == pytest.approx(expected[f"test/{name}"], abs=1e-5), name

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["split"] == "test" and report["num_images"] == 32
    assert (
        report["checkpoint"]["kind"] == "lightning checkpoint" and report["checkpoint"]["num_classes"] == 10
    )
    assert (
        report["data"]["datamodule"] == "icasc.data.SyntheticDataModule" and not report["data"]["multilabel"]
    )
    for name in SINGLE:
        assert report["metrics"][name] == pytest.approx(expected[f"test/{name}"], abs=1e-5), name
    assert report["metrics"]["ks_sign"] in (-1, 1) and "class_ap" not in report["metrics"]
    images = report["gallery"]["images"]
    assert (
        len(images) == 3 and report["gallery"]["method"] == "ach" and report["gallery"]["layer"] == "layer2"
    )
    margins = [i["margin"] for i in images]
    assert margins == sorted(margins)
    for item in images:
        assert item["margin"] == pytest.approx(item["true_prob"] - item["confused_prob"])
        assert item["true"] != item["confused"]
    assert report["files"] == {
        "report_json": "report.json",
        "report_md": "report.md",
        "ks_chart": "ks_chart.png",
        "gallery": "gallery.png",
    }
    for name in report["files"].values():
        assert (tmp_path / name).stat().st_size > 0, name
    markdown = (tmp_path / "report.md").read_text()
    assert "| top-1 (%) |" in markdown and "![KS chart](ks_chart.png)" in markdown
    assert "## Attention diagnostics" in markdown and "| last (`layer2`) | most confusing |" in markdown
    assert "![gallery](gallery.png)" in markdown


def test_eval_export_on_the_validation_split_equals_the_checkpoint(trained, tmp_path):
    ckpt = next((trained / "checkpoints").glob("epoch_*.ckpt"))
    overrides = [*FAST, "split=val", "gallery.num_images=0"]
    exported = evaluate.run(compose_config("eval", [f"ckpt_path={trained / 'export'}", *overrides], tmp_path))
    expected = _trainer_metrics(ckpt, DATA, split="val")
    for name in SINGLE:
        assert exported["metrics"][f"val/{name}"] == pytest.approx(expected[f"val/{name}"], abs=1e-5), name
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["checkpoint"]["kind"] == "export" and report["num_images"] == 32
    assert "gallery" not in report["files"] and not (tmp_path / "gallery.png").exists()


def test_eval_multilabel_gives_per_class_ap_and_auc(trained_multilabel, tmp_path):
    ckpt = next((trained_multilabel / "checkpoints").glob("epoch_*.ckpt"))
    overrides = [*DATA, "data.multilabel=true"]
    result = evaluate.run(
        compose_config(
            "eval", [f"ckpt_path={ckpt}", *overrides, "progress=false", "gallery.num_images=2"], tmp_path
        )
    )
    expected = _trainer_metrics(ckpt, overrides)
    for name in ("map", "auc", "loss"):
        assert result["metrics"][f"test/{name}"] == pytest.approx(expected[f"test/{name}"], abs=1e-5), name
    report = json.loads((tmp_path / "report.json").read_text())
    names = instantiate(compose_config("eval", overrides).data).class_names
    class_ap = report["metrics"]["class_ap"]
    assert list(class_ap) == names and list(report["class_positives"]) == names
    assert all(0.0 <= ap <= 1.0 for ap in class_ap.values())
    assert sum(report["class_positives"].values()) >= 32  # every image holds at least one object
    # macro mAP over the classes that occur (AP 0 for a class without positives, as torchmetrics counts it)
    assert report["metrics"]["map"] == pytest.approx(sum(class_ap.values()) / len(class_ap), abs=1e-6)
    assert "ks" not in report["metrics"] and not (tmp_path / "ks_chart.png").exists()
    assert (tmp_path / "gallery.png").exists() and len(report["gallery"]["images"]) == 2
    assert "## Per-class average precision" in (tmp_path / "report.md").read_text()


def test_eval_bad_input(trained, tmp_path):
    ckpt = next((trained / "checkpoints").glob("epoch_*.ckpt"))
    with pytest.raises(ValueError, match="eval needs ckpt_path="):
        evaluate.run(compose_config("eval", FAST, tmp_path))
    with pytest.raises(ValueError, match=r"built for 10 classes but the data .* has 5.*data.num_classes=10"):
        evaluate.run(compose_config("eval", [f"ckpt_path={ckpt}", *FAST, "data.num_classes=5"], tmp_path))
    with pytest.raises(
        ValueError, match=r"single-label model but the data .* multi-label.*data.multilabel=false"
    ):
        evaluate.run(compose_config("eval", [f"ckpt_path={ckpt}", *FAST, "data.multilabel=true"], tmp_path))
    with pytest.raises(ValueError, match=r"split must be one of \['test', 'val'\]"):
        evaluate.run(compose_config("eval", [f"ckpt_path={ckpt}", *FAST, "split=train"], tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        evaluate.run(compose_config("eval", [f"ckpt_path={tmp_path}/missing.ckpt", *FAST], tmp_path))
    with pytest.raises(ValueError, match=r"gallery\.method must be one of"):
        evaluate.run(compose_config("eval", [f"ckpt_path={ckpt}", *FAST, "gallery.method=lime"], tmp_path))


def test_eval_command_line(trained, tmp_path):
    ckpt = next((trained / "checkpoints").glob("epoch_*.ckpt"))
    proc = run_train_py("-cn", "eval", f"ckpt_path={ckpt}", *FAST, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| top-1 (%) |" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert (
        report["num_images"] == 32
        and (tmp_path / "ks_chart.png").exists()
        and (tmp_path / "gallery.png").exists()
    )


def test_eval_descent_effects_report_what_each_term_does_to_the_maps(trained, tmp_path):
    ckpt = next((trained / "checkpoints").glob("epoch_*.ckpt"))
    overrides = [f"ckpt_path={ckpt}", *FAST, "gallery.num_images=0", "descent_effects.num_images=20"]
    paper = evaluate.run(
        compose_config(
            "eval", [*overrides, "+descent_effects.loss.separation_gradient=paper"], tmp_path / "paper"
        )
    )["report"]["descent_effects"]
    routed = evaluate.run(
        compose_config(
            "eval", [*overrides, "+descent_effects.loss.separation_gradient=confusing"], tmp_path / "routed"
        )
    )["report"]["descent_effects"]
    assert paper["images"] == 20 and paper["loss"]["separation_gradient"] == "paper"
    assert set(paper["effects"]) == {"separation_inner", "separation_last", "consistency"}
    # routed separation never moves the true-class maps; consistency moves only the inner true map
    for term in ("separation_inner", "separation_last"):
        assert routed["effects"][term]["true_inner"] == 0.0 and routed["effects"][term]["true_last"] == 0.0
    assert paper["effects"]["consistency"]["conf_inner"] == 0.0
    assert paper["effects"]["consistency"]["true_inner"] > 0
    assert "## What each ICASC term does to the maps" in (tmp_path / "paper" / "report.md").read_text()
