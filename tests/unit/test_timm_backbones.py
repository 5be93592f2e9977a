"""timm backbones through the registry: ICASC steps, default layers, exports, refusals (no downloads)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

from icasc.models import ICASCModule  # noqa: E402
from icasc.models.backbones import (  # noqa: E402
    PretrainedWeightsError,
    backbone_source,
    build_backbone,
    classifier_head,
    default_attention_layers,
    find_backbone,
    get_backbone,
    input_defaults,
)
from icasc.models.export import export_backbone, load_exported  # noqa: E402
from icasc.models.loading import load_classifier, load_weights_into  # noqa: E402
from icasc.models.timm_backbones import TimmWeightsError, timm_entry  # noqa: E402

SIZE = 64
# one small architecture per family, with the last two spatial stages of its feature_info
FAMILIES = [
    ("resnet10t", ("layer3", "layer4")),
    ("convnext_atto", ("stages.2", "stages.3")),
    ("efficientnet_lite0", ("blocks.4", "blocks.6")),
]
TIMM = {"source": "timm"}


# MobileNetV3 (Hardsigmoid in its squeeze-excite) trains with order="first" only: PyTorch has no second
# derivative of hardsigmoid, which the exact (second-order) maps need.
@pytest.mark.parametrize(
    ("name", "layers", "order"),
    [
        *((name, layers, "second") for name, layers in FAMILIES),
        ("mobilenetv3_small_050", ("blocks.3", "blocks.5"), "first"),
    ],
)
def test_icasc_step_on_timm_backbones(name: str, layers: tuple[str, str], order: str) -> None:
    torch.manual_seed(0)
    module = ICASCModule({"name": name, **TIMM}, num_classes=4, attention={"method": "ach", "order": order})
    assert dict(module.attention.layers) == {"inner": layers[0], "last": layers[1]}
    images, targets = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 3])
    total, terms, logits = module.compute_loss(images, targets)
    assert logits.shape == (4, 4)
    assert {"separation_inner", "separation_last", "consistency"} <= set(terms)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    total.backward()
    first_conv = next(p for n, p in module.backbone.named_parameters() if p.dim() == 4)
    assert first_conv.grad is not None and torch.count_nonzero(first_conv.grad) > 0


def test_second_order_maps_on_a_backbone_without_a_second_derivative_name_the_way_out() -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    module = ICASCModule({"name": "mobilenetv3_small_050", **TIMM}, num_classes=4, val_attention=False)
    data = [{"image": torch.randn(3, SIZE, SIZE), "target": torch.tensor(i % 4)} for i in range(4)]
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"hardsigmoid(?s:.*)set model.attention.order=first"):
        trainer.fit(module, DataLoader(data, batch_size=4))


@pytest.mark.parametrize(("name", "layers"), FAMILIES)
def test_entry_metadata_from_timm(name: str, layers: tuple[str, str]) -> None:
    model = build_backbone(name, num_classes=5, source="timm")
    entry = find_backbone(model)
    assert entry is get_backbone(name, "timm") and entry.source == "timm" == backbone_source(name, "timm")
    assert default_attention_layers(model) == layers
    modules = dict(model.named_modules())
    assert all(layer in modules for layer in layers)
    assert entry.head == model.pretrained_cfg["classifier"]
    assert classifier_head(model) is model.get_classifier() and classifier_head(model).out_features == 5
    cfg = model.pretrained_cfg
    assert input_defaults(name, "timm") == {
        "image_size": cfg["input_size"][-1],
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
    }
    assert "weights=DEFAULT" in entry.pretrained


def test_models_built_by_timm_itself_get_the_same_layers() -> None:
    model = timm.create_model("convnext_atto", num_classes=3)
    assert find_backbone(model).name == "convnext_atto"
    assert default_attention_layers(model) == ("stages.2", "stages.3")


def test_timm_resnet_is_not_torchvision_resnet() -> None:
    model = build_backbone("resnet18", num_classes=3, source="timm")
    assert find_backbone(model).source == "timm"
    with pytest.raises(ValueError, match="needs a torchvision backbone"):
        load_weights_into(model, "torchvision:IMAGENET1K_V1", arch="resnet18")


def test_probe_keeps_train_mode_and_bn_statistics() -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    default_attention_layers(model)
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_export_loads_with_timm_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_backbone("convnext_atto", num_classes=4, source="timm").eval()
    card = {"backbone": "convnext_atto", "backbone_kwargs": dict(TIMM), "num_classes": 4}
    paths = export_backbone(model, tmp_path, card)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x)

    fresh = timm.create_model("convnext_atto", num_classes=4)
    fresh.load_state_dict(safetensors_torch.load_file(str(paths["weights"])), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), expected, rtol=0, atol=1e-6)

    written = json.loads(paths["card"].read_text())
    assert "timm.create_model('convnext_atto', num_classes=4)" in written["load"]
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)
    exec(written["load"], namespace)  # the card's snippet: timm and safetensors only
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"](x), expected, rtol=0, atol=1e-6)

    loaded, _ = load_exported(tmp_path)
    classifier, info = load_classifier(tmp_path)
    assert info["backbone"] == "convnext_atto" and info["backbone_kwargs"] == TIMM
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(classifier(x), expected, rtol=0, atol=1e-6)
    assert default_attention_layers(loaded) == ("stages.2", "stages.3")


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("vit_tiny_patch16_224", {"img_size": 32}, "[1, 5, 192]"),  # tokens [B, N, C]
        # channels-last maps [B, h, w, C]
        (
            "swin_tiny_patch4_window7_224",
            {"img_size": 32, "window_size": 1, "embed_dim": 16},
            "[1, 1, 1, 128]",
        ),
    ],
)
def test_token_transformers_are_refused(name: str, kwargs: dict, shape: str) -> None:
    with pytest.raises(ValueError, match="tokens") as info:
        ICASCModule({"name": name, **TIMM, **kwargs}, num_classes=3)
    message = str(info.value)
    assert name in message and shape in message
    assert "does not reshape tokens" in message and "use a CNN" in message


def test_name_is_required_and_checked() -> None:
    with pytest.raises(ValueError, match=r"model\.backbone\.name is required") as info:
        build_backbone(None, num_classes=3, source="timm")  # type: ignore[arg-type]
    assert "timm.list_models('convnext*')" in str(info.value)
    with pytest.raises(ValueError, match="convnext_atto") as info:
        build_backbone("convnext_attto", num_classes=3, source="timm")
    assert "unknown timm model" in str(info.value)
    with pytest.raises(ValueError, match=r"model\.backbone\.weights=d2_in1k"):
        build_backbone("convnext_atto.d2_in1k", num_classes=3, source="timm")


def test_weights_are_checked_before_any_download() -> None:
    with pytest.raises(ValueError, match="DEFAULT, d2_in1k"):
        build_backbone("convnext_atto", num_classes=3, weights="IMAGENET1K_V1", source="timm")


def test_failed_download_names_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(name: str, pretrained: bool = False, **kwargs):
        calls.append((name, pretrained))
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(TimmWeightsError) as info:
        build_backbone("convnext_atto", num_classes=3, weights="d2_in1k", source="timm")
    assert calls == [("convnext_atto.d2_in1k", True)]
    assert isinstance(info.value, PretrainedWeightsError)
    message = str(info.value)
    assert "timm/convnext_atto.d2_in1k" in message and "model.backbone.weights=null" in message
    assert "no network" in message


def test_clear_error_without_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    timm_entry.cache_clear()
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[timm\]"'):
        build_backbone("resnet10t", num_classes=3, source="timm")
    timm_entry.cache_clear()


@pytest.mark.slow
def test_icasc_imports_and_trains_without_timm(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys

        class _NoTimm:
            def find_spec(self, name, path=None, target=None):
                if name == "timm" or name.startswith("timm."):
                    raise ImportError("timm is not installed")
                return None

        sys.meta_path.insert(0, _NoTimm())
        import torch
        import icasc.models, icasc.tasks.train
        from icasc.models import ICASCModule, default_attention_layers

        module = ICASCModule("tiny_cnn", num_classes=3)
        total, _, _ = module.compute_loss(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
        total.backward()
        try:
            default_attention_layers(torch.nn.Linear(2, 2))
        except ValueError:
            pass
        assert "timm" not in sys.modules
        print("OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")
