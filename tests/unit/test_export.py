"""Tests for safetensors export and loading, including loading without icasc."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from icasc.models.backbones import build_backbone, input_defaults
from icasc.models.export import config_hash, export_backbone, load_exported


def _card(backbone: str, num_classes: int, **extra: object) -> dict:
    d = input_defaults(backbone)
    return {
        "backbone": backbone,
        "num_classes": num_classes,
        "input": d,
        "attention_layers": {"inner": "layer1", "last": "layer2"},
        "metrics": {"val/acc": torch.tensor(0.75)},  # tensors are converted to numbers
        "config_hash": config_hash({"a": 1}),
        **extra,
    }


def _perturb_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.slow
def test_resnet18_loads_without_icasc(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_backbone("resnet18", num_classes=5).eval()
    _perturb_bn(model)
    paths = export_backbone(model, tmp_path / "export", _card("resnet18", 5))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
    save_file({"x": x, "logits": logits}, str(tmp_path / "io.safetensors"))

    script = textwrap.dedent(
        """
        import sys

        class _BlockIcasc:
            def find_spec(self, name, path=None, target=None):
                if name == "icasc" or name.startswith("icasc."):
                    raise ImportError("icasc must not be needed to load an export")
                return None

        sys.meta_path.insert(0, _BlockIcasc())
        import torch, torchvision
        import safetensors.torch

        weights, io_path = sys.argv[1], sys.argv[2]
        model = torchvision.models.resnet18(num_classes=5)
        model.load_state_dict(safetensors.torch.load_file(weights), strict=True)
        model.eval()
        io = safetensors.torch.load_file(io_path)
        with torch.no_grad():
            out = model(io["x"])
        diff = (out - io["logits"]).abs().max().item()
        assert "icasc" not in sys.modules, "icasc was imported"
        assert diff < 1e-5, diff
        print("OK", diff)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(paths["weights"]), str(tmp_path / "io.safetensors")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK")


def test_card_fields(tmp_path: Path) -> None:
    model = build_backbone("resnet18", num_classes=5)
    paths = export_backbone(model, tmp_path, _card("resnet18", 5))
    assert paths == {"weights": tmp_path / "model.safetensors", "card": tmp_path / "model_card.json"}
    card = json.loads(paths["card"].read_text())
    for key in ("backbone", "num_classes", "input", "attention_layers", "metrics", "config_hash"):
        assert key in card
    assert card["format"] == "icasc-export" and card["format_version"] == 1
    assert card["files"]["weights"] == "model.safetensors"
    assert card["state_dict_keys"] == len(model.state_dict())
    assert card["metrics"]["val/acc"] == pytest.approx(0.75)
    assert "created" in card
    assert "torchvision.models.resnet18(num_classes=5)" in card["load"]
    assert "safetensors.torch.load_file" in card["load"]


@pytest.mark.parametrize(("backbone", "kwargs"), [("tiny_cnn", {}), ("cifar_resnet20", {"shortcut": "B"})])
def test_load_exported_round_trip(tmp_path: Path, backbone: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_backbone(backbone, num_classes=4, **kwargs).eval()
    _perturb_bn(model)
    card = _card(backbone, 4, backbone_kwargs=kwargs) if kwargs else _card(backbone, 4)
    export_backbone(model, tmp_path, card)
    loaded, loaded_card = load_exported(tmp_path)
    assert not loaded.training
    assert loaded_card["backbone"] == backbone
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    # A path to a file inside the export directory works too.
    load_exported(tmp_path / "model_card.json")


def test_shared_storage_is_exported(tmp_path: Path) -> None:
    model = build_backbone("tiny_cnn", num_classes=4)
    model.register_buffer("tied", model.fc.weight.data)  # shares storage with fc.weight
    export_backbone(model, tmp_path, _card("tiny_cnn", 4))
    assert (tmp_path / "model.safetensors").is_file()


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model_card\.json"):
        load_exported(tmp_path)
    export_backbone(build_backbone("tiny_cnn", num_classes=2), tmp_path, _card("tiny_cnn", 2))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_exported(tmp_path)


def test_mismatched_keys(tmp_path: Path) -> None:
    # Weights of a cifar_resnet20 under a tiny_cnn card.
    export_backbone(build_backbone("cifar_resnet20", num_classes=2), tmp_path, _card("tiny_cnn", 2))
    with pytest.raises(ValueError, match="missing keys") as info:
        load_exported(tmp_path)
    msg = str(info.value)
    assert "unexpected keys" in msg and "more)" in msg
    assert "layer1.0.weight" in msg  # missing (tiny_cnn key)
    assert "layer1.0.bn1.bias" in msg  # unexpected (cifar_resnet20 key)


def test_missing_card_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        export_backbone(build_backbone("tiny_cnn", num_classes=2), tmp_path, {"backbone": "tiny_cnn"})


def test_config_hash_stable() -> None:
    a = {"model": {"backbone": "resnet18", "lr": 0.1}, "seed": 1, "path": Path("/x")}
    b = {"seed": 1, "path": Path("/x"), "model": {"lr": 0.1, "backbone": "resnet18"}}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 64
    assert config_hash(a) != config_hash({**a, "seed": 2})
