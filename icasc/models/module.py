"""ICASCModule: a LightningModule that trains a backbone with the ICASC objective (baseline: terms off)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy, MultilabelAUROC, MultilabelAveragePrecision

from icasc.attention.mechanism import AttentionMechanism, AttentionOutput
from icasc.data.contract import check_batch, check_data_fits_model, describe_data
from icasc.losses.icasc import ICASCLoss
from icasc.metrics.attention_stats import attention_overlap, attention_stats
from icasc.metrics.ks import KSSign, KSStatistic, KSThreshold
from icasc.metrics.pointing_game import POINTING_TOLERANCE
from icasc.models.backbones import build_backbone, default_attention_layers
from icasc.models.hparams import build_factory, factory_spec, plain

__all__ = ["ICASCModule", "crop_average_logits"]

# Computed for compute_metrics (the eval report) but never logged: a per-class vector and a direction flag.
# Lightning resets only the metrics it logs, so these are reset at the end of each epoch.
_UNLOGGED_METRICS = ("class_ap", "ks_sign")

# Attention diagnostics of evaluation: {stage}/attn_{layer}_{class}_{stat} (icasc.metrics.attention_stats),
# for the true ("true") and the most confusing ("conf") class. The box statistics need batches with "box".
_ATTENTION_LAYERS = ("inner", "last")
_ATTENTION_CLASSES = ("true", "conf")
_BOX_STATS = ("in_box", "pointing")
_ATTENTION_STATS = (*_BOX_STATS, "peak")
_BOX_METRICS = frozenset(
    ["pointing_game"]
    + [
        f"attn_{layer}_{kind}_{stat}"
        for layer in _ATTENTION_LAYERS
        for kind in _ATTENTION_CLASSES
        for stat in _BOX_STATS
    ]
)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def _backbone_spec(backbone: str | Mapping[str, Any] | nn.Module) -> dict[str, Any]:
    """The registry name and build arguments of a backbone (what a model card records)."""
    if isinstance(backbone, nn.Module):
        return {"name": type(backbone).__name__.lower()}
    if isinstance(backbone, str):
        return {"name": backbone}
    spec = dict(backbone)
    if "name" not in spec:
        raise ValueError(
            f"a backbone mapping needs a 'name' (a registered backbone), got keys {sorted(spec)}"
        )
    return spec


def _factory(factory: Any, base: type, option: str) -> Any:
    """A factory as given, or rebuilt from the plain record a checkpoint holds (icasc.models.hparams)."""
    if isinstance(factory, Mapping):
        # {} is what an empty config group option composes to (model/scheduler=none): no factory
        return build_factory(factory, base, option) if factory else None
    return factory


def crop_average_logits(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Logits of the crop-averaged prediction (ten-crop evaluation, ICASC Table 6 "tenCrop").

    The prediction of an image is the mean over its crops of the per-crop probabilities (softmax, or sigmoid
    per class for multi-label). Returned as logits of that mean, so every consumer of logits sees it:
    single-label ``log(mean_n softmax(z_n))``, whose softmax is the mean and whose cross-entropy is the NLL of
    the mean; multi-label ``logit(mean_n sigmoid(z_n))``, whose soft-margin loss is the binary cross-entropy
    of the mean. Computed with log-sum-exp, so saturated crops stay finite.

    Args:
        logits: ``[B, n, C]`` logits of ``n`` crops per image.
        multilabel: Average sigmoid (True) or softmax (False) probabilities.

    Returns:
        ``[B, C]``.
    """
    if logits.dim() != 3:
        raise ValueError(f"crop logits must be [B, n_crops, C], got {tuple(logits.shape)}")
    log_n = math.log(logits.shape[1])
    if not multilabel:
        return torch.logsumexp(F.log_softmax(logits, dim=2), dim=1) - log_n
    log_p = torch.logsumexp(F.logsigmoid(logits), dim=1) - log_n
    log_not_p = torch.logsumexp(F.logsigmoid(-logits), dim=1) - log_n
    return log_p - log_not_p


_ATTENTION_DEFAULTS = {
    "method": "ach",
    "inner_layer": None,
    "last_layer": None,
    "grad_mode": "batch",
    "order": "second",
}


def _attention_spec(attention: str | Mapping[str, Any]) -> dict[str, Any]:
    spec = {"method": attention} if isinstance(attention, str) else dict(attention)
    unknown = set(spec) - set(_ATTENTION_DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown attention option(s) {sorted(unknown)}; valid: {', '.join(_ATTENTION_DEFAULTS)}"
        )
    return {**_ATTENTION_DEFAULTS, **spec}


class ICASCModule(L.LightningModule):
    """Train a classifier with attention separation and consistency (ICASC paper, Eq. 6).

    Every training step computes differentiable attention maps of the true and the most confusing class
    at an inner and the last layer and adds the attention losses to the classification loss. With all
    attention weights at 0 it is the plain baseline: no maps are computed in training, so it costs
    nothing extra. Validation always computes the (non-differentiable) maps to report the attention
    overlap (L_AS^la) and, where batches carry boxes, the pointing-game hit rate, so baseline and ICASC
    runs are scored alike.

    Args:
        backbone: A registered backbone name, a mapping ``{"name": ..., **build_backbone kwargs}`` (e.g.
            ``{"name": "resnet50", "weights": "IMAGENET1K_V2"}``; ``{"name": "convnext_tiny", "source":
            "timm"}`` for a timm model), or a ready ``nn.Module``. Attention layers left ``None`` are the
            backbone's registry defaults (:func:`~icasc.models.backbones.default_attention_layers`).
        num_classes: Number of classes.
        loss: The objective, or its ``config()`` mapping; default ``ICASCLoss()`` (all terms at weight 1).
        attention: ``"ach"`` (A_ch, Eq. 2) or ``"gradcam"`` (Eq. 1), or a mapping with ``method``,
            ``inner_layer``, ``last_layer`` (``None``: the backbone's defaults), ``grad_mode`` and ``order``
            (see :class:`~icasc.attention.AttentionMechanism`).
        optimizer: Factory ``params -> Optimizer`` (e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``), or
            the plain record a checkpoint holds (:func:`~icasc.models.hparams.factory_spec`).
        scheduler: Optional factory ``optimizer -> LR scheduler``, stepped every epoch (or its record).
        check_finite: Stop with an error naming the step and the term when a loss term is NaN or Inf.
        val_attention: Compute attention maps in validation and test (overlap, pointing game).
        pointing_tolerance: Pointing-game tolerance in input pixels; default
            :data:`~icasc.metrics.pointing_game.POINTING_TOLERANCE` (0: the maximum inside a box, Group-CAM
            §4.4), the one default that ``-cn eval`` and ``-cn explain`` use too.

    Evaluation (validation and test) logs ``{stage}/top1``, ``top5`` and ``ks`` (the KS statistic of Fig. 9,
    with ``ks_threshold``, the probability where it occurs) for single-label data, ``{stage}/map`` and
    ``auc`` (both macro over the classes) for multi-label data, plus the loss terms, ``attention_overlap``
    and ``pointing_game``. The per-class AP (``class_ap``) is computed but not logged; read it with
    :meth:`compute_metrics`. Attention diagnostics (:mod:`icasc.metrics.attention_stats`), read from the
    maps already computed for the overlap, are logged as ``{stage}/attn_{layer}_{class}_{stat}`` with
    ``layer`` ``inner`` or ``last``, ``class`` ``true`` or ``conf`` (the most confusing class; samples
    without one are left out) and ``stat`` ``peak`` (every batch), ``in_box`` and ``pointing`` (batches with
    a ``"box"``); ``pointing_game`` is ``attn_last_true_pointing``. Batches whose ``"image"`` is
    ``[B, n_crops, 3, H, W]`` (ten-crop) are scored on the crop-averaged probabilities
    (:func:`crop_average_logits`; the loss is the classification loss of that average) and add nothing to
    the attention metrics (there are no boxes for crops).
    """

    def __init__(
        self,
        backbone: str | Mapping[str, Any] | nn.Module,
        num_classes: int,
        loss: ICASCLoss | Mapping[str, Any] | None = None,
        attention: str | Mapping[str, Any] = "ach",
        optimizer: OptimizerFactory | Mapping[str, Any] | None = None,
        scheduler: SchedulerFactory | Mapping[str, Any] | None = None,
        check_finite: bool = True,
        val_attention: bool = True,
        pointing_tolerance: float = POINTING_TOLERANCE,
    ) -> None:
        super().__init__()
        if isinstance(loss, Mapping):
            loss = ICASCLoss(**plain(loss))
        self.loss = loss if loss is not None else ICASCLoss()
        # Plain data only (see icasc.models.hparams): checkpoints then load with weights_only=True.
        hparams = {
            # a ready nn.Module is not data: such a module is loaded by passing backbone= again
            **({} if isinstance(backbone, nn.Module) else {"backbone": plain(backbone)}),
            "num_classes": int(num_classes),
            "loss": self.loss.config(),
            "attention": plain(attention),
            "optimizer": factory_spec(optimizer),
            "scheduler": factory_spec(scheduler),
            "check_finite": bool(check_finite),
            "val_attention": bool(val_attention),
            "pointing_tolerance": float(pointing_tolerance),
        }
        self.save_hyperparameters(hparams, logger=False)
        self.backbone_spec = _backbone_spec(backbone)
        if isinstance(backbone, nn.Module):
            self.backbone = backbone
        else:
            spec = dict(self.backbone_spec)
            self.backbone = build_backbone(spec.pop("name"), num_classes, **spec)
        self.num_classes = num_classes
        spec = _attention_spec(attention)
        if spec["inner_layer"] is None or spec["last_layer"] is None:
            default_inner, default_last = default_attention_layers(self.backbone)
            spec["inner_layer"] = spec["inner_layer"] or default_inner
            spec["last_layer"] = spec["last_layer"] or default_last
        self.attention = AttentionMechanism(self.backbone, **spec)
        self.optimizer_factory = _factory(optimizer, torch.optim.Optimizer, "optimizer")
        self.scheduler_factory = _factory(scheduler, torch.optim.lr_scheduler.LRScheduler, "scheduler")
        self.check_finite = check_finite
        self.val_attention = val_attention
        self.pointing_tolerance = pointing_tolerance
        self._build_metrics()

    @property
    def multilabel(self) -> bool:
        return self.loss.multilabel

    def _score_metrics(self, stage: str) -> dict[str, Metric]:
        # mAP, AUC and KS need the whole epoch's scores; in training only the accuracies are tracked.
        if self.multilabel:
            if stage == "train":
                return {}
            return {
                "map": MultilabelAveragePrecision(num_labels=self.num_classes, average="macro"),
                "auc": MultilabelAUROC(num_labels=self.num_classes, average="macro"),
                "class_ap": MultilabelAveragePrecision(num_labels=self.num_classes, average=None),
            }
        metrics: dict[str, Metric] = {
            "top1": MulticlassAccuracy(self.num_classes, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(self.num_classes, top_k=min(5, self.num_classes), average="micro"),
        }
        if stage != "train":
            metrics["ks"] = KSStatistic()
            metrics["ks_threshold"] = KSThreshold()
            metrics["ks_sign"] = KSSign()
        return metrics

    def _build_metrics(self) -> None:
        self.train_metrics = nn.ModuleDict(self._score_metrics("train"))
        for stage in ("val", "test"):
            metrics = self._score_metrics(stage)
            metrics["attention_overlap"] = MeanMetric()
            metrics["pointing_game"] = MeanMetric()
            for layer in _ATTENTION_LAYERS:
                for kind in _ATTENTION_CLASSES:
                    for stat in _ATTENTION_STATS:
                        metrics[f"attn_{layer}_{kind}_{stat}"] = MeanMetric()
            setattr(self, f"{stage}_metrics", nn.ModuleDict(metrics))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def crop_averaged(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` logits of the crop-averaged prediction of ``[B, n_crops, 3, H, W]`` images."""
        b, n = images.shape[:2]
        logits = self.backbone(images.flatten(0, 1))
        return crop_average_logits(logits.float().view(b, n, -1), self.multilabel)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:  # loaders passed directly: their batches are checked on the first step
            return
        check_data_fits_model(
            describe_data(datamodule, loaders=()),
            self.num_classes,
            self.multilabel,
            "the model",
            "set model.num_classes to the data's (the configs use ${data.num_classes})",
            f"set model.loss.multilabel={getattr(datamodule, 'multilabel', False)}",
        )

    # -- steps -------------------------------------------------------------------------------------------

    def _check_finite(self, terms: Mapping[str, torch.Tensor], where: str, batch_idx: int) -> None:
        if not self.check_finite:
            return
        values = torch.stack([t.detach() for t in terms.values()])
        if bool(torch.isfinite(values).all()):
            return
        bad = [name for name, t in terms.items() if not torch.isfinite(t).all()]
        shown = {name: float(t.detach()) for name, t in terms.items()}
        raise FloatingPointError(
            f"non-finite {where} loss at global step {self.global_step} (epoch {self.current_epoch}, "
            f"batch {batch_idx}): term(s) {bad} are NaN/Inf; all terms: {shown}. Lower the learning rate or "
            "check the inputs; set model.check_finite=false to train on regardless."
        )

    def compute_loss(
        self, images: torch.Tensor, targets: torch.Tensor, scale: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """One training forward: ``(total loss, unweighted terms, logits)``.

        The attention maps (and their gradient graph) are only computed when an attention term is on and
        ``scale`` (the factor of the attention weights, :meth:`attention_scale`) is positive.
        """
        if self.loss.attention_enabled and scale > 0:
            out = self.attention(images, targets, create_graph=True)
            logits = out.logits
        else:
            out, logits = None, self.backbone(images)
            if self.loss.attention_enabled:  # warm-up: L_C alone, as the baseline computes it
                terms = {"classification": self.loss.classification(logits, targets)}
                return terms["classification"], terms, logits
        total, terms = self.loss(logits, targets, out, scale=scale)
        return total, terms, logits

    def attention_scale(self, batch_idx: int) -> float:
        """The loss's warm-up/ramp factor at this training step (1 outside a fit)."""
        if self._trainer is None:
            return 1.0
        batches = self.trainer.num_training_batches
        fraction = batch_idx / batches if math.isfinite(batches) and batches > 0 else 0.0
        return self.loss.attention_scale(self.current_epoch + fraction)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if batch_idx == 0:
            check_batch(batch, self.num_classes, self.multilabel, "the first training batch")
        images, targets = batch["image"], batch["target"]
        scale = self.attention_scale(batch_idx)
        total, terms, logits = self.compute_loss(images, targets, scale)
        self._check_finite({**terms, "total": total}, "training", batch_idx)
        batch_size = images.shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        if self.loss.warmup_epochs or self.loss.ramp_epochs:
            self.log("train/attention_scale", scale, batch_size=batch_size)
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        for name, metric in self.train_metrics.items():
            metric(logits.detach(), targets)
            self.log(f"train/{name}", metric, on_step=False, on_epoch=True, batch_size=batch_size)
        return total

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        try:
            super().backward(loss, *args, **kwargs)
        except RuntimeError as error:
            # order="second" differentiates the maps' channel weights (themselves gradients) again; some
            # activations have no second derivative in PyTorch (e.g. Hardsigmoid/Hardswish in MobileNetV3)
            if "derivative for" not in str(error) or "not implemented" not in str(error):
                raise
            if self.attention.order != "second":
                raise
            raise RuntimeError(
                f"{error}\nThe backbone uses an operation without a second derivative, which ICASC's exact "
                "(second-order) maps need: set model.attention.order=first (channel weights held constant "
                "in the loss's backward), or use a backbone without it"
            ) from error

    def score_batch(
        self, batch: Mapping[str, torch.Tensor], stage: str = "test", batch_idx: int = 0
    ) -> dict[str, Any]:
        """Score one evaluation batch and update the ``stage``'s metrics, without logging.

        The validation and test steps call it and log; the evaluation task calls it in its own loop and
        reads the metrics with :meth:`compute_metrics`, so both report the same numbers.

        Args:
            batch: ``{"image": [B, 3, H, W] or [B, n_crops, 3, H, W], "target", optional "box"}``.
            stage: ``"val"`` or ``"test"``: whose metrics to update.
            batch_idx: For error messages.

        Returns:
            ``{"loss": total, "terms": {name: value}, "probs": [B, C], "batch_size": B}``, detached; ``probs``
            are softmax (single-label) or sigmoid (multi-label) probabilities.
        """
        if stage not in ("val", "test"):
            raise ValueError(f"stage must be 'val' or 'test', got {stage!r}")
        if batch_idx == 0:
            check_batch(batch, self.num_classes, self.multilabel, f"the first {stage} batch")
        images, targets = batch["image"], batch["target"]
        if images.dim() not in (4, 5):
            raise ValueError(
                f"batch['image'] must be [B, 3, H, W], or [B, n_crops, 3, H, W] for multi-crop evaluation, "
                f"got {tuple(images.shape)}"
            )
        metrics = getattr(self, f"{stage}_metrics")
        out = None
        if images.dim() == 5:
            with torch.no_grad():
                logits = self.crop_averaged(images)
        elif self.val_attention:
            if torch.is_inference_mode_enabled():
                raise RuntimeError(
                    "attention maps need autograd during validation: create the Trainer with "
                    "inference_mode=False (the configs do), or set val_attention=False"
                )
            with torch.enable_grad():
                out = self.attention(images, targets, create_graph=False)
            logits = out.logits.detach()
            out.target = {k: v.detach() for k, v in out.target.items()}
            out.confusing = {k: v.detach() for k, v in out.confusing.items()}
        else:
            with torch.no_grad():
                logits = self.backbone(images)
        with torch.no_grad():
            if out is not None and self.loss.attention_enabled:
                total, terms = self.loss(logits, targets, out)
            else:  # no maps (multi-crop, val_attention off): the classification loss alone
                terms = {"classification": self.loss.classification(logits, targets)}
                total = terms["classification"]
            self._check_finite({**terms, "total": total}, stage, batch_idx)
            probs = self._update_metrics(metrics, logits, targets, out, batch)
        return {"loss": total, "terms": terms, "probs": probs, "batch_size": images.shape[0]}

    def _eval_step(self, batch: Mapping[str, torch.Tensor], stage: str, batch_idx: int) -> None:
        scored = self.score_batch(batch, stage, batch_idx)
        metrics = getattr(self, f"{stage}_metrics")
        batch_size = scored["batch_size"]
        self.log(
            f"{stage}/loss", scored["loss"], prog_bar=stage == "val", sync_dist=True, batch_size=batch_size
        )
        for name, value in scored["terms"].items():
            self.log(f"{stage}/{name}", value, sync_dist=True, batch_size=batch_size)
        for name, metric in metrics.items():
            if name in _UNLOGGED_METRICS or not metric.update_called:
                continue
            if name in _BOX_METRICS and "box" not in batch:
                continue
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "top1")

    def _update_metrics(self, metrics, logits, targets, out, batch) -> torch.Tensor:
        if self.multilabel:
            probs = logits.float().sigmoid()
            for name in ("map", "auc", "class_ap"):
                # update, not forward: these are epoch-level; a per-batch value would cost a full compute
                metrics[name].update(probs, targets.long())
        else:
            probs = logits.float().softmax(dim=1)
            metrics["top1"](logits, targets)
            metrics["top5"](logits, targets)
            for name in ("ks", "ks_threshold", "ks_sign"):
                metrics[name].update(probs, targets)
        if out is None:
            return probs
        # Weighted by batch size, so a short last batch counts per sample like the others.
        overlap = attention_overlap(out.target["last"], out.confusing["last"], out.valid)
        metrics["attention_overlap"].update(overlap, weight=logits.shape[0])
        self._update_attention_stats(metrics, out, batch)
        return probs

    def _update_attention_stats(
        self, metrics: nn.ModuleDict, out: AttentionOutput, batch: Mapping[str, torch.Tensor]
    ) -> None:
        # Per-sample values, so the means weigh every sample alike whatever the batch size.
        boxes, size = batch.get("box"), tuple(batch["image"].shape[-2:])
        for layer in _ATTENTION_LAYERS:
            for kind, maps in (("true", out.target[layer]), ("conf", out.confusing[layer])):
                stats = attention_stats(maps, size, boxes, self.pointing_tolerance)
                if kind == "true" and layer == "last" and boxes is not None:
                    # pointing_game is attn_last_true_pointing: the same hits, computed once
                    metrics["pointing_game"].update(stats["pointing"])
                for stat, values in stats.items():
                    if kind == "conf":  # samples without a confusing class (multi-label) have no such map
                        values = values[out.valid.to(values.device)]
                    if values.numel():
                        metrics[f"attn_{layer}_{kind}_{stat}"].update(values)

    def compute_metrics(self, stage: str = "test") -> dict[str, Any]:
        """The ``stage``'s metrics over everything scored since their last reset (synced under DDP).

        Returns:
            ``{name: float}`` for the scalar metrics that saw data (``top1``, ``top5``, ``ks``,
            ``ks_threshold`` and the int ``ks_sign`` / ``map``, ``auc``; ``attention_overlap``,
            ``pointing_game``, ``attn_{layer}_{class}_{stat}``) and
            ``class_ap``: ``[C]`` per-class average precision (multi-label; 0 for a class without positives,
            as torchmetrics computes it).
        """
        values: dict[str, Any] = {}
        for name, metric in getattr(self, f"{stage}_metrics").items():
            if not metric.update_called:
                continue
            value = metric.compute()
            # a scalar as a Python float (int for ks_sign), class_ap's [C] as a list of floats
            values[name] = value.item() if value.dim() == 0 else value.tolist()
        return values

    def reset_metrics(self, stage: str = "test") -> None:
        """Reset the ``stage``'s metrics (before scoring a new split with :meth:`score_batch`)."""
        for metric in getattr(self, f"{stage}_metrics").values():
            metric.reset()

    def _reset_unlogged_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        for name in _UNLOGGED_METRICS:
            if name in metrics:
                metrics[name].reset()

    def on_validation_epoch_end(self) -> None:
        self._reset_unlogged_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._reset_unlogged_metrics("test")

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", batch_idx)

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", batch_idx)

    def predict_step(self, batch: Mapping[str, torch.Tensor] | torch.Tensor, batch_idx: int) -> torch.Tensor:
        images = batch["image"] if isinstance(batch, Mapping) else batch
        if images.dim() == 5:
            return self.crop_averaged(images)
        return self.backbone(images)

    # -- optimisation ------------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory
        if factory is None:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)
        else:
            optimizer = factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
