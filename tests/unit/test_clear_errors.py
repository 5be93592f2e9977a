"""Clear errors that name the file, the option and the fix (issue 10): damaged checkpoints and exports,
unavailable pretrained weights, unreadable images, an unset or missing data.root, and backbone names."""

from __future__ import annotations

import logging
import re
import urllib.error
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image

from icasc.data import (
    Caltech256DataModule,
    CIFAR100DataModule,
    CUB200DataModule,
    FashionMNISTDataModule,
    ImageNetDataModule,
    VOC2012DataModule,
)
from icasc.data.images import load_readable_images
from icasc.models.backbones import build_backbone
from icasc.models.export import export_backbone, load_exported
from icasc.models.files import check_checkpoint_file, check_safetensors_file, read_checkpoint
from icasc.models.loading import load_classifier, load_trained, load_weights_into
from icasc.models.pretrained import PretrainedWeightsError
from icasc.tasks.evaluate import load_module
from tests.conftest import compose_train
from tests.fakedata import write_fake_cifar100, write_fake_cub200
from tests.helpers import save_tiny_checkpoint

TRUNCATED = r"is truncated or not a Lightning checkpoint"
NOT_SAFETENSORS = r"is truncated or not a safetensors file"


class NotAllowed:
    """A class that ``torch.load(weights_only=True)`` refuses to unpickle."""


# --------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Lightning checkpoint of an ICASCModule (tiny_cnn, 5 classes)."""
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    save_tiny_checkpoint(path)
    return path


def _damaged(source: Path, kind: str, folder: Path) -> Path:
    """A copy of ``source`` cut to half its size, or a file of garbage, with the same name."""
    path = folder / source.name
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"not a checkpoint at all\n" * 40)
    return path


def test_a_complete_checkpoint_passes_the_cheap_check(checkpoint):
    assert check_checkpoint_file(checkpoint) == checkpoint


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
@pytest.mark.parametrize(
    ("option", "load"),
    [
        ("ckpt_path", check_checkpoint_file),
        ("ckpt_path", load_trained),
        ("ckpt_path", load_classifier),  # explain, param_saliency
        ("ckpt_path", load_module),  # -cn eval
        ("init_from", lambda path: load_weights_into(build_backbone("tiny_cnn", 5), path)),
    ],
)
def test_truncated_or_garbage_checkpoint_names_path_and_fix(checkpoint, tmp_path, kind, option, load):
    path = _damaged(checkpoint, kind, tmp_path)
    with pytest.raises(ValueError, match=TRUNCATED) as caught:
        load(path)
    message = str(caught.value)
    assert f"{option}={path}" in message
    assert "copy it again" in message and "checkpoints/last.ckpt" in message
    assert "PytorchStreamReader" not in message


def test_checkpoint_directory_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"ckpt_path={re.escape(str(tmp_path))}/nope.ckpt: no such"):
        check_checkpoint_file(tmp_path / "nope.ckpt")
    with pytest.raises(ValueError, match=r"is a directory, not a Lightning checkpoint"):
        check_checkpoint_file(tmp_path)


def test_zip_without_a_pickle_is_not_a_checkpoint(tmp_path):
    import zipfile

    path = tmp_path / "model.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match=rf"{TRUNCATED}.*without the data.pkl"):
        check_checkpoint_file(path, "init_from")


def test_checkpoint_of_another_project_names_the_refused_class(tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"thing": NotAllowed()}}, path)
    with pytest.raises(ValueError, match=r"older icasc or is not a checkpoint of this project") as caught:
        read_checkpoint(path, "init_from")
    assert f"init_from={path}" in str(caught.value)
    assert "NotAllowed" in str(caught.value)


# --------------------------------------------------------------------------------------- safetensors


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    model = build_backbone("tiny_cnn", 10, width=8)
    card = {"backbone": "tiny_cnn", "num_classes": 10, "multilabel": False, "backbone_kwargs": {"width": 8}}
    return export_backbone(model, tmp_path / "export", card)["weights"].parent


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_truncated_or_garbage_safetensors_names_path_and_fix(export_dir, kind):
    weights = export_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"\xff" * 64)
    for option, load in [
        (None, load_exported),
        ("ckpt_path", load_classifier),
        ("ckpt_path", load_module),
        ("init_from", lambda p: load_weights_into(build_backbone("tiny_cnn", 10, width=8), p)),
    ]:
        with pytest.raises(ValueError, match=NOT_SAFETENSORS) as caught:
            load(weights)
        message = str(caught.value)
        assert (f"{option}={weights}" if option else str(weights)) in message
        assert "copy the complete file again" in message and "-cn export" in message
        if kind == "garbage":
            assert "header too large" in message


def test_safetensors_header_that_is_not_json(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes((8).to_bytes(8, "little") + b"{broken!" + b"\0" * 8)
    with pytest.raises(ValueError, match=rf"{NOT_SAFETENSORS} \(its header is not JSON"):
        check_safetensors_file(path)


# ---------------------------------------------------------------------------------- exported names


@pytest.mark.parametrize(("name", "kwargs"), [("tiny_cnn", {"width": 8}), ("cifar_resnet20", {})])
def test_exported_backbones_keep_their_registry_names(tmp_path, name, kwargs):
    model = build_backbone(name, 10, **kwargs).eval()
    card = {"backbone": name, "num_classes": 10, "multilabel": False, "backbone_kwargs": kwargs}
    folder = export_backbone(model, tmp_path, card)["weights"].parent
    module, info = load_module(folder)  # the eval report's "checkpoint" entry
    assert info["backbone"] == name and module.backbone_spec == {"name": name, **kwargs}
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(module.backbone(x), model(x))  # the exported weights, not fresh ones
    assert load_classifier(folder)[1]["backbone"] == name  # explain, param_saliency, before/after


# ------------------------------------------------------------------------------- pretrained weights


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network: torch.hub's download fails at once; its cache is an empty folder under tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_pretrained_weights_without_network_say_where_to_copy_them(offline):
    with pytest.raises(PretrainedWeightsError) as caught:
        build_backbone("resnet18", 10, weights="IMAGENET1K_V1")
    message = str(caught.value)
    assert "could not download the pretrained weights IMAGENET1K_V1 of resnet18" in message
    assert "no network?" in message and "Temporary failure in name resolution" in message
    assert f"copy it to {offline / 'resnet18-f37072fd.pth'}" in message
    assert "torch.hub.get_dir()/checkpoints" in message
    assert "model.backbone.weights=null" in message
    assert caught.value.cache_file == offline / "resnet18-f37072fd.pth"


def test_pretrained_init_from_without_network_says_init_from_null(offline):
    with pytest.raises(PretrainedWeightsError) as caught:
        load_weights_into(build_backbone("resnet18", 10), "torchvision:IMAGENET1K_V1", arch="resnet18")
    message = str(caught.value)
    assert "could not download" in message and str(offline / "resnet18-f37072fd.pth") in message
    assert "init_from=null (instead of init_from=torchvision:IMAGENET1K_V1)" in message
    assert "model.backbone.weights" not in message


def test_pretrained_weights_in_the_config_fail_with_the_same_message(offline):
    cfg = compose_train(["model/backbone=resnet18", "model.backbone.weights=IMAGENET1K_V1"])
    with pytest.raises(InstantiationException, match=r"could not download the pretrained weights") as caught:
        instantiate(cfg.model)
    assert "model.backbone.weights=null" in str(caught.value)


def test_damaged_cached_pretrained_weights_say_delete_or_replace(offline):
    offline.mkdir(parents=True)
    (offline / "resnet18-f37072fd.pth").write_bytes(b"half a download")
    with pytest.raises(PretrainedWeightsError) as caught:
        build_backbone("resnet18", 10, weights="DEFAULT")
    message = str(caught.value)
    assert (
        "could not read the pretrained weights IMAGENET1K_V1 (DEFAULT) of resnet18 from torch.hub's cache"
        in message
    )
    assert str(offline / "resnet18-f37072fd.pth") in message and "truncated" in message
    assert "Delete it" in message


# ------------------------------------------------------------------------------------ image files


def _image_folder(folder: Path, good: int, bad: list[str]) -> Path:
    folder.mkdir()
    for i in range(good):
        Image.new("RGB", (40, 30), (40 * i, 100, 200)).save(folder / f"good_{i}.png")
    for name in bad:
        (folder / name).write_text("not an image\n")
    return folder


def test_unreadable_images_are_skipped_with_a_warning_naming_each(tmp_path, caplog):
    folder = _image_folder(tmp_path / "images", 2, ["broken.jpg"])
    files = sorted(folder.iterdir())
    with caplog.at_level(logging.WARNING, logger="icasc.data.images"):
        images, read = load_readable_images(files, 32, (0.5,) * 3, (0.5,) * 3)
    assert images.shape == (2, 3, 32, 32)
    assert [f.name for f in read] == ["good_0.png", "good_1.png"]
    assert any(str(folder / "broken.jpg") in r.getMessage() for r in caplog.records)


def test_the_limit_counts_readable_images(tmp_path):
    folder = _image_folder(tmp_path / "images", 3, ["a_broken.png"])
    images, read = load_readable_images(sorted(folder.iterdir()), 16, (0.5,) * 3, (0.5,) * 3, limit=2)
    assert [f.name for f in read] == ["good_0.png", "good_1.png"] and images.shape[0] == 2


def test_no_readable_image_is_an_error_naming_them(tmp_path):
    folder = _image_folder(tmp_path / "images", 0, ["a.png", "b.jpg"])
    with pytest.raises(ValueError, match=r"none of the 2 image file\(s\) could be read") as caught:
        load_readable_images(sorted(folder.iterdir()), 16, (0.5,) * 3, (0.5,) * 3)
    assert str(folder / "a.png") in str(caught.value) and str(folder / "b.jpg") in str(caught.value)


# ---------------------------------------------------------------------------------------- data.root


@pytest.mark.parametrize(
    ("data", "downloadable"),
    [
        ("cifar100", True),
        ("caltech256", True),
        ("voc2012", True),
        ("imagenet", False),
        ("cub200", False),
        ("fashion_mnist", True),
    ],
)
def test_unset_data_root_names_the_option(data, downloadable):
    cfg = compose_train([f"data={data}"], tiny=False)
    with pytest.raises(InstantiationException, match=r"data\.root is not set: set data\.root") as caught:
        instantiate(cfg.data)
    assert ("data.download=true" in str(caught.value)) is downloadable
    assert "MissingMandatoryValue" not in str(caught.value)


@pytest.mark.parametrize(
    ("make", "dataset", "fix"),
    [
        (lambda root: CUB200DataModule(root), "CUB-200-2011", "CUB_200_2011.tgz"),
        (lambda root: CIFAR100DataModule(root), "CIFAR-100", "data.download=true"),
        (lambda root: Caltech256DataModule(root), "Caltech-256", "data.download=true"),
        (lambda root: VOC2012DataModule(root), "PASCAL VOC 2012", "data.download=true"),
        (lambda root: ImageNetDataModule(root), "ImageNet", "cannot download ImageNet"),
        (lambda root: FashionMNISTDataModule(root), "Fashion-MNIST", "apt-get install dataset-fashion-mnist"),
    ],
)
def test_a_missing_root_is_called_missing_not_incomplete(tmp_path, make, dataset, fix):
    root = tmp_path / "not_there"
    with pytest.raises(FileNotFoundError) as caught:
        make(root).setup("fit")
    message = str(caught.value)
    assert f"{dataset} is missing: data.root={root} does not exist" in message
    assert fix in message and "incomplete" not in message


def test_an_incomplete_cub_lists_what_is_missing(tmp_path):
    root = write_fake_cub200(tmp_path / "cub", num_classes=2, per_class=1, size=20)
    (root / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"CUB-200-2011 is incomplete under .*: missing classes\.txt"):
        CUB200DataModule(root, num_classes=2).setup("fit")


def test_an_incomplete_cifar100_lists_what_is_missing(tmp_path):
    write_fake_cifar100(tmp_path, 1, 1, num_classes=5)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match=r"CIFAR-100 is incomplete under .*: missing meta"):
        CIFAR100DataModule(tmp_path, num_classes=5).setup("fit")
