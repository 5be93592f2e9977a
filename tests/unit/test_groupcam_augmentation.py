"""GroupCAMAugmentation (Group-CAM paper §5): exact steps, model-state hygiene, hooks, Lightning wiring."""

from __future__ import annotations

import copy
import gc as garbage
import json
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from icasc.attention.capture import FeatureCapture
from icasc.bench.__main__ import main as bench_main
from icasc.bench.augment import augment_benchmark
from icasc.callbacks import GroupCAMAugmentation, GroupCAMBlur, binarize, compose_augmented
from icasc.callbacks.augmentation_grid import log_grid
from icasc.callbacks.groupcam_blur import PAPER_RELATIVE_BLUR, blur_size, predicted_class
from icasc.losses import ICASCLoss
from icasc.models import ICASCModule, build_backbone, default_attention_layers
from icasc.models.tiny import TinyCNN
from icasc.saliency import GroupCAM
from icasc.saliency.blur import gaussian_blur
from icasc.utils import eval_mode

OFF = {"separation_inner": 0.0, "separation_last": 0.0, "consistency": 0.0}


def tiny(seed: int = 0, num_classes: int = 10) -> TinyCNN:
    torch.manual_seed(seed)
    model = TinyCNN(num_classes=num_classes, width=4)  # layer2: 16 channels, 4x4 for 32x32 inputs
    for m in model.modules():  # non-trivial running statistics: train and eval mode differ
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.train()


def images(b: int = 4, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def attached(model: nn.Module, **kwargs) -> GroupCAMAugmentation:
    cb = GroupCAMAugmentation(**kwargs)
    cb.attach(model)
    return cb


# -------------------------------------------------------------------------------------------- the steps


def test_paper_compose_equals_the_formula_on_a_constructed_example() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4) / 7.0
    blurred = torch.full_like(x, -2.5)
    masks = torch.zeros(2, 4, 4)
    masks[0, :2] = 1.0  # image 0: top half kept
    masks[1, :, 3] = 1.0  # image 1: last column kept
    out = compose_augmented(x, blurred, masks, "paper")
    m = masks[:, None]
    assert torch.equal(out, x * m + blurred * (1 - m))
    assert torch.equal(out[0, :, :2], x[0, :, :2]) and (out[0, :, 2:] == -2.5).all()
    assert torch.equal(out[1, :, :, 3], x[1, :, :, 3]) and (out[1, :, :, :3] == -2.5).all()
    reference = compose_augmented(x, blurred, masks, "reference_code")
    torch.testing.assert_close(reference, x * m + blurred + (1 - m), rtol=0, atol=0)
    assert not torch.equal(reference, out)


def test_binarize_is_binary_with_per_image_thresholds() -> None:
    base = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = torch.cat([base, 100.0 + 10.0 * base])  # same pattern, very different levels
    per_image = binarize(maps, "image_mean")
    assert set(per_image.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(per_image[0], per_image[1])
    assert torch.equal(per_image[0], (base[0] >= base[0].mean()).float())
    assert 0 < per_image[0].sum() < 64
    # batch_mean (the release): each map normalised to [0, 1], then one mean for the batch, so the
    # same pattern at another level gets the same mask (raw maps would blur image 0 and keep image 1)
    batch = binarize(maps, "batch_mean")
    assert torch.equal(batch[0], batch[1])
    normalised = (base - base.min()) / (base.max() - base.min())
    assert torch.equal(batch[0], (normalised[0] >= normalised.mean()).float())
    other = torch.cat([base, torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1)) ** 4])
    scaled = (other - other.amin((1, 2), keepdim=True)) / (
        other.amax((1, 2), keepdim=True) - other.amin((1, 2), keepdim=True)
    )
    assert torch.equal(binarize(other, "batch_mean"), (scaled >= scaled.mean()).float())
    assert binarize(torch.zeros(2, 3, 3), "batch_mean").eq(1).all()  # constant maps are kept
    # Ties go to 1 (the release's `where(M < mean, 0, 1)`): a constant map keeps the whole image.
    assert binarize(torch.zeros(1, 3, 3)).eq(1).all()
    with pytest.raises(ValueError, match="threshold"):
        binarize(maps, "median")


def test_augment_is_fast_groupcam_binarised_and_blurred() -> None:
    model, x, t = tiny(), images(), torch.tensor([0, 3, 5, 9])
    cb = attached(model, groups=4, blur_kernel=9, blur_sigma=3.0)
    result = cb.augment(x, t)
    expected_maps = GroupCAM(
        model, "layer2", groups=4, theta=None, blur_kernel=9, blur_sigma=3.0, gradient_weights=False
    ).attribute(x, t)
    torch.testing.assert_close(result.maps, expected_maps)
    assert torch.equal(result.masks, binarize(result.maps, "image_mean"))
    m = result.masks[:, None]
    torch.testing.assert_close(result.images, x * m + gaussian_blur(x, 9, 3.0) * (1 - m), rtol=0, atol=0)
    assert not result.images.requires_grad


def test_saliency_passes_leave_bn_stats_modes_and_grads_untouched() -> None:
    model = tiny()
    model.layer1.eval()  # a mixed-mode model: each module's own mode must come back
    modes = {name: m.training for name, m in model.named_modules()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    grad_enabled: list[bool] = []
    model.register_forward_pre_hook(lambda m, a: grad_enabled.append(torch.is_grad_enabled()))
    bn_training: list[bool] = []
    model.layer2[1].register_forward_pre_hook(lambda m, a: bn_training.append(m.training))
    engine = GroupCAMBlur(groups=4)  # the callback's Lightning-free engine
    engine.attach(model)
    engine.apply({"image": images(), "target": torch.tensor([1, 2, 3, 4])})
    assert grad_enabled and not any(grad_enabled)  # every pass under no_grad
    assert bn_training and not any(bn_training)  # every pass in eval mode
    assert {name: m.training for name, m in model.named_modules()} == modes
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
    assert all(p.grad is None for p in model.parameters())


def test_one_hook_kept_only_for_its_own_pass_and_removed_idempotently() -> None:
    model = tiny()
    cb = GroupCAMAugmentation(groups=4)
    assert len(model.layer2._forward_hooks) == 0 and not cb.attached
    cb.attach(model)
    assert cb.groupcam.layer == default_attention_layers(model)[1] == "layer2"
    assert len(model._forward_hooks) == 0 and len(model.layer2._forward_hooks) == 1
    model(images())  # an ordinary (training) forward: the hook keeps nothing
    assert cb._features is None
    for _ in range(3):
        cb.apply({"image": images(), "target": torch.tensor([1, 2, 3, 4])})
        assert len(model.layer2._forward_hooks) == 1 and cb._features is None
    cb.attach(model)  # re-attaching replaces the hook
    assert len(model.layer2._forward_hooks) == 1
    cb.detach()
    cb.detach()
    assert len(model.layer2._forward_hooks) == 0 and not cb.attached


@pytest.mark.parametrize("name", ["tiny_cnn", "cifar_resnet20", "resnet18"])
def test_any_registered_backbone_uses_its_default_last_layer(name: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, num_classes=5)
    cb = attached(model, groups=16)
    assert cb.groupcam.layer == default_attention_layers(model)[1]
    batch = {"image": images(2), "target": torch.tensor([0, 4])}
    cb.apply(batch)
    assert batch["image"].shape == (2, 3, 32, 32) and torch.isfinite(batch["image"]).all()
    explicit = attached(model, layer=default_attention_layers(model)[0], groups=16)
    assert explicit.groupcam.layer == default_attention_layers(model)[0]


def test_groupcam_group_maps_and_given_baseline_match_its_own_passes() -> None:
    """The pieces added to GroupCAM for the callback: maps from captured activations, a reused baseline."""
    model, x, t = tiny().eval(), images(3), torch.tensor([2, 5, 7])
    gc = GroupCAM(model, "layer2", groups=4, theta=None, gradient_weights=False)
    maps, _ = gc.masks(x, t)
    with FeatureCapture(model, ["layer2"]) as capture, torch.no_grad():
        model(x)
    torch.testing.assert_close(gc.group_maps(capture.features["layer2"]), maps)
    scores = gc.score_masks(x, maps, t)
    torch.testing.assert_close(gc.score_masks(x, maps, t, blurred=gc.baseline(x)), scores)
    with pytest.raises(ValueError, match="needs grads"):
        GroupCAM(model, "layer2", groups=4).group_maps(capture.features["layer2"])
    with pytest.raises(ValueError, match="blurred must be shaped"):
        gc.score_masks(x, maps, t, blurred=x[:2])


# ---------------------------------------------------------------------------------------- multi-label


def test_multilabel_score_is_the_sum_of_the_positive_classes_sigmoid_gains() -> None:
    model, x = tiny().eval(), images(3)
    gc = GroupCAM(model, "layer2", groups=4, theta=None, gradient_weights=False, chunk_size=5)
    maps, _ = gc.masks(x, 0)
    positives = torch.tensor([[1, 0, 0, 1, 0, 0, 0, 0, 0, 1], [0] * 9 + [1], [0] * 10], dtype=torch.float32)
    scores = gc.score_masks(x, maps, positives)
    b, g = maps.shape[:2]
    with torch.no_grad():
        probs = model(gc.scored_inputs(x, gc.baseline(x), maps, slice(0, b * (g + 1)))).sigmoid()
    for i in range(b):
        classes = positives[i].nonzero().flatten()
        for j in range(g):
            expected = probs[i * g + j, classes].sum() - probs[b * g + i, classes].sum()
            torch.testing.assert_close(scores[i, j], expected)
    assert (scores[2] == 0).all()  # no positive class: nothing to explain
    with pytest.raises(ValueError, match="10 classes"):
        gc.score_masks(x, maps, positives[:, :7])


def test_multilabel_targets_explain_the_positive_classes() -> None:
    model, x = tiny(), images(3)
    positives = torch.zeros(3, 10)
    positives[0, [1, 4]] = 1
    positives[1, 7] = 1  # image 2 has no positive class
    cb = attached(model, groups=4)
    result = cb.augment(x, positives)
    gc = cb.groupcam
    with eval_mode(model):
        maps, _ = gc.masks(x, 0)
        expected = gc.combine(maps, gc.score_masks(x, maps, positives), (32, 32))
    torch.testing.assert_close(result.maps, expected)
    assert (result.maps[2] == 0).all() and torch.equal(result.images[2], x[2])  # kept as it is
    with pytest.raises(ValueError, match="multi-hot"):
        cb.augment(x, positives[:, :5])


# ---------------------------------------------------------------------------------- options on a batch


def test_p_replaces_only_the_drawn_images_reproducibly() -> None:
    model, x, t = tiny(), images(8), torch.arange(8)
    none = GroupCAMBlur(groups=4, p=0.0)  # the engine allows p = 0 (the callback refuses it, see below)
    none.attach(model)
    batch = {"image": x, "target": t}
    assert none.apply(batch) is None and batch["image"] is x
    results = []
    for _ in range(2):
        cb = attached(model, groups=4, p=0.5, seed=3)
        batch = {"image": x, "target": t}
        results.append((cb.apply(batch), batch["image"]))
    (first, out), (second, _) = results
    assert torch.equal(first.index, second.index) and 0 < len(first.index) < 8
    drawn = first.index.tolist()
    expected = attached(model, groups=4).augment(x[first.index], t[first.index]).images
    torch.testing.assert_close(out[first.index], expected, rtol=0, atol=0)
    assert any(not torch.equal(out[i], x[i]) for i in drawn)
    assert all(torch.equal(out[i], x[i]) for i in range(8) if i not in drawn)


def test_append_mode_adds_the_copies_with_their_targets_and_boxes() -> None:
    model, x = tiny(), images(4)
    t, box, ids = torch.tensor([1, 2, 3, 4]), torch.rand(4, 4), torch.arange(4)
    cb = attached(model, groups=4, mode="append")
    batch = {"image": x, "target": t, "box": box, "id": ids, "name": "kept"}
    result = cb.apply(batch)
    assert torch.equal(batch["image"], torch.cat([x, result.images]))
    assert torch.equal(batch["target"], torch.cat([t, t])) and torch.equal(
        batch["box"], torch.cat([box, box])
    )
    assert torch.equal(batch["id"], torch.cat([ids, ids])) and batch["name"] == "kept"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"groups": 0}, "groups"),
        ({"threshold": "mean"}, "threshold"),
        ({"compose": "blend"}, "compose"),
        ({"p": 1.5}, "p must"),
        ({"mode": "mix"}, "mode"),
        ({"start_epoch": -1}, "start_epoch"),
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"blur_kernel": 50}, "blur_kernel"),
        ({"blur_sigma": 0.0}, "blur_sigma"),
        ({"memory_budget_mb": 0}, "memory_budget_mb"),
        ({"log_every_n_steps": 0}, "log_every_n_steps"),
        ({"log_images": 0}, "log_images"),
        ({"seed": 1.5}, "seed"),
        ({"layer": ""}, "layer"),
        ({"blur_relative": "yes"}, "blur_relative must be true or false"),
        ({"blur_relative": True}, r"blur_kernel must be a fraction .* \(0, 1\] .* 51/224 = 0.2277"),
        ({"blur_relative": True, "blur_kernel": 0.2}, r"blur_sigma must be a fraction .* 50/224 = 0.2232"),
        ({"blur_relative": True, "blur_kernel": 0.2, "blur_sigma": 1.5}, "blur_sigma must be a fraction"),
        ({"blur_kernel": 0.2}, r"blur_kernel must be an odd positive int \(pixels\), or a fraction"),
        ({"mask_class": "true"}, r"mask_class must be one of \('target', 'predicted'\)"),
        ({"p_end": 1.5}, r"p_end must be a probability in \[0, 1\]"),
        ({"p": 0.0}, "no image would ever be augmented"),
        ({"p": 0.0, "p_end": 0.0}, "no image would ever be augmented"),
    ],
)
def test_invalid_options_raise_naming_the_option(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GroupCAMAugmentation(**kwargs)


def test_misuse_gives_clear_errors() -> None:
    model = tiny()
    with pytest.raises(RuntimeError, match="attach"):
        GroupCAMAugmentation().augment(images(), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(
        ValueError, match=r"layer='layer9': unknown layer 'layer9'.*valid layer names: .*layer2"
    ):
        GroupCAMAugmentation(layer="layer9").attach(model)
    with pytest.raises(ValueError, match="divisor of 16"):
        attached(model, groups=5).augment(images(), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="out of range"):
        attached(model, groups=4).augment(images(), torch.tensor([0, 1, 2, 30]))
    with pytest.raises(TypeError, match="dict batches"):
        attached(model, groups=4).apply((images(), torch.tensor([0, 1, 2, 3])))


# --------------------------------------------------------------------- blur size, mask class, schedule


def test_blur_size_scales_the_papers_blur_with_the_shorter_side() -> None:
    assert blur_size(51, 50.0, False, 64, 64) == (51, 50.0)  # pixels: unchanged (clipped later)
    assert blur_size(*PAPER_RELATIVE_BLUR, True, 224, 224) == (51, pytest.approx(50.0))
    assert blur_size(*PAPER_RELATIVE_BLUR, True, 64, 80) == (15, pytest.approx(50 / 224 * 64))
    assert blur_size(*PAPER_RELATIVE_BLUR, True, 448, 500) == (103, pytest.approx(100.0))
    assert blur_size(0.01, 0.05, True, 32, 32) == (1, pytest.approx(1.6))  # under 2 px: no blur at all


@pytest.mark.parametrize("size", [32, 48])
def test_relative_blur_composes_with_the_kernel_for_the_image_size(size: int) -> None:
    model, x, t = tiny(), images(size=size), torch.tensor([0, 3, 5, 9])
    cb = attached(model, groups=4, blur_relative=True, blur_kernel=0.25, blur_sigma=0.1)
    result = cb.augment(x, t)
    kernel, sigma = 2 * int(0.25 * size / 2) + 1, 0.1 * size  # 9 / 3.2 px on 32, 13 / 4.8 px on 48
    blurred = gaussian_blur(x, kernel, sigma)
    torch.testing.assert_close(cb.blur(x), blurred, rtol=0, atol=0)
    m = result.masks[:, None]
    torch.testing.assert_close(result.images, x * m + blurred * (1 - m), rtol=0, atol=0)
    # the same blur is Group-CAM's baseline: the maps equal Group-CAM built with those pixel sizes
    expected = GroupCAM(
        model, "layer2", groups=4, theta=None, blur_kernel=kernel, blur_sigma=sigma, gradient_weights=False
    ).attribute(x, t)
    torch.testing.assert_close(result.maps, expected)


def test_predicted_mask_class_explains_the_models_top_class() -> None:
    model, x = tiny(), images(6)
    with torch.no_grad(), eval_mode(model):
        predicted = model(x).argmax(1)
    wrong = (predicted + 1) % 10  # a ground truth the model never predicts
    result = attached(model, groups=4, mask_class="predicted").augment(x, wrong)
    torch.testing.assert_close(result.maps, attached(model, groups=4).augment(x, predicted).maps)
    assert not torch.allclose(result.maps, attached(model, groups=4).augment(x, wrong).maps)


def test_predicted_class_of_multilabel_logits_is_the_positive_set_or_the_top_class() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, -0.5, -2.0], [-1.0, 0.0, 1.0]])
    assert torch.equal(predicted_class(logits), torch.tensor([0, 1, 2]))
    expected = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.equal(predicted_class(logits, multilabel=True), expected)


def _trainer(epoch: int = 0, step: int = 0, epochs: int | None = 2, batches: float = 5, max_steps: int = -1):
    return SimpleNamespace(
        max_epochs=epochs,
        num_training_batches=batches,
        current_epoch=epoch,
        global_step=step,
        max_steps=max_steps,
    )


def test_p_end_moves_p_linearly_from_the_first_to_the_last_step() -> None:
    cb = GroupCAMAugmentation(p=1.0, p_end=0.0)
    steps = [(e, b) for e in range(2) for b in range(5)]  # 2 epochs x 5 batches
    ps = [cb.p_at(_trainer(epoch=e), b) for e, b in steps]
    assert ps == pytest.approx([1 - i / 9 for i in range(10)])
    late = GroupCAMAugmentation(p=0.2, p_end=1.0, start_epoch=1)  # the schedule runs over epoch 1 only
    assert [late.p_at(_trainer(epoch=1), b) for b in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    # no epoch limit: over trainer.max_steps
    by_steps = GroupCAMAugmentation(p=0.0, p_end=1.0)
    assert by_steps.p_at(_trainer(step=3, epochs=-1, max_steps=7), 3) == pytest.approx(0.5)
    assert GroupCAMAugmentation(p=0.3).p_at(_trainer(epoch=1), 4) == 0.3  # no schedule: p throughout


# ------------------------------------------------------------------------------------- inside Lightning


class FixedData(Dataset):
    def __init__(self, n: int = 16, classes: int = 10) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.targets = torch.arange(n) % classes
        self.boxes = torch.tensor([[4.0, 4.0, 20.0, 20.0]]).repeat(n, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "target": self.targets[i], "box": self.boxes[i]}


class Recording(ICASCModule):
    """Records what ``training_step`` receives and whether every module is in train mode there."""

    def __init__(self, fail_at: int | None = None, record: bool = True) -> None:
        super().__init__(
            {"name": "tiny_cnn", "width": 4}, 10, loss=ICASCLoss(weights=OFF), val_attention=False
        )
        self.seen: list[dict[str, torch.Tensor]] = []
        self.all_training: list[bool] = []
        self.fail_at, self.record = fail_at, record

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("boom")
        if self.record:
            self.seen.append({k: v.clone() for k, v in batch.items()})
        self.all_training.append(all(m.training for m in self.modules()))
        return super().training_step(batch, batch_idx)


class Watch(L.Callback):
    """Per training batch (after the augmentation): hooks on the layer and live tensors."""

    def __init__(self, cb: GroupCAMAugmentation) -> None:
        self.cb, self.hooks, self.handles, self.tensors = cb, [], set(), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.hooks.append(len(pl_module.backbone.layer2._forward_hooks))
        self.handles.add(self.cb._handle.id)
        garbage.collect()
        self.tensors.append(sum(isinstance(o, torch.Tensor) for o in garbage.get_objects()))


def fit(
    module: L.LightningModule, callbacks: list, tmp_path: Path, epochs: int = 1, batch_size: int = 4, **kw
):
    torch.manual_seed(0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_val_batches=0,
        logger=kw.pop("logger", False),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kw,
    )
    trainer.fit(module, DataLoader(FixedData(), batch_size=batch_size, shuffle=False))
    return trainer


def test_training_step_receives_the_augmented_batch_in_train_mode(tmp_path: Path) -> None:
    """Regression test on Lightning's batch handling: the in-place change must reach training_step."""
    module = Recording()
    initial = copy.deepcopy(module.backbone)
    cb = GroupCAMAugmentation(groups=4, log_every_n_steps=None)
    fit(module, [cb], tmp_path, max_steps=1)
    first = next(iter(DataLoader(FixedData(), batch_size=4)))
    reference = attached(initial, groups=4)
    expected = dict(first)
    reference.apply(expected)
    assert not torch.equal(module.seen[0]["image"], first["image"])
    torch.testing.assert_close(module.seen[0]["image"], expected["image"])
    assert torch.equal(module.seen[0]["target"], first["target"])
    assert module.all_training == [True]


def test_append_mode_reaches_training_step(tmp_path: Path) -> None:
    module = Recording()
    fit(
        module, [GroupCAMAugmentation(groups=4, mode="append", log_every_n_steps=None)], tmp_path, max_steps=1
    )
    seen, first = module.seen[0], next(iter(DataLoader(FixedData(), batch_size=4)))
    assert seen["image"].shape[0] == 8 and torch.equal(seen["image"][:4], first["image"])
    assert torch.equal(seen["target"], first["target"].repeat(2)) and seen["box"].shape == (8, 4)


def test_hooks_registered_once_per_fit_no_growth_and_gone_after(tmp_path: Path) -> None:
    module = Recording(record=False)
    cb = GroupCAMAugmentation(groups=4, log_every_n_steps=None)
    watch = Watch(cb)
    fit(module, [cb, watch], tmp_path, epochs=2, batch_size=2)  # 16 steps
    assert watch.hooks == [1] * 16 and len(watch.handles) == 1
    # Live tensors are constant within each epoch after its first step (Lightning adds its epoch-end
    # metrics between the epochs): nothing piles up step after step.
    assert len(set(watch.tensors[1:8])) == 1 and len(set(watch.tensors[9:])) == 1, str(watch.tensors)
    assert len(module.backbone.layer2._forward_hooks) == 0 and not cb.attached and cb.groupcam is None
    assert cb.augmented_batches == 16 and cb.augmented_images == 32


def test_hook_removed_when_training_raises(tmp_path: Path) -> None:
    module = Recording(fail_at=1)
    cb = GroupCAMAugmentation(groups=4, log_every_n_steps=None)
    with pytest.raises(RuntimeError, match="boom"):
        fit(module, [cb], tmp_path)
    assert len(module.backbone.layer2._forward_hooks) == 0 and not cb.attached


def test_start_epoch_and_every_n_steps(tmp_path: Path) -> None:
    module = Recording()
    cb = GroupCAMAugmentation(groups=4, start_epoch=1, every_n_steps=2, log_every_n_steps=None)
    fit(module, [cb], tmp_path, epochs=2)  # 4 batches per epoch
    originals = list(DataLoader(FixedData(), batch_size=4)) * 2
    changed = [not torch.equal(s["image"], o["image"]) for s, o in zip(module.seen, originals)]
    assert changed == [False, False, False, False, True, False, True, False]
    assert cb.augmented_batches == 2


def test_p_end_schedule_ends_the_fit_on_original_images(tmp_path: Path) -> None:
    module = Recording()
    cb = GroupCAMAugmentation(groups=4, p=1.0, p_end=0.0, log_every_n_steps=None)
    fit(module, [cb], tmp_path, epochs=2)  # 8 steps: p = 1, 6/7, ..., 1/7, 0
    originals = list(DataLoader(FixedData(), batch_size=4)) * 2
    changed = [not torch.equal(s["image"], o["image"]) for s, o in zip(module.seen, originals)]
    assert changed[0] and not changed[-1]  # all four images at p = 1; none at p = 0
    assert 0 < cb.augmented_images < 32


def test_bad_schedule_or_layer_fails_before_the_first_step(tmp_path: Path) -> None:
    for cb, match in (
        (GroupCAMAugmentation(groups=4, start_epoch=2), r"start_epoch=2 but trainer.max_epochs=2.*0\.\.1"),
        (GroupCAMAugmentation(groups=4, layer="head9"), r"layer='head9'.*valid layer names"),
    ):
        module = Recording()
        with pytest.raises(ValueError, match=match):
            fit(module, [cb], tmp_path, epochs=2)
        assert module.seen == []  # nothing trained


# --------------------------------------------------------------------------------------------- logging


def test_csv_logger_gets_png_grids_every_n_steps(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv", version="")
    cb = GroupCAMAugmentation(groups=4, log_every_n_steps=2, log_images=3)
    fit(Recording(), [cb], tmp_path, logger=logger, log_every_n_steps=1)
    pngs = sorted(p.name for p in (tmp_path / "csv" / "groupcam_augmentation").iterdir())
    assert pngs == ["step_000000.png", "step_000002.png"]
    with Image.open(tmp_path / "csv" / "groupcam_augmentation" / "step_000002.png") as png:
        assert png.size == (4 * 34 + 2, 3 * 34 + 2)  # 4 columns, 3 rows of 32 px tiles, 2 px padding
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "groupcam_augmentation/kept_fraction" in header


def test_image_loggers_receive_the_grid_and_png_without_a_logger(tmp_path: Path) -> None:
    grid = torch.rand(3, 10, 20)
    wandb = mock.create_autospec(WandbLogger, instance=True)
    tensorboard = mock.create_autospec(TensorBoardLogger, instance=True)
    sent = log_grid(SimpleNamespace(loggers=[wandb, tensorboard]), grid, step=7)
    assert sent == ["WandbLogger", "TensorBoardLogger"]
    wandb.log_image.assert_called_once()
    kwargs = wandb.log_image.call_args.kwargs
    assert kwargs["key"] == "groupcam_augmentation" and kwargs["step"] == 7 and kwargs["images"][0] is grid
    tensorboard.experiment.add_image.assert_called_once_with("groupcam_augmentation", grid, global_step=7)
    (path,) = log_grid(SimpleNamespace(loggers=[], default_root_dir=str(tmp_path)), grid, step=7)
    assert path == str(tmp_path / "groupcam_augmentation" / "step_000007.png") and Path(path).exists()


# ------------------------------------------------------------------------------------------ benchmark


def test_augment_benchmark_reports_consistent_ratios_and_the_same_augmentation(capsys) -> None:
    args = "augment --backbone tiny_cnn --image-size 32 --batch-size 3 --num-classes 5 --groups 4 --repeats 1"
    report = bench_main([*args.split(), "--warmup", "0"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    for key in ("plain_s", "callback_s", "per_image_s", "passes_s", "essential_s"):
        assert report[key] > 0, key
    assert report["overhead"] == pytest.approx(report["callback_s"] / report["plain_s"])
    assert report["speedup"] == pytest.approx(report["per_image_s"] / report["callback_s"])
    assert report["essential_ratio"] == pytest.approx(report["callback_s"] / report["essential_s"])
    assert report["essential_s"] == pytest.approx(report["plain_s"] + report["passes_s"])
    assert report["mask_agreement"] == 1.0 and report["layer"] == "layer2"
    assert augment_benchmark.__defaults__[:3] == ("resnet18", 112, 16)


def test_per_image_reference_of_the_benchmark_follows_a_relative_blur() -> None:
    from icasc.bench.augment import release_like_augment

    model, x, t = tiny(), images(size=48), torch.tensor([0, 3, 5, 9])
    cb = attached(model, groups=4, blur_relative=True, blur_kernel=0.25, blur_sigma=0.1)
    batched, single = cb.augment(x, t), release_like_augment(model, cb, x, t)
    torch.testing.assert_close(single.maps, batched.maps, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(single.images, batched.images, rtol=1e-4, atol=1e-5)
