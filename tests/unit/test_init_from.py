"""init_from: load_weights_into round trips (checkpoint, export, torchvision) and its mismatch errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision

from icasc.models import ICASCModule
from icasc.models.backbones import build_backbone
from icasc.models.export import export_backbone
from icasc.models.loading import load_classifier, load_weights_into
from tests.helpers import save_tiny_checkpoint


def _randomised(name: str, num_classes: int, seed: int, **kwargs: object) -> torch.nn.Module:
    """A backbone whose every tensor (BN statistics too) depends on ``seed``."""
    torch.manual_seed(seed)
    model = build_backbone(name, num_classes, **kwargs)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    return model.eval()


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], msg=key)


def _export(model: torch.nn.Module, name: str, num_classes: int, out: Path) -> Path:
    return export_backbone(model, out, {"backbone": name, "num_classes": num_classes})["weights"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ICASCModule]:
    """A real Lightning checkpoint of an ICASCModule (tiny_cnn, 5 classes) after one step."""
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    module = save_tiny_checkpoint(path)
    return path, module


def test_checkpoint_round_trip(checkpoint):
    path, module = checkpoint
    fresh = build_backbone("tiny_cnn", 5)
    report = load_weights_into(fresh, path)
    _assert_same(fresh, module.backbone)
    assert report["kind"] == "checkpoint" and report["source"] == str(path)
    assert report["tensors"] == len(fresh.state_dict()) and report["head_replaced"] is False
    assert report["backbone"] == "tiny_cnn" and report["num_classes"] == 5
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), module.backbone.eval()(x))


@pytest.mark.parametrize("as_file", [True, False])
def test_export_round_trip(tmp_path, as_file):
    source = _randomised("cifar_resnet20", 7, seed=1)
    weights = _export(source, "cifar_resnet20", 7, tmp_path / "export")
    target = _randomised("cifar_resnet20", 7, seed=2)
    report = load_weights_into(target, weights if as_file else weights.parent)
    _assert_same(target, source)
    assert report["kind"] == "export" and report["tensors"] == len(source.state_dict())
    assert report["backbone"] == "cifar_resnet20" and report["num_classes"] == 7


def _fake_torchvision(monkeypatch: pytest.MonkeyPatch, name: str) -> list[object]:
    """``torchvision.models.<name>`` returning seeded 'pretrained' weights instead of downloading them."""
    original = getattr(torchvision.models, name)
    calls: list[object] = []

    def fake(*, weights=None, **kwargs):
        calls.append(weights)
        torch.manual_seed(123)
        return original(weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, name, fake)
    return calls


def test_torchvision_round_trip_keeps_the_1000_class_head(monkeypatch):
    model = _randomised("resnet18", 1000, seed=5)
    calls = _fake_torchvision(monkeypatch, "resnet18")
    report = load_weights_into(model, "torchvision:IMAGENET1K_V1", arch="resnet18")
    assert calls == ["IMAGENET1K_V1"]
    torch.manual_seed(123)
    _assert_same(model, torchvision.models.resnet18(weights=None))
    assert report == {
        "source": "torchvision:IMAGENET1K_V1",
        "kind": "torchvision",
        "tensors": len(model.state_dict()),
        "head_replaced": False,
        "backbone": "resnet18",
        "num_classes": 1000,
    }


def test_torchvision_replaces_the_head_for_another_class_count(monkeypatch, caplog):
    model = _randomised("resnet18", 5, seed=5)
    _fake_torchvision(monkeypatch, "resnet18")
    with caplog.at_level(logging.INFO, logger="icasc.models.loading"):
        report = load_weights_into(model, "torchvision:IMAGENET1K_V1", arch="resnet18")
    assert report["head_replaced"] is True and model.fc.out_features == 5
    assert "replaced its 1000-class head" in caplog.text and "5-class" in caplog.text
    torch.manual_seed(123)
    pretrained = torchvision.models.resnet18(weights=None).state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(value, pretrained[key], msg=key)


def test_torchvision_source_errors(monkeypatch):
    model = build_backbone("resnet18", 5)
    calls = _fake_torchvision(monkeypatch, "resnet18")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):  # lists the valid names
        load_weights_into(model, "torchvision:IMAGENET_BOGUS", arch="resnet18")
    with pytest.raises(ValueError, match="arch='resnet50'"):
        load_weights_into(model, "torchvision:IMAGENET1K_V1")
    tiny = build_backbone("tiny_cnn", 5)
    with pytest.raises(ValueError, match="needs a torchvision backbone"):
        load_weights_into(tiny, "torchvision:IMAGENET1K_V1", arch="tiny_cnn")
    with pytest.raises(ValueError, match="needs a torchvision backbone"):  # the model is not a ResNet/VGG
        load_weights_into(tiny, "torchvision:IMAGENET1K_V1", arch="resnet18")
    with pytest.raises(ValueError, match="weights name"):
        load_weights_into(model, "torchvision:", arch="resnet18")
    assert calls == []  # nothing was built, let alone downloaded


def test_class_count_mismatch_names_the_head_shapes_and_the_fix(tmp_path):
    weights = _export(_randomised("tiny_cnn", 10, seed=0), "tiny_cnn", 10, tmp_path / "export")
    model = _randomised("tiny_cnn", 5, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_weights_into(model, weights)
    message = str(err.value)
    assert "fc.weight [10, 64] in the source vs [5, 64] in the model" in message
    assert "fc.bias [10] in the source vs [5] in the model" in message
    assert "tiny_cnn with 10 classes" in message and "num_classes to 10" in message
    assert "missing keys" not in message and "unexpected keys" not in message
    for key, value in model.state_dict().items():  # nothing was loaded
        torch.testing.assert_close(value, before[key])


def test_architecture_mismatch_lists_missing_and_unexpected_keys(checkpoint):
    path, _ = checkpoint
    with pytest.raises(ValueError) as err:
        load_weights_into(build_backbone("resnet18", 5), path)
    message = str(err.value)
    assert "missing keys (" in message and "conv1.weight" in message and "more)" in message
    assert "unexpected keys (" in message and "layer1.0.weight" in message
    assert "different architecture" in message and "model/backbone" in message


def test_compiled_backbone_is_filled_through_its_wrapper(tmp_path):
    source = _randomised("tiny_cnn", 3, seed=0)
    weights = _export(source, "tiny_cnn", 3, tmp_path / "export")
    target = build_backbone("tiny_cnn", 3)

    class Wrapper(torch.nn.Module):  # what torch.compile returns: the model under _orig_mod
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    load_weights_into(Wrapper(target), weights)
    _assert_same(target, source)


def test_bad_sources(tmp_path):
    model = build_backbone("tiny_cnn", 3)
    with pytest.raises(FileNotFoundError, match="torchvision:<WEIGHTS>"):
        load_weights_into(model, tmp_path / "nope.ckpt")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a Lightning checkpoint"):
        load_weights_into(model, tmp_path / "notes.txt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        load_weights_into(model, tmp_path / "plain.ckpt")
    torch.save({"state_dict": {"net.w": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"not a checkpoint of icasc\.models\.ICASCModule"):
        load_weights_into(model, tmp_path / "other.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"without model\.safetensors"):
        load_weights_into(model, tmp_path / "empty")


def test_load_classifier_reports_the_backbone(checkpoint, tmp_path):
    path, _ = checkpoint
    _, info = load_classifier(path)
    assert info["backbone"] == "tiny_cnn" and info["backbone_kwargs"] == {}
    source = _randomised("tiny_cnn", 3, seed=0, width=8)
    export_backbone(
        source,
        tmp_path / "export",
        {"backbone": "tiny_cnn", "num_classes": 3, "backbone_kwargs": {"width": 8}, "init_from": "x.ckpt"},
    )
    _, info = load_classifier(tmp_path / "export")
    assert info["backbone_kwargs"] == {"width": 8} and info["init_from"] == "x.ckpt"
