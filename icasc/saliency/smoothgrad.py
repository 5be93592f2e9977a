"""SmoothGrad: average a method's output over noisy copies of the image (SmoothGrad paper §2.2, §3)."""

from __future__ import annotations

import torch

from icasc.saliency._input_gradients import ChannelAttribution, class_scores, reduce_channels
from icasc.saliency.base import Attribution, TargetLike, check_chunking, chunk_size_for
from icasc.utils import is_int

__all__ = ["SmoothGrad"]


class SmoothGrad(Attribution):
    """``M_hat_c(x) = (1/n) sum_{i=1..n} M_c(x + N(0, sigma^2))`` around any wrapped method (§2.2, §3.4).

    The noise level is relative to each image's range: ``sigma = level * (x_max - x_min)`` (§3.2, Fig. 3;
    10-20% works best). The ``B * n`` noisy images are processed ``chunk_size`` at a time. Noise comes from a
    local ``torch.Generator`` seeded with ``seed`` at every call, so the same seed gives the same maps and the
    global RNG is untouched; the same ``n`` noise patterns (scaled by each image's ``sigma``) serve every
    image of a batch, so an image's map does not depend on the rest of its batch.

    What is averaged depends on the wrapped method, as with captum's ``NoiseTunnel``:

    * methods with raw ``[B, C, H, W]`` attributions (:class:`~icasc.saliency.vanilla.VanillaGradient`,
      :class:`~icasc.saliency.guided_backprop.GuidedBackprop`,
      :class:`~icasc.saliency.integrated_gradients.IntegratedGradients`,
      :class:`~icasc.saliency.guided_gradcam.GuidedGradCAM`) are averaged at the raw, signed level, then
      reduced over the channels with the wrapped method's ``reduce``;
    * other methods (e.g. :class:`~icasc.saliency.gradcam.GradCAM`) are averaged at the map level; the
      channel-level options ``absolute`` and ``multiply_by_input`` then raise a ValueError.

    The class is the one of the clean image (``target=None`` -> its predicted class), for every noisy copy.
    ``level=0`` makes all copies identical, so the wrapped method is evaluated once and the result equals it.

    Args:
        method: The wrapped attribution method.
        level: ``sigma / (x_max - x_min)``, the relative noise level (§3.2).
        n_samples: ``n``, the number of noisy copies (§3.2: little changes beyond 50).
        chunk_size: Noisy images per call of the wrapped method; ``None``: from ``memory_budget_mb``.
        memory_budget_mb: Input MiB per call when ``chunk_size`` is ``None``; ``None`` picks it by device
            (:func:`~icasc.saliency.base.chunk_size_for`).
        squared: SmoothGrad^2: average the squares of the values instead of the values.
        absolute: Average ``|v|`` per sample (§3.1, "Absolute value of gradients"), so opposite signs of
            different samples do not cancel.
        cap_percentile: Cap each final map at its own ``cap_percentile``-th percentile (§3.1, "Capping
            outlying values"; the paper uses 99). ``None`` disables it.
        multiply_by_input: Multiply each sample's raw values by the clean input image (§3.1, "Multiplying
            maps with the input images").
        seed: Seed of the local generator.
    """

    def __init__(
        self,
        method: Attribution,
        level: float = 0.15,
        n_samples: int = 50,
        chunk_size: int | None = None,
        memory_budget_mb: float | None = None,
        squared: bool = False,
        absolute: bool = False,
        cap_percentile: float | None = None,
        multiply_by_input: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(method, Attribution):
            raise ValueError(
                f"method must be an Attribution (e.g. VanillaGradient), got {type(method).__name__}"
            )
        super().__init__(method.model)
        if not level >= 0:
            raise ValueError(f"level must be >= 0, got {level!r}")
        if not is_int(n_samples) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        check_chunking(chunk_size, memory_budget_mb)
        if cap_percentile is not None and not 0 < cap_percentile <= 100:
            raise ValueError(f"cap_percentile must be in (0, 100] or None, got {cap_percentile!r}")
        self.raw = isinstance(method, ChannelAttribution)
        if not self.raw and (absolute or multiply_by_input):
            raise ValueError(
                f"absolute and multiply_by_input act on [B, C, H, W] attributions, which "
                f"{type(method).__name__} does not have (it is smoothed at the map level); wrap a method "
                "such as VanillaGradient, GuidedBackprop or IntegratedGradients, or drop the options"
            )
        self.method = method
        self.level = float(level)
        self.n_samples = n_samples
        self.chunk_size = chunk_size
        self.memory_budget_mb = memory_budget_mb
        self.squared = squared
        self.absolute = absolute
        self.cap_percentile = cap_percentile
        self.multiply_by_input = multiply_by_input
        self.seed = seed

    def _attribute(self, images: torch.Tensor, target: TargetLike) -> torch.Tensor:
        images = images.detach()
        if self.level == 0:
            values = self._evaluate(images, target)
            total = self._per_sample(values, images)
        else:
            total = self._noisy_sum(images, target) / self.n_samples
        maps = reduce_channels(total, self.method.reduce) if self.raw else total
        return self._cap(maps)

    def _evaluate(self, images: torch.Tensor, target: TargetLike) -> torch.Tensor:
        if self.raw:
            return self.method.attributions(images, target)
        return self.method.attribute(images, target)

    def _per_sample(self, values: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        if self.multiply_by_input:
            values = values * clean
        if self.absolute:
            values = values.abs()
        if self.squared:
            values = values * values
        return values

    def _noisy_sum(self, images: torch.Tensor, target: TargetLike) -> torch.Tensor:
        with torch.no_grad():
            classes, _ = class_scores(self.model(images), target)
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        noise = torch.randn(
            (self.n_samples, *images.shape[1:]), generator=generator, device=images.device, dtype=images.dtype
        )
        sigma = self.level * (images.flatten(1).amax(dim=1) - images.flatten(1).amin(dim=1))
        b, n = images.shape[0], self.n_samples
        total: torch.Tensor | None = None
        # Noisy images per call: by default 12 MiB of input on the CPU (20 at 224 px), 512 MiB elsewhere.
        chunk = chunk_size_for(images, self.chunk_size, self.memory_budget_mb, cpu_mb=12, device_mb=512)
        for start in range(0, b * n, chunk):
            flat = torch.arange(start, min(start + chunk, b * n), device=images.device)
            which, sample = flat // n, flat % n
            noisy = images[which] + sigma[which].view(-1, 1, 1, 1) * noise[sample]
            values = self._per_sample(self._evaluate(noisy, classes[which]), images[which])
            if total is None:
                total = values.new_zeros((b, *values.shape[1:]))
            total.index_add_(0, which, values)
        return total

    def _cap(self, maps: torch.Tensor) -> torch.Tensor:
        if self.cap_percentile is None:
            return maps
        caps = torch.quantile(maps.flatten(1).float(), self.cap_percentile / 100, dim=1).to(maps.dtype)
        return torch.minimum(maps, caps.view(-1, 1, 1))
