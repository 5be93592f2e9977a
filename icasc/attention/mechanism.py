"""Training-time attention: maps of the true class and of the most confusing class at two layers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from icasc.attention.capture import FeatureCapture
from icasc.attention.functional import channel_weighted, grad_cam

__all__ = ["ATTENTION_METHODS", "ORDERS", "AttentionMechanism", "AttentionOutput", "select_classes"]

ATTENTION_METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ach": channel_weighted,
    "gradcam": grad_cam,
}
GRAD_MODES = ("batch", "per_sample")
ORDERS = ("second", "first")


@dataclass
class AttentionOutput:
    """What one attention forward pass produces.

    Attributes:
        logits: ``[B, C]`` class scores of the forward pass (in the autograd graph).
        target: ``{"inner": [B,h,w], "last": [B,h',w']}`` maps of the true class (A^T).
        confusing: Same for the most confusing class (A^Conf).
        confusing_class: ``[B]`` index of the most confusing class of each sample.
        valid: ``[B]`` bool; False where a sample has no confusing class (a multi-label sample whose
            classes are all positive): its separation term is left out of the mean.
    """

    logits: torch.Tensor
    target: dict[str, torch.Tensor]
    confusing: dict[str, torch.Tensor]
    confusing_class: torch.Tensor
    valid: torch.Tensor


def select_classes(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-selection weights for the true class T and the most confusing class (ICASC §3.2, §4.2.4).

    Single-label (``targets`` ``[B]`` int): T is the label; the confusing class is the non-true class with
    the highest probability. Multi-label (``targets`` ``[B, C]`` multi-hot): T is the set of positive
    classes, whose scores are summed; the confusing class is the highest-scoring negative class. The
    selection is made on detached scores (softmax and sigmoid are monotone, so logits order them).

    Args:
        logits: ``[B, C]`` class scores.
        targets: ``[B]`` class indices or ``[B, C]`` multi-hot.

    Returns:
        ``(target_weights, confusing_weights, valid)``: two ``[B, C]`` 0/1 matrices whose row-wise dot
        product with ``logits`` gives Y^T and Y^Conf, and the ``[B]`` validity mask.
    """
    scores = logits.detach()
    num_classes = scores.shape[1]
    if targets.dim() == 1:
        if targets.dtype.is_floating_point:
            raise ValueError("single-label targets must be integer class indices, got a float tensor")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
            raise ValueError(
                f"target class out of range [0, {num_classes}): got min {int(targets.min())}, "
                f"max {int(targets.max())}; does num_classes match the data?"
            )
        positives = F.one_hot(targets.long(), num_classes).bool()
    elif targets.dim() == 2:
        if targets.shape[1] != num_classes:
            raise ValueError(f"multi-hot targets have {targets.shape[1]} classes, the model {num_classes}")
        positives = targets > 0.5
    else:
        raise ValueError(f"targets must be [B] or [B, C], got shape {tuple(targets.shape)}")
    negatives = scores.masked_fill(positives, float("-inf"))
    confusing_class = negatives.argmax(dim=1)
    valid = ~positives.all(dim=1)
    target_weights = positives.to(scores.dtype)
    confusing_weights = F.one_hot(confusing_class, num_classes).to(scores.dtype)
    return target_weights, confusing_weights, valid


class AttentionMechanism:
    """Differentiable class-specific attention at an inner and the last layer (ICASC §3, Fig. 3).

    One call runs the forward pass with forward hooks on the two layers, picks the true and the most
    confusing class, and takes the gradients of their scores with respect to the captured activations
    with ``torch.autograd.grad(create_graph=True)``, in one batched backward (``is_grads_batched``) for both
    classes. The maps therefore train the network through the channel weights as well as through the
    activations.

    Args:
        model: The classifier (its mode is never changed here).
        inner_layer: Dotted name of the inner layer (e.g. ``"layer3"``).
        last_layer: Dotted name of the last layer (e.g. ``"layer4"``).
        method: ``"ach"`` (channel-weighted attention, Eq. 2) or ``"gradcam"`` (Eq. 1 with ReLU).
        grad_mode: ``"batch"`` differentiates the batch sum of the selected scores: exact per sample unless
            train-mode BatchNorm sits between the layer and the output, where batch statistics add
            cross-sample terms of order 1/B. ``"per_sample"`` removes them with one backward row per sample
            (cost grows with B², for small batches and checks).
        order: ``"second"`` (exact): the training maps are differentiated through the channel weights too,
            which are themselves gradients, so the loss's backward is a second-order one. ``"first"``: the
            channel weights are held constant (computed without a graph) and the maps train the network
            through the activations only, as other ICASC and Grad-CAM-guided implementations do; the
            backward is first order and cheaper. Evaluation maps (``create_graph=False``) are identical.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_layer: str,
        last_layer: str,
        method: str = "ach",
        grad_mode: str = "batch",
        order: str = "second",
    ) -> None:
        if method not in ATTENTION_METHODS:
            raise ValueError(
                f"unknown attention method {method!r}; choose one of {sorted(ATTENTION_METHODS)}"
            )
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"unknown grad_mode {grad_mode!r}; choose one of {list(GRAD_MODES)}")
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; choose one of {list(ORDERS)}")
        self.model = model
        self.order = order
        self.layers = {"inner": inner_layer, "last": last_layer}
        self.method = method
        self.map_fn = ATTENTION_METHODS[method]
        self.grad_mode = grad_mode
        # Resolve the names now, so that a typo fails at construction and lists the valid names.
        FeatureCapture(model, list(self.layers.values()))

    def __repr__(self) -> str:
        return (
            f"AttentionMechanism(method={self.method!r}, inner={self.layers['inner']!r}, "
            f"last={self.layers['last']!r}, grad_mode={self.grad_mode!r}, order={self.order!r})"
        )

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, create_graph: bool = True
    ) -> AttentionOutput:
        """Forward ``images`` and compute the attention maps of the true and most confusing class.

        Args:
            images: ``[B, 3, H, W]``.
            targets: ``[B]`` class indices or ``[B, C]`` multi-hot.
            create_graph: Maps that train the network (training): differentiable through the activations,
                and with ``order="second"`` through the channel weights too. ``False`` for evaluation maps.

        Returns:
            An :class:`AttentionOutput`.
        """
        if not torch.is_grad_enabled():
            raise RuntimeError(
                "attention maps need autograd: call under torch.enable_grad() and not in inference_mode "
                "(Lightning: Trainer(inference_mode=False))"
            )
        names = [self.layers["inner"], self.layers["last"]]
        with FeatureCapture(self.model, names) as cap:
            logits = self.model(images)
        feats = [cap.features[n] for n in names]
        if logits.dim() != 2:
            raise ValueError(f"the model must return [B, C] logits, got shape {tuple(logits.shape)}")
        target_w, confusing_w, valid = select_classes(logits, targets)
        second = create_graph and self.order == "second"
        # First order keeps the forward graph (the loss backpropagates through the activations) but builds
        # no graph of the gradients: the channel weights are constants.
        grads = self._score_grads(logits, feats, target_w, confusing_w, second, retain_graph=create_graph)
        target_maps, confusing_maps = {}, {}
        for key, feat, grad in zip(self.layers, feats, grads):
            target_maps[key] = self.map_fn(feat, grad[0])
            confusing_maps[key] = self.map_fn(feat, grad[1])
        return AttentionOutput(logits, target_maps, confusing_maps, confusing_w.argmax(dim=1), valid)

    def _score_grads(
        self,
        logits: torch.Tensor,
        feats: list[torch.Tensor],
        target_w: torch.Tensor,
        confusing_w: torch.Tensor,
        create_graph: bool,
        retain_graph: bool,
    ) -> list[torch.Tensor]:
        """``[2, B, K, h, w]`` per layer: d(score)/d(features) for the true (0) and confusing (1) class."""
        if self.grad_mode == "batch":
            grad_outputs = torch.stack([target_w, confusing_w])
        else:
            # One row per (class kind, sample) with only that sample's weight set: no cross-sample terms.
            b = logits.shape[0]
            eye = torch.eye(b, dtype=logits.dtype, device=logits.device)
            grad_outputs = torch.cat([eye[:, :, None] * target_w, eye[:, :, None] * confusing_w])
        grads = torch.autograd.grad(
            logits,
            feats,
            grad_outputs=grad_outputs,
            is_grads_batched=True,
            create_graph=create_graph,
            retain_graph=retain_graph or create_graph,
        )
        if self.grad_mode == "batch":
            return list(grads)
        idx = torch.arange(logits.shape[0], device=logits.device)
        return [torch.stack([g[: len(idx)][idx, idx], g[len(idx) :][idx, idx]]) for g in grads]
