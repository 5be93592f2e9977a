"""ICASCModule evaluation metrics: KS (single-label), AUC and per-class AP (multi-label), ten-crop scoring."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from icasc.losses import ICASCLoss
from icasc.metrics import mass_in_box, peakedness, pointing_game_hits
from icasc.metrics.ks import ks_statistic, true_and_confused_probabilities
from icasc.models import ICASCModule
from icasc.models.module import crop_average_logits
from tests.helpers import FixedData

CLASSES = 4


class MultiHotData(Dataset):
    """Seeded random 32×32 images with multi-hot targets; every class has positives and negatives."""

    def __init__(self, n: int = 12) -> None:
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.targets = (torch.rand(n, CLASSES, generator=g) < 0.4).float()
        self.targets[torch.arange(CLASSES), torch.arange(CLASSES)] = 1.0
        self.targets[torch.arange(CLASSES) + CLASSES, torch.arange(CLASSES)] = 0.0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "target": self.targets[i]}


def _module(multilabel: bool = False, **kwargs) -> ICASCModule:
    torch.manual_seed(0)
    return ICASCModule(
        {"name": "tiny_cnn", "width": 8}, CLASSES, loss=ICASCLoss(multilabel=multilabel), **kwargs
    ).eval()


def _trainer() -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        inference_mode=False,
    )


def _reference_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mann–Whitney: P(score of a positive > score of a negative), ties counting half."""
    pos, neg = scores[labels > 0.5], scores[labels < 0.5]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def _reference_ap(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the positives of the precision at each positive's rank (no ties in these scores)."""
    order = scores.argsort(descending=True)
    hits = labels[order] > 0.5
    precision = hits.float().cumsum(0) / torch.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def test_multilabel_auc_and_per_class_ap_are_logged_and_available():
    data = MultiHotData()
    module = _module(multilabel=True)
    with torch.no_grad():
        scores = module(data.images).sigmoid()
    expected_ap = [_reference_ap(scores[:, c], data.targets[:, c]) for c in range(CLASSES)]
    expected_auc = [_reference_auc(scores[:, c], data.targets[:, c]) for c in range(CLASSES)]

    results = _trainer().test(module, DataLoader(data, batch_size=5), verbose=False)[0]
    assert results["test/map"] == pytest.approx(sum(expected_ap) / CLASSES, abs=1e-6)
    assert results["test/auc"] == pytest.approx(sum(expected_auc) / CLASSES, abs=1e-6)
    assert "test/ks" not in results and not any("class_ap" in k for k in results)

    # The same batches through score_batch: per-class AP from compute_metrics.
    module.reset_metrics("test")
    for start in range(0, len(data), 5):
        module.score_batch(
            {"image": data.images[start : start + 5], "target": data.targets[start : start + 5]}
        )
    metrics = module.compute_metrics("test")
    assert metrics["class_ap"] == pytest.approx(expected_ap, abs=1e-6)
    assert metrics["map"] == pytest.approx(results["test/map"], abs=1e-6)
    assert metrics["auc"] == pytest.approx(results["test/auc"], abs=1e-6)


def test_single_label_ks_is_logged_with_its_threshold():
    data = FixedData(n=10, classes=CLASSES)
    module = _module()
    with torch.no_grad():
        probs = module(data.images).softmax(dim=1)
    statistic, threshold = ks_statistic(*true_and_confused_probabilities(probs, data.targets))
    results = _trainer().test(module, DataLoader(data, batch_size=4), verbose=False)[0]
    assert results["test/ks"] == pytest.approx(float(statistic), abs=1e-6)
    assert results["test/ks_threshold"] == pytest.approx(float(threshold), abs=1e-6)
    for name in ("top1", "top5", "loss", "classification", "attention_overlap"):
        assert f"test/{name}" in results, name
    assert "test/pointing_game" not in results  # no boxes in this data
    # the epoch end resets the KS state: a second test run gives the same value, not a union
    again = _trainer().test(module, DataLoader(data, batch_size=4), verbose=False)[0]
    assert again["test/ks"] == pytest.approx(results["test/ks"])


def test_crop_average_logits_give_the_mean_probabilities_even_when_saturated():
    logits = torch.tensor([[[1000.0, 0.0, -5.0], [0.0, 2.0, 1.0]], [[3.0, 3.0, 3.0], [-1000.0, 0.0, 50.0]]])
    averaged = crop_average_logits(logits)
    assert torch.isfinite(averaged).all()
    torch.testing.assert_close(averaged.softmax(dim=1), logits.softmax(dim=2).mean(dim=1))
    multi = crop_average_logits(logits, multilabel=True)
    assert torch.isfinite(multi).all()
    torch.testing.assert_close(multi.sigmoid(), logits.sigmoid().mean(dim=1))
    with pytest.raises(ValueError, match="n_crops"):
        crop_average_logits(logits[0])


def test_ten_crop_batch_is_scored_on_the_mean_of_the_per_crop_softmax():
    module = _module()
    g = torch.Generator().manual_seed(3)
    crops = torch.randn(3, 10, 3, 32, 32, generator=g)
    targets = torch.tensor([0, 2, 3])
    with torch.no_grad():
        per_crop = torch.stack([module(crops[:, i]) for i in range(10)], dim=1).softmax(dim=2)
    mean = per_crop.mean(dim=1)

    scored = module.score_batch({"image": crops, "target": targets})
    torch.testing.assert_close(scored["probs"], mean)
    nll = -mean[torch.arange(3), targets].log().mean()
    torch.testing.assert_close(scored["loss"], nll)
    assert set(scored["terms"]) == {"classification"}  # no attention terms without maps
    metrics = module.compute_metrics("test")
    top1 = float((mean.argmax(dim=1) == targets).float().mean())
    assert metrics["top1"] == pytest.approx(top1)
    assert metrics["ks"] == pytest.approx(
        float(ks_statistic(*true_and_confused_probabilities(mean, targets))[0])
    )
    assert "attention_overlap" not in metrics and "pointing_game" not in metrics
    # prediction on ten-crop batches is the same average
    torch.testing.assert_close(module.predict_step({"image": crops}, 0).softmax(dim=1), mean)


def test_ten_crop_multilabel_averages_sigmoid_probabilities():
    module = _module(multilabel=True)
    crops = torch.randn(2, 10, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    with torch.no_grad():
        mean = torch.stack([module(crops[:, i]) for i in range(10)], dim=1).sigmoid().mean(dim=1)
    scored = module.score_batch({"image": crops, "target": targets})
    torch.testing.assert_close(scored["probs"], mean)
    bce = torch.nn.functional.binary_cross_entropy(mean, targets)
    torch.testing.assert_close(scored["loss"], bce)


def test_evaluation_without_attention_maps_uses_the_classification_loss():
    module = _module(val_attention=False)  # ICASC loss on, no maps in evaluation
    data = FixedData(n=4, classes=CLASSES)
    scored = module.score_batch({"image": data.images, "target": data.targets}, "val")
    assert set(scored["terms"]) == {"classification"}
    assert "attention_overlap" not in module.compute_metrics("val")
    with pytest.raises(ValueError, match=r"\[B, n_crops, 3, H, W\]"):
        module.score_batch({"image": data.images[0], "target": data.targets[:1]})
    with pytest.raises(ValueError, match="stage"):
        module.score_batch({"image": data.images, "target": data.targets}, "train")


ATTENTION_NAMES = [
    f"attn_{layer}_{kind}_{stat}"
    for layer in ("inner", "last")
    for kind in ("true", "conf")
    for stat in ("in_box", "pointing", "peak")
]


class BoxedData(FixedData):
    """FixedData with a seeded ``"box"`` per image (integer and fractional edges)."""

    def __init__(self, n: int = 6) -> None:
        super().__init__(n=n, classes=CLASSES)
        g = torch.Generator().manual_seed(2)
        corner = torch.rand(n, 2, generator=g) * 16
        size = 4 + torch.rand(n, 2, generator=g) * 12
        self.boxes = torch.cat([corner, corner + size], dim=1).round(decimals=1)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**super().__getitem__(i), "box": self.boxes[i]}


def _expected_attention_stats(module: ICASCModule, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """The diagnostics of one batch from the module's own maps, through the pure metric functions."""
    with torch.enable_grad():
        out = module.attention(batch["image"], batch["target"], create_graph=False)
    size = tuple(batch["image"].shape[-2:])
    expected = {}
    for layer in ("inner", "last"):
        for kind, maps in (("true", out.target[layer]), ("conf", out.confusing[layer])):
            maps = maps.detach() if kind == "true" else maps.detach()[out.valid]
            expected[f"attn_{layer}_{kind}_peak"] = float(peakedness(maps).mean())
            if "box" in batch:
                boxes = batch["box"] if kind == "true" else batch["box"][out.valid]
                expected[f"attn_{layer}_{kind}_in_box"] = float(mass_in_box(maps, boxes, size).mean())
                hits = pointing_game_hits(maps, boxes, size, module.pointing_tolerance)
                expected[f"attn_{layer}_{kind}_pointing"] = float(hits.float().mean())
    return expected


def test_attention_diagnostics_per_layer_and_class_equal_the_pure_functions():
    data = BoxedData()
    module = _module()
    batch = {"image": data.images, "target": data.targets, "box": data.boxes}
    expected = _expected_attention_stats(module, batch)
    module.score_batch(batch, "val")
    metrics = module.compute_metrics("val")
    assert set(ATTENTION_NAMES) <= set(metrics)
    for name in ATTENTION_NAMES:
        assert metrics[name] == pytest.approx(expected[name], abs=1e-6), name
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["attn_last_true_pointing"] == metrics["pointing_game"]
    # a finite tolerance that covers the whole image makes every map a hit, in every pointing statistic
    module.pointing_tolerance = 100.0
    module.reset_metrics("val")
    module.score_batch(batch, "val")
    tolerant = module.compute_metrics("val")
    assert all(tolerant[n] == 1.0 for n in ATTENTION_NAMES if n.endswith("_pointing"))


def test_attention_diagnostics_are_logged_in_validation_and_test():
    data = BoxedData(n=6)
    module = _module()
    first, second = ({k: v[s] for k, v in vars(data).items()} for s in (slice(0, 4), slice(4, 6)))
    batches = [{"image": b["images"], "target": b["targets"], "box": b["boxes"]} for b in (first, second)]
    # per-sample means over both batches: a short last batch counts per sample
    per_batch = [_expected_attention_stats(module, b) for b in batches]
    expected = {n: (4 * per_batch[0][n] + 2 * per_batch[1][n]) / 6 for n in ATTENTION_NAMES}
    for loop, stage in ((_trainer().validate, "val"), (_trainer().test, "test")):
        results = loop(module, DataLoader(data, batch_size=4), verbose=False)[0]
        for name in ATTENTION_NAMES:
            assert results[f"{stage}/{name}"] == pytest.approx(expected[name], abs=1e-6), name
        assert results[f"{stage}/attn_last_true_pointing"] == results[f"{stage}/pointing_game"]
    # without boxes only the peakedness is logged
    plain = DataLoader(FixedData(n=4, classes=CLASSES), batch_size=4)
    results = _trainer().test(module, plain, verbose=False)[0]
    logged = {k.removeprefix("test/") for k in results if k.startswith("test/attn_")}
    assert logged == {n for n in ATTENTION_NAMES if n.endswith("_peak")}


@pytest.mark.filterwarnings("ignore:No negative samples")  # AUROC on the all-positive batch at the end
def test_samples_without_a_confusing_class_are_left_out_of_the_confusing_stats():
    module = _module(multilabel=True)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    # samples 1 and 3 have every class positive: no confusing class
    targets = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]])
    boxes = torch.tensor([[0.0, 0, 16, 16], [8, 8, 24, 24], [16, 0, 32, 16], [4, 20, 12, 30]])
    batch = {"image": images, "target": targets, "box": boxes}
    expected = _expected_attention_stats(module, batch)
    module.score_batch(batch, "val")
    metrics = module.compute_metrics("val")
    for name in ATTENTION_NAMES:
        assert metrics[name] == pytest.approx(expected[name], abs=1e-6), name
    # the confusing-class means are over the two valid samples only
    with torch.enable_grad():
        out = module.attention(images, targets, create_graph=False)
    assert out.valid.tolist() == [True, False, True, False]
    valid_peak = peakedness(out.confusing["last"].detach()[[0, 2]]).mean()
    assert metrics["attn_last_conf_peak"] == pytest.approx(float(valid_peak), abs=1e-6)
    # a batch with no valid sample adds nothing to the confusing-class stats
    module.reset_metrics("val")
    module.score_batch({"image": images[[1, 3]], "target": targets[[1, 3]], "box": boxes[[1, 3]]}, "val")
    metrics = module.compute_metrics("val")
    assert not any(n.startswith("attn_") and "_conf_" in n for n in metrics)
    assert all(n in metrics for n in ATTENTION_NAMES if "_true_" in n)
