"""Targeted fine-tuning (App. B.1): update only the top-k salient filters to correct a mistake.

Only the rows (output channels) of the chosen filters move: every other parameter is frozen and the gradient
is masked per filter. The model runs in eval mode throughout, so BatchNorm uses its running statistics and
never updates them, as in B.1. Controls tune k random or the k least-salient filters instead; their masked
gradient is re-normalised at every step to the norm of the salient filters' gradient, since by definition of
the profile it is smaller and would otherwise move the model less (B.1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from icasc.saliency.parameter.experiments._common import (
    Filter,
    check_targets,
    filter_rows,
    layer_channels,
    random_columns,
    resolve_columns,
    softmax_probabilities,
    working_copy,
)

__all__ = [
    "TuningResult",
    "gradient_norm",
    "masked_gradients",
    "renormalize",
    "tune_filters",
    "tuning_experiment",
]

CONTROLS = ("random", "least")


def _row_masks(model: nn.Module, filters: Sequence[Filter], columns: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{parameter name: [out] bool}``: the rows of the chosen filters in each touched parameter."""
    masks = {}
    for layer, channels in layer_channels(filters, columns).items():
        for kind, param in filter_rows(model, layer).items():
            mask = torch.zeros(param.shape[0], dtype=torch.bool, device=param.device)
            mask[channels.to(param.device)] = True
            masks[f"{layer}.{kind}"] = mask
    return masks


def masked_gradients(
    model: nn.Module, grads: Mapping[str, torch.Tensor], filters: Sequence[Filter], columns: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Keep the gradient rows of the chosen filters only (B.1: the rest of the network is frozen).

    Args:
        model: The model the parameter names refer to.
        grads: ``{parameter name: gradient}``; must hold every parameter of the chosen filters' layers.
        filters: Column -> ``(layer, channel)``.
        columns: The profile columns to keep.

    Returns:
        ``{parameter name: gradient with the other rows zeroed}`` for the chosen filters' layers only.
    """
    out = {}
    for name, mask in _row_masks(model, filters, resolve_columns(columns, len(filters))).items():
        if name not in grads:
            raise ValueError(f"no gradient given for {name!r}, a parameter of a chosen filter")
        g = grads[name]
        out[name] = g * mask.view(-1, *([1] * (g.dim() - 1))).to(g.dtype)
    return out


def gradient_norm(grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of a set of gradients."""
    if not grads:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.float()) for g in grads.values()])
    )


def renormalize(grads: Mapping[str, torch.Tensor], norm: torch.Tensor | float) -> dict[str, torch.Tensor]:
    """Scale ``grads`` so their global L2 norm equals ``norm`` (B.1); an all-zero gradient stays zero."""
    current = gradient_norm(grads)
    scale = torch.as_tensor(norm, dtype=torch.float32) / current if current > 0 else torch.tensor(0.0)
    return {name: g * scale.to(device=g.device, dtype=g.dtype) for name, g in grads.items()}


def _steps(
    work: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    columns: torch.Tensor,
    filters: Sequence[Filter],
    steps: int,
    lr: float,
    reference: torch.Tensor | None,
) -> None:
    """``steps`` plain SGD steps on ``work`` (in place, eval mode) moving only the chosen filters' rows."""
    names = set(_row_masks(work, filters, columns))
    if reference is not None:
        names |= set(_row_masks(work, filters, reference))
    params = dict(work.named_parameters())
    order = sorted(names)
    for _ in range(steps):
        with torch.enable_grad():
            loss = F.cross_entropy(work(images), targets)
            values = torch.autograd.grad(loss, [params[n] for n in order], allow_unused=True)
        grads = {n: (torch.zeros_like(params[n]) if g is None else g) for n, g in zip(order, values)}
        update = masked_gradients(work, grads, filters, columns)
        if reference is not None:
            update = renormalize(update, gradient_norm(masked_gradients(work, grads, filters, reference)))
        with torch.no_grad():
            for name, g in update.items():
                params[name].sub_(lr * g)


def _check_tuning(steps: int, lr: float) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0 (the step size; B.1 uses the last training epoch's lr), got {lr}")


def tune_filters(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    columns: torch.Tensor | Sequence[int],
    filters: Sequence[Filter],
    steps: int = 10,
    lr: float = 1e-3,
    reference: torch.Tensor | Sequence[int] | None = None,
) -> nn.Module:
    """A copy of ``model`` fine-tuned on ``(images, targets)`` through the chosen filters only (B.1).

    Every step takes the cross-entropy gradient of the batch (mean over samples), zeroes all but the chosen
    filters' rows (weight and bias of those output channels) and moves them by ``-lr * gradient``. The copy
    stays in eval mode (BatchNorm in test mode). With ``reference`` (the salient columns), the masked
    gradient is scaled to the norm of the reference filters' gradient at every step: the random /
    least-salient controls of B.1.

    Args:
        model: The classifier; never modified.
        images: ``[B, C, H, W]`` normalised images (e.g. the misclassified ones).
        targets: ``[B]`` true classes.
        columns: Profile columns to tune, e.g. ``ps.top_filters(saliency, k)[0]``.
        filters: Column -> ``(layer, channel)``, ``ps.filters``.
        steps: SGD steps.
        lr: Step size.
        reference: Columns whose gradient norm the update is re-normalised to; ``None``: no re-normalisation.

    Returns:
        The tuned copy, in eval mode; export it with ``icasc.models.export.export_backbone``.
    """
    _check_tuning(steps, lr)
    targets = check_targets(images, targets)
    columns = resolve_columns(columns, len(filters)).reshape(-1)
    if reference is not None:
        reference = resolve_columns(reference, len(filters)).reshape(-1)
    work = working_copy(model)
    _steps(work, images, targets, columns, filters, steps, lr, reference)
    return work


@dataclass
class TuningResult:
    """Per-sample outcome of targeted tuning, one entry per arm (``salient``, ``random``, ``least``).

    Attributes:
        corrected: ``{arm: [Q] bool}``: the tuned sample is classified correctly afterwards.
        true_change: ``{arm: [Q]}``: change of the sample's true-class probability.
        neighbours_corrected: ``{arm: [Q]}``: fraction of the sample's misclassified neighbours that become
            correct (NaN where it has none).
        neighbours_broken: ``{arm: [Q]}``: fraction of its correct neighbours that become wrong (NaN if none).
        neighbour_true_change: ``{arm: [Q]}``: mean change of the neighbours' true-class probability.
    """

    k: int
    steps: int
    lr: float
    corrected: dict[str, torch.Tensor] = field(default_factory=dict)
    true_change: dict[str, torch.Tensor] = field(default_factory=dict)
    neighbours_corrected: dict[str, torch.Tensor] = field(default_factory=dict)
    neighbours_broken: dict[str, torch.Tensor] = field(default_factory=dict)
    neighbour_true_change: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """Per arm: percentage corrected and mean neighbour effects (NaN entries left out)."""

        def mean(x: torch.Tensor) -> float | None:
            x = x[~torch.isnan(x)]
            return float(x.mean()) if x.numel() else None

        arms = {}
        for arm, corrected in self.corrected.items():
            entry = {
                "corrected_percent": 100.0 * float(corrected.float().mean()),
                "true_change": mean(self.true_change[arm]),
            }
            if arm in self.neighbours_corrected:
                entry["neighbours_corrected"] = mean(self.neighbours_corrected[arm])
                entry["neighbours_broken"] = mean(self.neighbours_broken[arm])
                entry["neighbour_true_change"] = mean(self.neighbour_true_change[arm])
            arms[arm] = entry
        samples = len(next(iter(self.corrected.values()))) if self.corrected else 0
        return {"k": self.k, "steps": self.steps, "lr": self.lr, "samples": samples, "arms": arms}


def tuning_experiment(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    salient: torch.Tensor,
    filters: Sequence[Filter],
    least: torch.Tensor | None = None,
    controls: Sequence[str] = CONTROLS,
    steps: int = 10,
    lr: float = 1e-3,
    pool_images: torch.Tensor | None = None,
    pool_targets: torch.Tensor | None = None,
    neighbours: torch.Tensor | None = None,
    seed: int = 0,
) -> TuningResult:
    """Tune each sample's filters on that sample alone and measure what it fixes (B.1, Fig. 16).

    For every sample and arm the working copy is tuned from the original weights (``steps`` SGD steps on the
    one sample), evaluated on the sample and on its nearest neighbours in saliency space, then restored.

    Args:
        model: The classifier; never modified.
        images: ``[Q, C, H, W]`` the samples to fix (usually misclassified ones).
        targets: ``[Q]`` their true classes.
        salient: ``[Q, k]`` each sample's top-k salient columns.
        filters: Column -> ``(layer, channel)``, ``ps.filters``.
        least: ``[Q, k]`` each sample's least salient columns (needed for the ``"least"`` control).
        controls: Any of ``"random"`` (k seeded random filters) and ``"least"``; both re-normalised.
        steps: SGD steps per sample.
        lr: Step size.
        pool_images: ``[N, C, H, W]`` the images the neighbours index (e.g. the validation set).
        pool_targets: ``[N]`` their true classes.
        neighbours: ``[Q, n]`` pool indices of each sample's nearest neighbours (``neighbours.nearest``).
        seed: Seed of the random control.

    Returns:
        A :class:`TuningResult`.
    """
    _check_tuning(steps, lr)
    targets = check_targets(images, targets)
    salient = resolve_columns(salient, len(filters), "salient")
    if salient.dim() != 2 or salient.shape[0] != images.shape[0]:
        raise ValueError(
            f"salient must be [Q, k] columns for {images.shape[0]} images, got {tuple(salient.shape)}"
        )
    unknown = sorted(set(controls) - set(CONTROLS))
    if unknown:
        raise ValueError(f"unknown tuning controls {unknown}; choose from {list(CONTROLS)}")
    q, k = salient.shape
    arms: dict[str, tuple[torch.Tensor, bool]] = {"salient": (salient, False)}
    if "random" in controls:
        arms["random"] = (random_columns(len(filters), 1, q, k, torch.Generator().manual_seed(seed))[0], True)
    if "least" in controls:
        if least is None or tuple(least.shape) != (q, k):
            raise ValueError(f"the 'least' control needs least=[Q, k] = [{q}, {k}] least-salient columns")
        arms["least"] = (resolve_columns(least, len(filters), "least"), True)
    with_pool = neighbours is not None
    if with_pool:
        if pool_images is None or pool_targets is None:
            raise ValueError("neighbours index a pool: pass pool_images and pool_targets too")
        pool_targets = check_targets(pool_images, pool_targets)
        if neighbours.dim() != 2 or neighbours.shape[0] != q:
            raise ValueError(f"neighbours must be [Q, n] pool indices, got {tuple(neighbours.shape)}")

    work = working_copy(model)
    before = softmax_probabilities(work, images)
    if with_pool:
        pool_before = softmax_probabilities(work, pool_images)
        pool_correct = pool_before.argmax(dim=1) == pool_targets
    # Tuning only moves the rows of the chosen layers: snapshot those to restore after each sample.
    touched = {n for cols, _ in arms.values() for n in _row_masks(work, filters, cols.reshape(-1))}
    params = dict(work.named_parameters())
    snapshot = {n: params[n].detach().clone() for n in touched}
    result = TuningResult(k=k, steps=steps, lr=lr)
    for arm, (columns, renorm) in arms.items():
        corrected, true_change, nb_fixed, nb_broken, nb_change = [], [], [], [], []
        for i in range(q):
            x, y = images[i : i + 1], targets[i : i + 1]
            _steps(work, x, y, columns[i], filters, steps, lr, salient[i] if renorm else None)
            after = softmax_probabilities(work, x)[0]
            corrected.append(bool(after.argmax() == targets[i]))
            true_change.append(float(after[targets[i]] - before[i, targets[i]]))
            if with_pool:
                idx = neighbours[i].to(pool_images.device)
                probs = softmax_probabilities(work, pool_images[idx])
                ny = pool_targets[idx]
                now = probs.argmax(dim=1) == ny
                was = pool_correct[idx]
                nb_fixed.append(float((now & ~was).sum() / (~was).sum()) if (~was).any() else float("nan"))
                nb_broken.append(float((~now & was).sum() / was.sum()) if was.any() else float("nan"))
                change = probs[torch.arange(len(idx)), ny] - pool_before[idx, ny]
                nb_change.append(float(change.mean()))
            with torch.no_grad():
                for n, value in snapshot.items():
                    params[n].copy_(value)
        result.corrected[arm] = torch.tensor(corrected)
        result.true_change[arm] = torch.tensor(true_change)
        if with_pool:
            result.neighbours_corrected[arm] = torch.tensor(nb_fixed)
            result.neighbours_broken[arm] = torch.tensor(nb_broken)
            result.neighbour_true_change[arm] = torch.tensor(nb_change)
    return result
