"""Tests for the backbone registry (no downloads: pretrained weight loading is monkeypatched)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from icasc.models.backbones import (
    TORCHVISION_BACKBONES,
    BackboneEntry,
    backbone_source,
    build_backbone,
    classifier_head,
    default_attention_layers,
    find_backbone,
    get_backbone,
    input_defaults,
    list_backbones,
    register_backbone,
    unregister_backbone,
)
from icasc.models.cifar_resnet import CifarResNet
from icasc.models.tiny import TinyCNN

SMALL = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet56", "cifar_resnet110", "tiny_cnn"]
EXPECTED_NAMES = {
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "vgg16",
    "vgg19",
    "vgg16_bn",
    "vgg19_bn",
    *SMALL,
}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _head(model: nn.Module) -> nn.Linear:
    if isinstance(model, torchvision.models.VGG):
        return model.classifier[6]
    return model.fc


def test_registry_contents() -> None:
    assert set(list_backbones()) == EXPECTED_NAMES
    assert list_backbones() == sorted(list_backbones())


@pytest.mark.parametrize("name", SMALL)
def test_small_backbones_forward(name: str) -> None:
    model = build_backbone(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_torchvision_forward(name: str) -> None:
    model = build_backbone(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("name", sorted(TORCHVISION_BACKBONES))
def test_torchvision_construct_all(name: str) -> None:
    # Built on the meta device: cheap, no memory, same module structure.
    with torch.device("meta"):
        model = build_backbone(name, num_classes=7)
    assert type(model) in (torchvision.models.ResNet, torchvision.models.VGG)
    assert _head(model).out_features == 7
    inner, last = default_attention_layers(model)
    modules = dict(model.named_modules())
    assert inner in modules and last in modules


def test_torchvision_state_dict_loads_into_plain_torchvision() -> None:
    model = build_backbone("resnet18", num_classes=7)
    plain = torchvision.models.resnet18(num_classes=7)
    plain.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize(
    ("name", "paper_millions"),
    [("cifar_resnet20", 0.27), ("cifar_resnet32", 0.46), ("cifar_resnet56", 0.85), ("cifar_resnet110", 1.7)],
)
def test_cifar_resnet_param_counts_match_paper(name: str, paper_millions: float) -> None:
    n = _n_params(build_backbone(name, num_classes=10))
    assert round(n / 1e6, 2 if paper_millions < 1 else 1) == paper_millions


def test_cifar_resnet_exact_counts_and_structure() -> None:
    m20 = build_backbone("cifar_resnet20", num_classes=10)
    assert _n_params(m20) == 269_722
    assert _n_params(build_backbone("cifar_resnet110", num_classes=10)) == 1_727_962
    assert [len(getattr(m20, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    x = torch.randn(2, 3, 32, 32)
    feats = m20.relu(m20.bn1(m20.conv1(x)))
    shapes = []
    for stage in (m20.layer1, m20.layer2, m20.layer3):
        feats = stage(feats)
        shapes.append(tuple(feats.shape[1:]))
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_cifar_shortcut_options() -> None:
    a = build_backbone("cifar_resnet20", num_classes=10, shortcut="A")
    b = build_backbone("cifar_resnet20", num_classes=10, shortcut="B")
    # Option B adds two 1x1 projections (16->32, 32->64) with BN.
    assert _n_params(b) - _n_params(a) == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert b(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="shortcut"):
        build_backbone("cifar_resnet20", num_classes=10, shortcut="C")


def test_option_a_shortcut_zero_pads() -> None:
    block = build_backbone("cifar_resnet20", num_classes=10).layer2[0]
    x = torch.randn(1, 16, 8, 8)
    y = block.shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0


def test_tiny_cnn_resolutions_and_size() -> None:
    model = build_backbone("tiny_cnn", num_classes=7)
    assert _n_params(model) < 150_000
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) >= 4
    x = torch.randn(2, 3, 64, 64)
    f1 = model.layer1(model.stem(x))
    f2 = model.layer2(f1)
    assert f1.shape[-2:] == (16, 16)
    assert f2.shape[-2:] == (8, 8)
    assert f2.shape[-1] * 2 == f1.shape[-1]
    no_bn = build_backbone("tiny_cnn", num_classes=3, width=8, batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())
    assert no_bn(x).shape == (2, 3)


def test_default_attention_layers_families() -> None:
    assert default_attention_layers(build_backbone("tiny_cnn", 3)) == ("layer1", "layer2")
    assert default_attention_layers(build_backbone("cifar_resnet20", 3)) == ("layer2", "layer3")
    with torch.device("meta"):
        user_resnet = torchvision.models.resnet34(num_classes=3)  # built outside the registry
    assert default_attention_layers(user_resnet) == ("layer3", "layer4")
    for model in (TinyCNN(3), CifarResNet(20, 3), user_resnet):
        inner, last = default_attention_layers(model)
        modules = dict(model.named_modules())
        assert inner in modules and last in modules


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vgg19", ("features.26", "features.35")),  # conv4_4 / conv5_4 ReLUs
        ("vgg16", ("features.22", "features.29")),  # conv4_3 / conv5_3 ReLUs
    ],
)
def test_default_attention_layers_vgg(name: str, expected: tuple[str, str]) -> None:
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(num_classes=3)
    assert default_attention_layers(model) == expected
    feats = model.features
    # Check the structural meaning: ReLU right after the last conv before the 4th/5th MaxPool.
    pools = [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
    for block, layer_name in zip((3, 4), expected):
        idx = int(layer_name.split(".")[1])
        assert isinstance(feats[idx], nn.ReLU)
        assert isinstance(feats[idx - 1], nn.Conv2d)
        assert idx == pools[block] - 1


@pytest.mark.parametrize("name", ["vgg16_bn", "vgg19_bn"])
def test_default_attention_layers_vgg_bn(name: str) -> None:
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(num_classes=3)
    feats = model.features
    pools = [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
    inner, last = default_attention_layers(model)
    for block, layer_name in zip((3, 4), (inner, last)):
        idx = int(layer_name.split(".")[1])
        assert isinstance(feats[idx], nn.ReLU)
        assert isinstance(feats[idx - 1], nn.BatchNorm2d) and isinstance(feats[idx - 2], nn.Conv2d)
        assert idx == pools[block] - 1


def test_default_attention_layers_unknown_model() -> None:
    with pytest.raises(ValueError, match="inner_layer"):
        default_attention_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError) as info:
        build_backbone("resnet9000", num_classes=3)
    msg = str(info.value)
    for name in ("resnet18", "cifar_resnet20", "tiny_cnn", "vgg19_bn"):
        assert name in msg


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_num_classes(bad: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_backbone("tiny_cnn", num_classes=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["cifar_resnet20", "tiny_cnn"])
def test_weights_not_supported_for_custom_backbones(name: str) -> None:
    with pytest.raises(ValueError, match="weights=None"):
        build_backbone(name, num_classes=3, weights="DEFAULT")


def test_duplicate_registration_rejected() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny_cnn")(lambda num_classes, weights=None: nn.Identity())


def _fake_builder(monkeypatch: pytest.MonkeyPatch, name: str) -> list[dict]:
    """Replace ``torchvision.models.<name>`` by a recorder that never downloads."""
    original = getattr(torchvision.models, name)
    calls: list[dict] = []

    def fake(*, weights=None, **kwargs):
        calls.append({"weights": weights, **kwargs})
        with torch.device("meta"):
            return original(weights=None, **kwargs)  # 1000-way head when num_classes not given

    monkeypatch.setattr(torchvision.models, name, fake)
    return calls


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_weights_passthrough_replaces_head(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    calls = _fake_builder(monkeypatch, name)
    model = build_backbone(name, num_classes=7, weights="IMAGENET1K_V1")
    assert calls == [{"weights": "IMAGENET1K_V1"}]
    head = _head(model)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert head.weight.device.type == "cpu"  # freshly created head


def test_weights_passthrough_keeps_1000_head(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_builder(monkeypatch, "resnet50")
    model = build_backbone("resnet50", num_classes=1000, weights="DEFAULT")
    assert calls == [{"weights": "DEFAULT"}]
    assert model.fc.weight.device.type == "meta"  # the pretrained head was kept


def test_no_weights_builds_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_builder(monkeypatch, "resnet18")
    model = build_backbone("resnet18", num_classes=7)
    assert calls == [{"weights": None, "num_classes": 7}]
    assert model.fc.out_features == 7


def test_invalid_weights_name_lists_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_builder(monkeypatch, "resnet18")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        build_backbone("resnet18", num_classes=7, weights="IMAGENET_BOGUS")
    assert calls == []


def test_input_defaults() -> None:
    tv = input_defaults("resnet18")
    assert tv == {"image_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    cifar = input_defaults("cifar_resnet56")
    assert cifar["image_size"] == 32 and cifar["mean"][0] == pytest.approx(0.4914)
    assert set(input_defaults("tiny_cnn")) == {"image_size", "mean", "std"}
    with pytest.raises(KeyError, match="resnet18"):
        input_defaults("nope")


# ------------------------------------------------------------------------------- registry metadata


@pytest.mark.parametrize(
    ("name", "source", "head", "layers"),
    [
        ("resnet50", "torchvision", "fc", ("layer3", "layer4")),
        ("vgg16", "torchvision", "classifier.6", ("features.22", "features.29")),
        ("cifar_resnet20", "icasc", "fc", ("layer2", "layer3")),
        ("tiny_cnn", "icasc", "fc", ("layer1", "layer2")),
    ],
)
def test_entries_declare_their_metadata(name: str, source: str, head: str, layers: tuple[str, str]) -> None:
    entry = get_backbone(name)
    assert isinstance(entry, BackboneEntry) and entry.name == name
    assert entry.source == source == backbone_source(name) and entry.head == head
    assert (entry.pretrained is not None) == (source == "torchvision")
    assert entry.input_defaults.as_dict() == input_defaults(name)
    with torch.device("meta"):
        model = build_backbone(name, num_classes=3)
    assert entry.attention_layers(model) == layers == default_attention_layers(model)
    assert find_backbone(model) is entry  # the name recorded on the built model, not its type
    assert classifier_head(model) is model.get_submodule(head)
    with pytest.raises(AttributeError):
        entry.source = "user"  # type: ignore[misc]  (frozen)


def test_models_built_outside_the_registry_are_found_by_type() -> None:
    with torch.device("meta"):
        vgg = torchvision.models.vgg19(num_classes=3)
    assert find_backbone(vgg).source == "torchvision"
    assert classifier_head(vgg) is vgg.classifier[6]
    assert find_backbone(nn.Linear(2, 2)) is None
    assert backbone_source("nope") is None


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="timm"):
        build_backbone("resnet18", num_classes=3, source="hub")
    with pytest.raises(KeyError, match="source='timm'"):
        get_backbone("convnext_tiny")  # a timm name asked of icasc's registry


class _UserNet(nn.Module):
    """A user's architecture, not known to icasc."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.0), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean(dim=(2, 3)))


@pytest.fixture
def user_backbone():
    """``user_net`` registered for one test, removed afterwards (the registry is process-wide)."""

    @register_backbone(
        "user_net",
        inner_layer="stem",
        last_layer="block",
        head="head.1",
        input_defaults={"image_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    )
    def build_user_net(num_classes: int, weights: str | None = None, **kwargs) -> nn.Module:
        return _UserNet(num_classes, **kwargs)

    yield "user_net"
    unregister_backbone("user_net")


def test_user_registered_backbone_trains_with_attention(user_backbone: str) -> None:
    from icasc.models import ICASCModule

    torch.manual_seed(0)
    module = ICASCModule({"name": user_backbone, "width": 4}, num_classes=3)
    assert user_backbone in list_backbones()
    assert dict(module.attention.layers) == {"inner": "stem", "last": "block"}
    assert get_backbone(user_backbone).source == "user"
    assert classifier_head(module.backbone) is module.backbone.head[1]
    assert input_defaults(user_backbone)["image_size"] == 32
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    total, terms, _ = module.compute_loss(images, targets)
    assert {"separation_inner", "separation_last", "consistency"} <= set(terms)
    assert torch.isfinite(total)
    total.backward()
    grad = module.backbone.stem[0].weight.grad
    assert grad is not None and torch.count_nonzero(grad) > 0
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(user_backbone)(lambda num_classes, weights=None: nn.Identity())


def test_unregister_removes_the_name(user_backbone: str) -> None:
    entry = unregister_backbone(user_backbone)
    assert entry.name == user_backbone and user_backbone not in list_backbones()
    register_backbone(user_backbone)(entry.builder)  # registered anew (for the fixture's clean-up)
    with pytest.raises(KeyError, match="nope"):
        unregister_backbone("nope")


def test_entry_without_layers_names_the_options() -> None:
    register_backbone("bare_net")(lambda num_classes, weights=None: _UserNet(num_classes))
    try:
        model = build_backbone("bare_net", num_classes=2)
        with pytest.raises(ValueError, match="inner_layer"):
            default_attention_layers(model)
        with pytest.raises(ValueError, match="head"):
            classifier_head(model)
    finally:
        unregister_backbone("bare_net")


def test_replace_classifier_in_a_sequential() -> None:
    with torch.device("meta"):
        model = torchvision.models.vgg16(num_classes=1000)
    new = get_backbone("vgg16").replace_classifier(model, 7)
    assert model.classifier[6] is new and new.out_features == 7 and new.weight.device.type == "cpu"
