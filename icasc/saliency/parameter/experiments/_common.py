"""Shared pieces of the verification experiments: filter look-up, in-place filter edits, confidences.

A *filter* is one column of a parameter-saliency profile: ``(layer_name, output_channel)`` as listed by
``ParameterSaliency.filters``. Its parameters are the rows ``[channel]`` (dimension 0) of the layer's
``weight`` and ``bias``, which covers convolution output filters and linear output units alike.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from icasc.saliency.base import check_images
from icasc.utils import eval_mode

__all__ = [
    "ConfidenceChange",
    "Filter",
    "change_summary",
    "edit_filters",
    "edited_filters",
    "filter_rows",
    "layer_channels",
    "random_columns",
    "resolve_columns",
    "softmax_probabilities",
    "working_copy",
]

Filter = tuple[str, int]
"""``(layer_name, output_channel)``: one column of a saliency profile."""

Edit = Callable[[torch.Tensor], torch.Tensor]


def check_targets(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``targets`` as a ``[B]`` int64 tensor matching ``images``; a clear error otherwise."""
    check_images(images)
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.dtype.is_floating_point:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a [B] integer tensor of class ids (single-label), got {shape}")
    if targets.numel() != images.shape[0]:
        raise ValueError(f"got {targets.numel()} targets for {images.shape[0]} images")
    return targets.long().to(images.device)


def resolve_columns(
    columns: torch.Tensor | Sequence[int], n_filters: int, what: str = "columns"
) -> torch.Tensor:
    """Filter columns as an int64 tensor, checked against ``[0, n_filters)``."""
    columns = torch.as_tensor(columns, dtype=torch.long)
    if columns.numel() and (int(columns.min()) < 0 or int(columns.max()) >= n_filters):
        raise ValueError(
            f"{what} must index the {n_filters} profile columns (ParameterSaliency.filters), "
            f"got values in [{int(columns.min())}, {int(columns.max())}]"
        )
    return columns


def layer_channels(
    filters: Sequence[Filter], columns: torch.Tensor | Sequence[int]
) -> dict[str, torch.Tensor]:
    """Group profile columns by layer: ``{layer_name: LongTensor of output channels}`` (sorted, unique)."""
    columns = resolve_columns(columns, len(filters)).reshape(-1).tolist()
    grouped: dict[str, list[int]] = {}
    for c in columns:
        name, channel = filters[c]
        grouped.setdefault(name, []).append(int(channel))
    return {name: torch.tensor(sorted(set(chs)), dtype=torch.long) for name, chs in grouped.items()}


def filter_rows(model: nn.Module, layer: str) -> dict[str, nn.Parameter]:
    """The parameters of ``layer`` whose dimension 0 is the output channel: ``{"weight": ..., "bias": ...}``.

    Raises:
        ValueError: ``layer`` is not a sub-module of ``model``, or is not a convolution/linear layer.
    """
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        raise ValueError(
            f"layer {layer!r} is not a sub-module of the {type(model).__name__}; the filters must come from "
            "a ParameterSaliency built on this model (or on a copy of it)"
        ) from None
    if not isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
        raise ValueError(
            f"layer {layer!r} is a {type(module).__name__}; filter edits support Conv1d/2d/3d and Linear "
            "layers"
        )
    rows = {"weight": module.weight}
    if module.bias is not None:
        rows["bias"] = module.bias
    return rows


def edit_filters(
    model: nn.Module,
    filters: Sequence[Filter],
    columns: torch.Tensor | Sequence[int],
    edit: Edit,
    saved: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] | None = None,
) -> nn.Module:
    """Replace the weight and bias rows of the chosen filters by ``edit(rows)``, in place.

    Args:
        model: The model to edit (a working copy: the experiments never edit the caller's model).
        filters: Column -> ``(layer, channel)``, as ``ParameterSaliency.filters``.
        columns: The profile columns to edit.
        edit: Maps the selected rows ``[n, ...]`` of a weight or bias to their new values.
        saved: Receives ``(parameter, rows, original values)`` before each edit, so a caller can undo the
            edits made so far (also when a later layer raises).

    Returns:
        ``model``.
    """
    with torch.no_grad():
        for layer, channels in layer_channels(filters, columns).items():
            for param in filter_rows(model, layer).values():
                idx = channels.to(param.device)
                if saved is not None:
                    saved.append((param, idx, param[idx].clone()))
                param[idx] = edit(param[idx])
    return model


@contextmanager
def edited_filters(
    model: nn.Module, filters: Sequence[Filter], columns: torch.Tensor | Sequence[int], edit: Edit
) -> Iterator[nn.Module]:
    """:func:`edit_filters` for the ``with`` block; the original rows are put back on exit.

    Args:
        model: The model to edit (a working copy: the experiments never edit the caller's model).
        filters: Column -> ``(layer, channel)``, as ``ParameterSaliency.filters``.
        columns: The profile columns to edit.
        edit: Maps the selected rows ``[n, ...]`` of a weight or bias to their new values.
    """
    saved: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
    try:
        yield edit_filters(model, filters, columns, edit, saved)
    finally:
        with torch.no_grad():
            for param, idx, original in reversed(saved):
                param[idx] = original


def working_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode (BatchNorm uses its running statistics), without parameter gradients."""
    clone = copy.deepcopy(model)
    for p in clone.parameters():
        p.grad = None
    return clone.eval()


@torch.no_grad()
def softmax_probabilities(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Softmax probabilities ``[B, C]`` of ``model`` in eval mode (its modes are restored afterwards)."""
    with eval_mode(model):
        out = [
            model(images[i : i + batch_size]).float().softmax(dim=1)
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(out)


def random_columns(
    n_filters: int, draws: int, samples: int, k: int, generator: torch.Generator
) -> torch.Tensor:
    """``[draws, samples, k]`` random profile columns, ``k`` distinct ones per (draw, sample)."""
    if not 1 <= k <= n_filters:
        raise ValueError(f"k must be in [1, {n_filters}] (the number of filters), got {k}")
    keys = torch.rand(draws, samples, n_filters, generator=generator)
    return keys.argsort(dim=-1)[..., :k]


def _mean(x: torch.Tensor) -> float | None:
    return float(x.float().mean()) if x.numel() else None


def change_summary(result: Any) -> dict[str, float | int | None]:
    """The summary both edit experiments report (filter edits here, pixel masks in ``masking``).

    Args:
        result: A :class:`ConfidenceChange` or a ``MaskingResult``: per-sample ``targets``, ``predicted``,
            ``{salient,random}_{true,predicted}_change`` and ``{salient,random}_corrected``.

    Returns:
        ``samples``, ``misclassified``, the means of the four changes over the samples and of the two
        ``*_corrected`` over the misclassified samples only (``None`` where there are none).
    """
    wrong = result.predicted != result.targets
    return {
        "samples": int(result.targets.numel()),
        "misclassified": int(wrong.sum()),
        "salient_true_change": _mean(result.salient_true_change),
        "random_true_change": _mean(result.random_true_change),
        "salient_predicted_change": _mean(result.salient_predicted_change),
        "random_predicted_change": _mean(result.random_predicted_change),
        "salient_corrected": _mean(result.salient_corrected[wrong]),
        "random_corrected": _mean(result.random_corrected[wrong]),
    }


@dataclass
class ConfidenceChange:
    """Per-sample effect of editing the salient filters vs random filters (Fig. 10, Fig. 17).

    Changes are ``p_after - p_before`` of the softmax probability. ``predicted`` is the class the unedited
    model predicts (the mistaken class for misclassified samples); random-filter fields are averaged over
    the draws.
    """

    k: int
    targets: torch.Tensor
    predicted: torch.Tensor
    true_before: torch.Tensor
    predicted_before: torch.Tensor
    salient_true_change: torch.Tensor
    salient_predicted_change: torch.Tensor
    random_true_change: torch.Tensor
    random_predicted_change: torch.Tensor
    salient_corrected: torch.Tensor
    random_corrected: torch.Tensor
    extra: dict = field(default_factory=dict)

    @property
    def misclassified(self) -> torch.Tensor:
        """``[B]`` bool: the unedited model's prediction differs from the target."""
        return self.predicted != self.targets

    def summary(self) -> dict[str, float | int | None]:
        """Means over the samples; ``*_corrected`` are fractions of the misclassified samples."""
        return {
            "k": self.k,
            **change_summary(self),
            **self.extra,
        }


def confidence_change(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    salient: torch.Tensor,
    filters: Sequence[Filter],
    edit_for: Callable[[int], Edit],
    draws: int,
    seed: int,
    salient_draws: int = 1,
) -> ConfidenceChange:
    """Edit each sample's salient filters, then random filters, one sample at a time, on a working copy.

    ``edit_for(draw)`` returns the edit for one draw (a random edit draws its noise there). Random filter sets
    are ``draws`` uniform draws of ``k`` distinct columns per sample, seeded by ``seed``.
    """
    targets = check_targets(images, targets)
    salient = resolve_columns(salient, len(filters), "salient")
    if salient.dim() != 2 or salient.shape[0] != images.shape[0]:
        raise ValueError(
            f"salient must be [B, k] profile columns (ParameterSaliency.top_filters) for {images.shape[0]} "
            f"images, got shape {tuple(salient.shape)}"
        )
    if draws < 1 or salient_draws < 1:
        raise ValueError(f"the number of random draws must be >= 1, got {draws}")
    b, k = salient.shape
    work = working_copy(model)
    before = softmax_probabilities(work, images)
    predicted = before.argmax(dim=1)
    rows = torch.arange(b, device=before.device)
    random = random_columns(len(filters), draws, b, k, torch.Generator().manual_seed(seed))

    def after(columns: torch.Tensor, edit: Edit) -> torch.Tensor:
        probs = []
        for i in range(b):
            with edited_filters(work, filters, columns[i], edit):
                probs.append(softmax_probabilities(work, images[i : i + 1]))
        return torch.cat(probs)

    salient_probs = torch.stack([after(salient, edit_for(d)) for d in range(salient_draws)])
    random_probs = torch.stack([after(random[d], edit_for(salient_draws + d)) for d in range(draws)])

    def change(probs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return (probs[:, rows, classes] - before[rows, classes]).mean(dim=0)

    def corrected(probs: torch.Tensor) -> torch.Tensor:
        return (probs.argmax(dim=2) == targets).float().mean(dim=0)

    return ConfidenceChange(
        k=k,
        targets=targets,
        predicted=predicted,
        true_before=before[rows, targets],
        predicted_before=before[rows, predicted],
        salient_true_change=change(salient_probs, targets),
        salient_predicted_change=change(salient_probs, predicted),
        random_true_change=change(random_probs, targets),
        random_predicted_change=change(random_probs, predicted),
        salient_corrected=corrected(salient_probs),
        random_corrected=corrected(random_probs),
    )
