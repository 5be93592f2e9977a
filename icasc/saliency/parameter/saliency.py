"""Parameter-space saliency (Levin et al., NeurIPS 2022): which filters misbehave on a sample, and why.

``s_i = |dL(x, y)/d theta_i|`` with ``L`` the cross-entropy for the true label (§2.1), averaged over each
convolution filter's weights (the *filter-wise profile*), standardised per filter with the mean and std of
a reference set (``s_hat = (s - mu) / sigma``); the top-k filters of ``s_hat`` are the ones "behind" the
sample's loss, and :meth:`ParameterSaliency.input_saliency` shows the pixels that drive them (§2.2, B.2).

Per-sample gradients are independent only when samples do not interact, so every analysis runs the model
in eval mode (BatchNorm with running statistics, dropout off) and restores each sub-module's mode after.
The model's weights, ``requires_grad`` flags and ``.grad`` are left as they were, and every hook is removed,
also when an analysis raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from icasc.saliency._input_gradients import reduce_channels
from icasc.saliency.base import check_images, chunk_size_for
from icasc.saliency.parameter.grads import (
    LossFn,
    batched_totals,
    default_memory_mb,
    loop_totals,
)
from icasc.saliency.parameter.input_saliency import boost_profile, top_filters
from icasc.saliency.parameter.layers import check_per_sample_independence, resolve_profiled_layers
from icasc.saliency.parameter.per_sample import Magnitude
from icasc.saliency.parameter.profiles import SaliencyProfiles, cross_entropy_per_sample, split_batch
from icasc.saliency.parameter.stats import RunningMoments, SaliencyStats
from icasc.utils import eval_mode

__all__ = ["PER_SAMPLE_GRADIENT_METHODS", "ParameterSaliency"]

PER_SAMPLE_GRADIENT_METHODS = ("batched", "loop")


class ParameterSaliency:
    """Per-sample parameter-saliency profiles, their reference statistics, top filters and input maps.

    Args:
        model: A classifier returning ``[B, C]`` logits.
        loss: ``loss(logits, targets) -> [B]`` per-sample losses; default: cross-entropy with the true label.
        layers: ``None`` for every profiled layer type in ``model.modules()`` order, else dotted layer names
            (columns still follow ``model.modules()`` order).
        granularity: ``"filter"``: mean ``|dL/dW|`` over each ``nn.Conv2d`` output filter's weights (the
            paper's filter-wise profile). ``"unit"``: every parameter grouped by output unit: a convolution
            filter's weights, its bias, and the affine ``gamma_c, beta_c`` of the BatchNorm that normalises
            that convolution's output (found in the forward pass: the BatchNorm's input *is* the
            convolution's output); ``nn.Linear`` rows with their bias (and a BatchNorm1d on their output).
            With ``layers=None`` a BatchNorm that normalises no such output (pre-activation layouts) or a
            parameter in another module type is an error: "unit" then means every parameter.
        method: ``"batched"`` (one forward/backward per batch) or ``"loop"`` (the batch-size-1 reference).
        memory_mb: Per-layer budget of the batched path's per-sample gradient chunks; ``None``: 64 MiB on the
            CPU (measured with ``python -m icasc.bench param-saliency``), 1 GiB on accelerators.
        eps: Standard deviations ``<= eps`` count as 1 in :meth:`standardize` (as in the authors' release),
            so filters whose gradient never varies (dead filters) standardise to ``s - mu``.

    Example:
        >>> ps = ParameterSaliency(model)
        >>> ps.fit_stats(val_loader)                    # mu, sigma per filter
        >>> s_hat = ps.standardize(ps.profile(images, targets))
        >>> ps.top_filters(s_hat, k=10)                 # [B, 10]
        >>> maps = ps.input_saliency(images, targets)   # [B, H, W]
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn | None = None,
        layers: Sequence[str] | None = None,
        granularity: str = "filter",
        method: str = "batched",
        memory_mb: float | None = None,
        eps: float = 1e-12,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if method not in PER_SAMPLE_GRADIENT_METHODS:
            raise ValueError(f"method must be one of {PER_SAMPLE_GRADIENT_METHODS}, got {method!r}")
        if memory_mb is not None and not memory_mb > 0:
            raise ValueError(f"memory_mb must be > 0 or None, got {memory_mb!r}")
        if loss is not None and not callable(loss):
            raise ValueError(f"loss must be a callable (logits, targets) -> [B], got {type(loss).__name__}")
        self.model = model
        self.loss: LossFn = loss if loss is not None else cross_entropy_per_sample
        self.granularity = granularity
        self.method = method
        self.memory_mb = memory_mb
        self.eps = eps
        self._layers = resolve_profiled_layers(model, layers, granularity)
        self._all_parameters = layers is None and granularity == "unit"
        check_per_sample_independence(model)
        self.stats: SaliencyStats | None = None

    # ------------------------------------------------------------------------------------------ columns

    @property
    def layers(self) -> list[str]:
        """Names of the profiled layers, in column order."""
        return [layer.name for layer in self._layers]

    @property
    def filters(self) -> list[tuple[str, int]]:
        """``(layer name, output unit)`` of every profile column."""
        return [(layer.name, c) for layer in self._layers for c in range(layer.units)]

    @property
    def layer_slices(self) -> dict[str, slice]:
        """The columns of each layer."""
        slices, start = {}, 0
        for layer in self._layers:
            slices[layer.name] = slice(start, start + layer.units)
            start += layer.units
        return slices

    @property
    def n_filters(self) -> int:
        return sum(layer.units for layer in self._layers)

    # ----------------------------------------------------------------------------------------- profiles

    def _magnitude(self) -> Magnitude:
        """The per-parameter value that is averaged (``|g|``; variants override it)."""
        return Magnitude()

    def _compute(
        self, images: torch.Tensor, targets: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Profiles and logits of a batch, model already in eval mode (variants override it)."""
        common = dict(
            loss=self.loss,
            layers=self._layers,
            granularity=self.granularity,
            magnitude=self._magnitude(),
            create_graph=create_graph,
            all_layers=self._all_parameters,
        )
        if self.method == "loop":
            return loop_totals(self.model, images, targets, **common)
        memory = self.memory_mb if self.memory_mb is not None else default_memory_mb(images.device)
        return batched_totals(self.model, images, targets, memory_mb=memory, **common)

    def _targets(self, targets: torch.Tensor | int, images: torch.Tensor) -> torch.Tensor:
        if isinstance(targets, int) and not isinstance(targets, bool):
            return torch.full((images.shape[0],), targets, dtype=torch.long, device=images.device)
        if not isinstance(targets, torch.Tensor) or targets.dim() == 0 or targets.shape[0] != images.shape[0]:
            shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise ValueError(f"targets must be an int or a tensor with {images.shape[0]} rows, got {shape}")
        return targets.to(images.device)

    def profile_with_logits(
        self, images: torch.Tensor, targets: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`profile` and the logits of the same forward pass (no extra pass)."""
        check_images(images)
        targets = self._targets(targets, images)
        with eval_mode(self.model):
            profiles, logits = self._compute(images, targets)
        return profiles.detach(), logits.detach()

    def profile(self, images: torch.Tensor, targets: torch.Tensor | int) -> torch.Tensor:
        """Filter-wise saliency profiles (paper §2.1), not standardised.

        Args:
            images: ``[B, C, H, W]`` normalised images.
            targets: ``[B]`` true classes (or what ``loss`` takes), or one int for all.

        Returns:
            ``[B, n_filters]``: per sample, the mean ``|dL/d theta|`` over each column's parameters.
        """
        return self.profile_with_logits(images, targets)[0]

    def _device(self) -> torch.device:
        first = next(self.model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def _batches(
        self, loader: Iterable, max_batches: int | None
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
        device = self._device()
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            images, targets = split_batch(batch)
            yield images.to(device), targets.to(device)

    def profiles(
        self, loader: Iterable, max_batches: int | None = None, standardize: bool = False
    ) -> SaliencyProfiles:
        """Profiles of every sample of a loader, with predictions and confidences (on the CPU).

        Args:
            loader: Yields house batch dicts or ``(images, targets)`` pairs.
            max_batches: Stop after this many batches.
            standardize: Return :meth:`standardize`-d profiles (needs stats).
        """
        rows, preds, tgts, conf, true_conf = [], [], [], [], []
        for images, targets in self._batches(loader, max_batches):
            profiles, logits = self.profile_with_logits(images, targets)
            probs = logits.float().softmax(dim=1)
            top = probs.max(dim=1)
            rows.append(profiles.cpu())
            preds.append(top.indices.cpu())
            conf.append(top.values.cpu())
            tgts.append(targets.cpu())
            if targets.dim() == 1 and not targets.dtype.is_floating_point:
                true_conf.append(probs.gather(1, targets.long()[:, None]).squeeze(1).cpu())
        if not rows:
            raise ValueError("the loader yielded no batches")
        stacked = torch.cat(rows)
        return SaliencyProfiles(
            profiles=self.standardize(stacked) if standardize else stacked,
            predictions=torch.cat(preds),
            targets=torch.cat(tgts),
            confidences=torch.cat(conf),
            true_confidences=torch.cat(true_conf) if len(true_conf) == len(rows) else None,
            standardized=standardize,
        )

    # -------------------------------------------------------------------------------------------- stats

    def fit_stats(self, loader: Iterable, max_batches: int | None = None) -> SaliencyStats:
        """Per-filter mean and unbiased std of the profiles of a reference set; kept on the instance.

        Streams batch by batch (Chan et al.'s parallel merge in float64), so the result equals
        ``torch.mean`` / ``torch.std`` over all profiles at once without holding them.
        """
        moments = RunningMoments()
        for images, targets in self._batches(loader, max_batches):
            moments.update(self.profile(images, targets))
        if moments.count < 2:
            raise ValueError(f"fit_stats needs at least 2 samples, the loader gave {moments.count}")
        self.stats = SaliencyStats(moments.mean, moments.std(), moments.count, self.filters, self.granularity)
        return self.stats

    def set_stats(self, stats: SaliencyStats) -> SaliencyStats:
        """Use ``stats`` (checked against this model's columns) for :meth:`standardize`."""
        stats.check_matches(self.filters, self.granularity)
        self.stats = stats
        return stats

    def load_stats(self, path: str | Path) -> SaliencyStats:
        """Load stats written by :meth:`SaliencyStats.save`; a clear error if they belong to another model."""
        stats = SaliencyStats.load(path)
        stats.check_matches(self.filters, self.granularity, source=f"the stats in {path}")
        self.stats = stats
        return stats

    def standardize(self, profiles: torch.Tensor) -> torch.Tensor:
        """``(s - mu) / sigma`` per filter (paper §2.1), with ``sigma <= eps`` counted as 1."""
        if self.stats is None:
            raise ValueError("no reference statistics: call fit_stats(loader) or load_stats(path) first")
        if profiles.shape[-1] != self.stats.n_filters:
            raise ValueError(f"profiles have {profiles.shape[-1]} columns, the stats {self.stats.n_filters}")
        mean = self.stats.mean.to(device=profiles.device, dtype=profiles.dtype)
        std = self.stats.std.to(device=profiles.device, dtype=profiles.dtype)
        return (profiles - mean) / torch.where(std > self.eps, std, torch.ones_like(std))

    top_filters = staticmethod(top_filters)

    # ------------------------------------------------------------------------------- input-space saliency

    def input_saliency(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | int,
        filters: torch.Tensor | None = None,
        k: int = 10,
        boost: float = 100.0,
        reduce: str = "absmax",
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Pixels that drive the saliency of a filter set (paper §2.2, appendix B.2).

        The sample's profile ``s(x)`` (standardised when stats are set, as the authors do) is computed
        differentiably w.r.t. the input (a double backward); the target ``t`` is ``s(x)`` with the chosen
        filters multiplied by ``boost``, held constant; the map is ``d cos(s(x), t) / dx``: the direction that
        *increases* the similarity to the boosted profile, i.e. makes the chosen filters more salient
        relative to the rest. Its absolute value is reduced over the colour channels.

        Args:
            images: ``[B, C, H, W]`` images.
            targets: ``[B]`` true classes (or one int).
            filters: ``[B, k]`` or ``[k]`` profile columns; ``None``: each sample's :meth:`top_filters`.
            k: Number of top filters when ``filters`` is ``None`` (B.2: 10).
            boost: Boost factor (B.2: 100).
            reduce: Channel reduction, ``"absmax"`` (``max_c |g_c|``) or ``"sum"``.
            chunk_size: Images per double-backward pass (samples are independent, so chunking changes
                nothing but memory: the graph holds every layer's input patches); ``None``: 2 MiB of input
                per chunk on the CPU (42 images at 64 px), 64 MiB on accelerators.

        Returns:
            ``[B, H, W]`` raw (not thresholded) maps; see
            :func:`~icasc.saliency.parameter.input_saliency.postprocess_input_saliency`.
        """
        check_images(images)
        targets = self._targets(targets, images)
        if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        if filters is not None:
            filters = torch.as_tensor(filters, device=images.device)
            if filters.dim() == 2 and filters.shape[0] != images.shape[0]:
                raise ValueError(
                    f"filters must be [k] or [B={images.shape[0]}, k] columns, got {tuple(filters.shape)}"
                )
        chunk = chunk_size_for(images, chunk_size, None, cpu_mb=2, device_mb=64)
        maps = []
        with eval_mode(self.model), torch.enable_grad():
            for start in range(0, images.shape[0], chunk):
                rows = slice(start, start + chunk)
                chosen = filters if filters is None or filters.dim() == 1 else filters[rows]
                maps.append(self._input_gradient(images[rows], targets[rows], chosen, k, boost))
        return reduce_channels(torch.cat(maps), reduce)

    def _input_gradient(
        self, images: torch.Tensor, targets: torch.Tensor, filters: torch.Tensor | None, k: int, boost: float
    ) -> torch.Tensor:
        x = images.detach().clone().requires_grad_(True)
        profiles, _ = self._compute(x, targets, create_graph=True)
        if self.stats is not None:
            profiles = self.standardize(profiles)
        chosen = top_filters(profiles, k) if filters is None else filters
        target = boost_profile(profiles, chosen, boost)
        similarity = F.cosine_similarity(profiles, target, dim=1)
        (grads,) = torch.autograd.grad(similarity.sum(), x)
        return grads.detach()
