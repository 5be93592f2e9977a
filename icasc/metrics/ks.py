"""Kolmogorov–Smirnov separation of the true class from the most confusing class (ICASC paper §4.2.1, Fig. 9).

Over a test set, every sample gives two probabilities: that of its ground-truth class (*Target*) and that of
its most confusing class, the highest-probability non-ground-truth class (*Confused*). The KS statistic is the
largest vertical gap between the empirical CDFs of the two samples, ``sup_x |F_target(x) - F_confused(x)|``,
and the *threshold* is the probability ``x`` at which it occurs. A model that separates the classes well puts
the target probabilities high and the confused ones low, so the gap is large (paper: 0.64 at 0.51 for the
ResNet-50 baseline vs 0.74 at 0.55 with ICASC on CUB-200-2011).

The ECDFs are right-continuous step functions that only change at sample points, so the supremum is attained
at a sample point and evaluating both CDFs at every sample point (ties included) gives it exactly; the value
equals ``scipy.stats.ks_2samp(target, confused).statistic`` (two-sided). The statistic is two-sided, so a
model that ranks the confusing class *above* the true one also scores high; :func:`ks_sign` (``sign`` in
:meth:`KSStatistic.compute_details`, and :class:`KSSign`) tells the two cases apart (+1: the target
probabilities are the higher ones, the margin of Fig. 9). For any classifier with useful accuracy the sign is
+1 and the two-sided statistic equals the one-sided margin ``sup_x (F_confused(x) - F_target(x))``.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "KSSign",
    "KSStatistic",
    "KSThreshold",
    "ecdf",
    "ks_curves",
    "ks_sign",
    "ks_statistic",
    "most_confused",
    "true_and_confused_probabilities",
]


def _check_samples(values: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or values.dim() != 1:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"{name} must be a 1-D tensor of probabilities, got {shape}")
    if values.numel() == 0:
        raise ValueError(f"{name} is empty: the KS statistic needs at least one sample on each side")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contains NaN or inf")
    # float64: the CDF steps are k / n; exact comparisons with the reference need the precision
    return values.detach().to(torch.float64)


def ecdf(samples: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """The empirical CDF of ``samples`` evaluated at ``at``: ``#{s <= x} / n`` (right-continuous).

    Args:
        samples: ``[n]`` values.
        at: ``[m]`` points.

    Returns:
        ``[m]`` float64 in ``[0, 1]``.
    """
    samples = _check_samples(samples, "samples")
    ordered = samples.sort().values
    points = at.detach().to(device=ordered.device, dtype=torch.float64)
    return torch.searchsorted(ordered, points, right=True).to(torch.float64) / ordered.numel()


def ks_curves(true_probs: torch.Tensor, confused_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both empirical CDFs at every distinct sample point (what Fig. 9 plots).

    Args:
        true_probs: ``[n]`` target-class probabilities.
        confused_probs: ``[m]`` most-confusing-class probabilities.

    Returns:
        ``{"x": [k] sorted distinct sample values, "target": F_target(x), "confused": F_confused(x)}``
        (float64).
    """
    a = _check_samples(true_probs, "true_probs")
    b = _check_samples(confused_probs, "confused_probs").to(a.device)
    x = torch.unique(torch.cat([a, b]))  # sorted
    return {"x": x, "target": ecdf(a, x), "confused": ecdf(b, x)}


def ks_statistic(true_probs: torch.Tensor, confused_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sample KS statistic and where it occurs (ICASC §4.2.1, Fig. 9).

    Args:
        true_probs: ``[n]`` probabilities of the ground-truth class.
        confused_probs: ``[m]`` probabilities of the most confusing class (``n`` and ``m`` may differ).

    Returns:
        ``(statistic, threshold)``, float64 scalars: ``sup_x |F_target(x) - F_confused(x)|`` (equal to
        ``scipy.stats.ks_2samp(true_probs, confused_probs).statistic``) and the smallest sample value ``x``
        at which the supremum is attained.

    Raises:
        ValueError: Not 1-D, empty, or non-finite input.
    """
    curves = ks_curves(true_probs, confused_probs)
    gaps = (curves["target"] - curves["confused"]).abs()
    # argmax returns the first maximum: the smallest x, since x is sorted
    at = int(gaps.argmax())
    return gaps[at], curves["x"][at]


def ks_sign(true_probs: torch.Tensor, confused_probs: torch.Tensor, threshold: torch.Tensor) -> int:
    """Which way the gap at ``threshold`` points: ``+1`` where ``F_confused >= F_target`` there.

    ``+1`` is the case of Fig. 9 (the target probabilities lie above the confused ones, so the statistic is
    the margin by which the model separates them); ``-1`` means the model puts the confusing class above
    the true one (an untrained or failing model), where the two-sided statistic measures the opposite.
    """
    at = threshold.reshape(1)
    return 1 if float(ecdf(confused_probs, at)) >= float(ecdf(true_probs, at)) else -1


def true_and_confused_probabilities(
    probs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target-class and most-confusing-class probabilities of a batch (ICASC §4.2.1).

    Single-label (``targets`` ``[B]`` class indices): one pair per image, the probability of the label and
    the highest probability among the other classes.

    Multi-label (``targets`` ``[B, C]`` multi-hot): one pair per (image, positive class): that class's
    probability against the highest probability among the image's negative classes (the most confusing
    class as §4.2.4 defines it). Images with no negative class have no confusing class and give no pair,
    as in the attention losses.

    Args:
        probs: ``[B, C]`` probabilities (softmax for single-label, sigmoid for multi-label), not logits.
        targets: ``[B]`` int class indices or ``[B, C]`` multi-hot.

    Returns:
        ``(true_p, confused_p)``, each ``[P]``: ``P = B`` (single-label) or the number of pairs.

    Raises:
        ValueError: Bad shapes, out-of-range labels, or values outside ``[0, 1]`` (logits passed).
    """
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or probs.shape[1] < 2:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"probs must be [B, C] with C >= 2 classes, got {shape}")
    if probs.numel() and (float(probs.min()) < 0.0 or float(probs.max()) > 1.0):
        raise ValueError(
            f"probs must be probabilities in [0, 1], got values in [{float(probs.min()):.4g}, "
            f"{float(probs.max()):.4g}]: pass softmax (single-label) or sigmoid (multi-label) outputs, "
            "not logits"
        )
    b, c = probs.shape
    targets = targets.to(probs.device)
    if targets.dim() == 1:
        if targets.shape[0] != b or targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise ValueError(
                f"single-label targets must be [B] = [{b}] integer class indices, got "
                f"{targets.dtype} {tuple(targets.shape)}"
            )
        if b and (int(targets.min()) < 0 or int(targets.max()) >= c):
            raise ValueError(f"target classes must lie in [0, {c}), got {targets.tolist()}")
        index = targets.long()[:, None]
        true_p = probs.gather(1, index).squeeze(1)
        confused_p = probs.scatter(1, index, float("-inf")).amax(dim=1)
        return true_p, confused_p
    if targets.shape != probs.shape:
        raise ValueError(
            f"multi-label targets must be multi-hot [B, C] = {tuple(probs.shape)}, got {tuple(targets.shape)}"
        )
    positive = targets > 0.5
    negatives = probs.masked_fill(positive, float("-inf")).amax(dim=1)  # -inf: no negative class
    pairs = positive & torch.isfinite(negatives)[:, None]
    image = pairs.nonzero()[:, 0]
    return probs[pairs], negatives[image]


def most_confused(probs: torch.Tensor, targets: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The ``k`` images with the smallest margin ``p(true) - p(most confusing)``, smallest first.

    Single-label: the true class is the label and the most confusing class the highest-probability other
    class (ICASC §4.2.1), so the most confidently misclassified images come first. Multi-label: the true
    class is the image's least probable positive class and the confusing class its most probable negative
    one; images without a positive or without a negative class are not candidates.

    Args:
        probs: ``[N, C]`` probabilities.
        targets: ``[N]`` labels or ``[N, C]`` multi-hot.
        k: How many images.

    Returns:
        ``index``, ``true_class``, ``confused_class``, ``true_prob``, ``confused_prob``, ``margin``: ``[k']``
        each, ``k' = min(k, candidates)``.
    """
    if targets.dim() == 1:
        true_prob, _ = true_and_confused_probabilities(probs, targets)
        true_class = targets.long()
        confused_prob, confused_class = probs.scatter(1, true_class[:, None], float("-inf")).max(dim=1)
        valid = torch.ones_like(true_class, dtype=torch.bool)
    else:
        positive = targets > 0.5
        true_prob, true_class = probs.masked_fill(~positive, float("inf")).min(dim=1)
        confused_prob, confused_class = probs.masked_fill(positive, float("-inf")).max(dim=1)
        valid = positive.any(dim=1) & (~positive).any(dim=1)
    margin = (true_prob - confused_prob).masked_fill(~valid, float("inf"))
    order = torch.sort(margin, stable=True).indices[: min(int(k), int(valid.sum()))]
    return {
        "index": order,
        "true_class": true_class[order],
        "confused_class": confused_class[order],
        "true_prob": true_prob[order],
        "confused_prob": confused_prob[order],
        "margin": margin[order],
    }


class KSStatistic(Metric):
    """The KS statistic of Fig. 9 over everything seen since the last reset, exact under DDP.

    ``update`` takes **probabilities** (softmax for single-label, sigmoid for multi-label) and the targets;
    the per-sample target and confused probabilities are kept as ``cat`` states, so under DDP every process
    gathers all samples before ``compute`` (the statistic of a union is not a function of the parts'
    statistics).

    ``compute`` gives the statistic alone, a scalar that ``LightningModule.log`` takes like any other metric;
    :meth:`compute_details` gives it with its threshold, sign and the samples. :class:`KSThreshold` and
    :class:`KSSign` are the same metric computing the threshold and the sign, for code that logs or collects
    each value as one metric.

    Args:
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    Example:
        >>> ks = KSStatistic()
        >>> ks.update(logits.softmax(dim=1), labels)  # doctest: +SKIP
        >>> ks.compute()  # doctest: +SKIP
        >>> ks.compute_details()["threshold"]  # doctest: +SKIP
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("true_probs", default=[], dist_reduce_fx="cat")
        self.add_state("confused_probs", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``probs`` ``[B, C]`` probabilities, ``targets`` ``[B]`` or ``[B, C]`` multi-hot.

        See :func:`true_and_confused_probabilities` for the pairs each form gives.
        """
        true_p, confused_p = true_and_confused_probabilities(probs.detach(), targets)
        self.true_probs.append(true_p.float())
        self.confused_probs.append(confused_p.float())

    def _samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The target and confused probabilities seen, in update order (within a process)."""
        # after a DDP sync the states are already one gathered tensor; before, lists of batches
        if isinstance(self.true_probs, list) and not self.true_probs:
            true_p = confused_p = torch.empty(0)
        else:
            true_p, confused_p = dim_zero_cat(self.true_probs), dim_zero_cat(self.confused_probs)
        if true_p.numel() == 0 or confused_p.numel() == 0:
            raise ValueError(
                f"{type(self).__name__}.compute() before any sample: call update() with a non-empty batch "
                "first"
            )
        return true_p, confused_p

    def compute(self) -> torch.Tensor:
        """The KS statistic, a float64 scalar (see :func:`ks_statistic`).

        Raises:
            ValueError: No sample was seen.
        """
        return ks_statistic(*self._samples())[0]

    def compute_details(self) -> dict[str, torch.Tensor | int]:
        """The statistic and threshold (float64 scalars), the sign and the samples, as a dict.

        Keys: ``statistic``, ``threshold``, ``sign`` (an int, see :func:`ks_sign`), ``true_probs``,
        ``confused_probs``. Under DDP the samples of every process are gathered first, as in ``compute``.

        The samples are in update order (within a process), for the CDF chart (:func:`ks_curves`).

        Raises:
            ValueError: No sample was seen.
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn):
            true_p, confused_p = self._samples()
            statistic, threshold = ks_statistic(true_p, confused_p)
            return {
                "statistic": statistic,
                "threshold": threshold,
                "sign": ks_sign(true_p, confused_p, threshold),
                "true_probs": true_p,
                "confused_probs": confused_p,
            }


class KSThreshold(KSStatistic):
    """The probability at which the KS statistic occurs (the threshold of Fig. 9), as a metric.

    Same states and ``update`` as :class:`KSStatistic`; ``compute`` gives the threshold, a float64 scalar.
    """

    higher_is_better = None

    def compute(self) -> torch.Tensor:
        """The threshold of :func:`ks_statistic`, a float64 scalar.

        Raises:
            ValueError: No sample was seen.
        """
        return ks_statistic(*self._samples())[1]


class KSSign(KSStatistic):
    """Which way the KS gap points (:func:`ks_sign`: +1 when the true class lies above the confusing one).

    Same states and ``update`` as :class:`KSStatistic`; ``compute`` gives the sign, an int64 scalar.
    """

    higher_is_better = None

    def compute(self) -> torch.Tensor:
        """``+1`` or ``-1``, an int64 scalar.

        Raises:
            ValueError: No sample was seen.
        """
        true_p, confused_p = self._samples()
        return torch.tensor(ks_sign(true_p, confused_p, ks_statistic(true_p, confused_p)[1]))
