"""Group-CAM: group score-weighted class activation mapping (Group-CAM paper, Algorithm 1, Eq. 1-7).

The whole batch is explained at once: one forward (plus one backward to the layer) gives the ``G`` initial
masks of every image, then all ``B x G`` perturbed images and the ``B`` blurred baselines are scored in
chunked no-grad forwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from icasc.attention.capture import FeatureCapture, resolve_layer
from icasc.attention.functional import grad_cam
from icasc.saliency.base import (
    Attribution,
    TargetLike,
    check_chunking,
    check_images,
    chunk_size_for,
    normalize,
    resolve_target,
)
from icasc.saliency.blur import gaussian_blur
from icasc.utils import eval_mode, is_int, resize_map

__all__ = ["GroupCAM", "compose", "denoise"]

VARIANTS = ("paper", "reference_code")


def denoise(maps: torch.Tensor, theta: float) -> torch.Tensor:
    """De-noising ``phi`` (Eq. 3): zero every value at or below its map's ``theta``-th percentile.

    The percentile is taken per map with linear interpolation between the sorted values (as
    ``numpy.percentile``; unlike ``torch.quantile`` there is no limit on the input size).

    Args:
        maps: ``[N, h, w]`` maps.
        theta: Percentile in ``[0, 100]``.

    Returns:
        ``[N, h, w]``: ``m_ij`` where ``m_ij > p(M, theta)``, else 0.
    """
    flat = maps.flatten(1)
    ordered = flat.sort(dim=1).values
    position = theta / 100.0 * (flat.shape[1] - 1)
    low, frac = int(position), position - int(position)
    high = min(low + 1, flat.shape[1] - 1)
    threshold = torch.lerp(ordered[:, low : low + 1], ordered[:, high : high + 1], frac)
    return torch.where(flat > threshold, flat, torch.zeros_like(flat)).view_as(maps)


def compose(
    images: torch.Tensor, blurred: torch.Tensor, masks: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Perturbed images (Eq. 5): ``I' = I * M + I_blur * (1 - M)``.

    Args:
        images: ``[N, C, H, W]`` images ``I`` (or ``[1, C, H, W]``, broadcast against the masks).
        blurred: Baselines ``I_blur``, shaped like ``images``.
        masks: ``[N, H, W]`` masks ``M`` in ``[0, 1]``.
        out: Optional ``[N, C, H, W]`` tensor to write into.

    Returns:
        ``[N, C, H, W]``, computed as ``I_blur + M * (I - I_blur)`` (one fused ``lerp``).
    """
    return torch.lerp(blurred, images, masks.unsqueeze(1), out=out)


# Default input MiB per scoring chunk (see GroupCAM's memory_budget_mb).
CPU_BUDGET_MB = 20
DEVICE_BUDGET_MB = 512


class GroupCAM(Attribution):
    """Group-CAM saliency (Group-CAM paper, Algorithm 1).

    Steps, for every image of the batch at once:

    1. One forward with a hook on ``layer`` gives the activations ``A`` ``[B, K, h, w]``; the gradient of
       each sample's own class score (the logit ``F_c``) w.r.t. ``A`` gives the Grad-CAM channel weights
       ``w^c_k = mean_ij dF_c/dA^k_ij`` (Eq. 1).
    2. The ``K`` channels are split into ``G`` contiguous groups of ``g = K / G`` channels;
       ``M_l = ReLU(sum_{k in group l} w^c_k A^k)`` (Eq. 2) -- Grad-CAM of the group, computed by the shared
       :func:`~icasc.attention.functional.grad_cam` on the ``[B*G, g, h, w]`` view of the activations.
    3. ``M'_l``: de-noised at the ``theta``-th percentile (Eq. 3), min-max normalised (Eq. 4; constant masks
       become 0), bilinearly upsampled to the input size.
    4. ``I'_l = I * M'_l + I_blur * (1 - M'_l)`` (Eq. 5), ``I_blur`` = Gaussian blur of ``I`` (kernel
       ``blur_kernel``, std ``blur_sigma``, reflect borders; the kernel is clipped to the image's shorter
       side when longer, see :func:`~icasc.saliency.blur.clip_kernel_size`).
    5. ``alpha_l = p_c(I'_l) - p_c(I_blur)`` with ``p_c`` the softmax probability of the class (Eq. 6);
       ``L = ReLU(sum_l alpha_l M'_l)`` (Eq. 7). Multi-label targets: see :meth:`score_masks`.

    ``G = 1`` with ``theta=None`` is Grad-CAM up to an affine rescaling (paper, end of §1).

    Variants:

    * ``"paper"``: the steps above, as written in the paper.
    * ``"reference_code"``: the authors' released ``cam/groupcam.py`` (its latest version, Aug. 2021;
      earlier versions de-noised like the paper), which differs from the paper in four places: (a) no
      de-noising (``theta`` is not used); (b) the raw group maps ``M_l`` are upsampled *first* and min-max
      normalised at input resolution to give the perturbation masks (paper: normalise at layer
      resolution, then upsample); (c) each score is clipped, ``ReLU(alpha_l)``, so a group whose
      perturbed image scores below the baseline contributes nothing (paper: negative ``alpha_l`` subtract,
      only the sum is clipped); (d) the final map sums the *un-normalised* upsampled group maps,
      ``L = sum_l ReLU(alpha_l) * up(M_l)`` (paper: the normalised masks ``M'_l``). The release also
      min-max normalises the result and handles one image at a time; here both variants return
      un-normalised maps for a whole batch, and constant masks become 0 instead of NaN.

    ``gradient_weights=False`` is the paper's fast setting for data augmentation (§5): unit channel
    weights, ``M_l = ReLU(sum_{k in group l} A^k)``, no backward pass at all. Combine it with ``groups=16``
    and ``theta=None`` for the paper's fine-tuning recipe.

    Groups must divide the channels evenly (``K % G == 0``), as the paper's ``g = K / G`` assumes; uneven
    splits raise instead of producing groups of different sizes (or fewer groups, as ``torch.chunk`` would).

    Memory: the ``B * (G + 1)`` scored images are built and scored chunk by chunk, never all at once; a
    chunk holds ``chunk_size`` images when given, else as many as fit ``memory_budget_mb`` MiB of input
    (:meth:`chunk_size_for`). Forward activations of a chunk come on top of that.

    Args:
        model: The classifier (returns ``[B, C]`` logits).
        layer: Dotted name of the explained layer (``model.named_modules()``).
        groups: Number of groups ``G`` (paper: 32).
        theta: De-noising percentile in ``[0, 100]`` (paper: 70); ``None`` disables de-noising.
        blur_kernel: Odd Gaussian kernel size of the baseline (paper: 51).
        blur_sigma: Gaussian standard deviation in pixels (paper: 50).
        gradient_weights: Weight channels by Grad-CAM weights (Eq. 1); ``False`` skips the backward.
        variant: ``"paper"`` or ``"reference_code"`` (see above).
        chunk_size: Images per scoring forward; overrides ``memory_budget_mb``.
        memory_budget_mb: Input MiB per scoring forward when ``chunk_size`` is ``None``; ``None`` picks it by
            device: 20 MiB on the CPU (34 images at 224 px), 512 MiB elsewhere (see
            :func:`~icasc.saliency.base.chunk_size_for`).

    Raises:
        ValueError: An unknown layer (the message lists the valid names) or an invalid option.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        groups: int = 32,
        theta: float | None = 70.0,
        blur_kernel: int = 51,
        blur_sigma: float = 50.0,
        gradient_weights: bool = True,
        variant: str = "paper",
        chunk_size: int | None = None,
        memory_budget_mb: float | None = None,
    ) -> None:
        super().__init__(model)
        resolve_layer(model, layer)
        if not is_int(groups) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if theta is not None and not 0.0 <= theta <= 100.0:
            raise ValueError(
                f"theta is a percentile in [0, 100] (or None to disable de-noising), got {theta}"
            )
        if not is_int(blur_kernel) or blur_kernel < 1 or blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be an odd positive int, got {blur_kernel!r}")
        if blur_sigma <= 0:
            raise ValueError(f"blur_sigma must be > 0, got {blur_sigma}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        check_chunking(chunk_size, memory_budget_mb)
        self.layer = layer
        self.groups = groups
        self.theta = theta
        self.blur_kernel = blur_kernel
        self.blur_sigma = blur_sigma
        self.gradient_weights = gradient_weights
        self.variant = variant
        self.chunk_size = chunk_size
        self.memory_budget_mb = memory_budget_mb

    # ------------------------------------------------------------------------------------------ chunking

    def chunk_size_for(self, images: torch.Tensor) -> int:
        """Images per scoring forward: ``chunk_size``, else as many as fit ``memory_budget_mb`` of input."""
        return chunk_size_for(images, self.chunk_size, self.memory_budget_mb, CPU_BUDGET_MB, DEVICE_BUDGET_MB)

    @staticmethod
    def chunks(n: int, chunk_size: int) -> list[slice]:
        """Consecutive slices of at most ``chunk_size`` covering ``range(n)``."""
        return [slice(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]

    # ---------------------------------------------------------------------------------------- the steps

    def masks(self, images: torch.Tensor, target: TargetLike = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Group maps at the layer's resolution (Eq. 1-4) and the resolved target.

        Args:
            images: ``[B, C, H, W]`` images.
            target: ``None`` (predicted class), an int or a ``[B]`` tensor.

        Returns:
            ``(maps, target)``: ``maps`` ``[B, G, h, w]`` are the de-noised, min-max normalised masks
            ``M'_l`` before upsampling (``"paper"``), or the raw ``M_l`` (``"reference_code"``);
            ``target`` ``[B]`` int64.

        Raises:
            ValueError: Bad images, a target out of range, a layer that did not run or is not
                ``[B, K, h, w]``, or ``groups`` not dividing the channels.
        """
        check_images(images)
        with eval_mode(self.model), FeatureCapture(self.model, [self.layer]) as capture:
            with torch.set_grad_enabled(self.gradient_weights):
                # An input that requires grad keeps the layer in the graph even when the model is frozen
                # or the layer precedes every parameter; the backward still stops at the layer.
                logits = self.model(images.detach().requires_grad_(self.gradient_weights))
            target = resolve_target(logits, target)
            features = capture.features.get(self.layer)
            self._check_features(features)
            grads = None
            if self.gradient_weights:
                score = logits.gather(1, target[:, None]).sum()
                (grads,) = torch.autograd.grad(score, features)
        return self.group_maps(features.detach(), grads), target

    def group_maps(self, features: torch.Tensor, grads: torch.Tensor | None = None) -> torch.Tensor:
        """Group maps (Eq. 2-4) from the explained layer's activations: :meth:`masks` without its forward.

        Callers that capture the activations themselves (e.g. a hook kept for a whole training run, as
        :class:`~icasc.callbacks.GroupCAMAugmentation` does) turn them into group maps here.

        Args:
            features: ``[B, K, h, w]`` activations ``A`` of the layer.
            grads: ``[B, K, h, w]`` gradients ``dF_c/dA`` of each sample's class score; required when
                ``gradient_weights`` is True, and must be ``None`` otherwise (unit weights, paper §5).

        Returns:
            ``[B, G, h, w]``: the de-noised, min-max normalised ``M'_l`` (``"paper"``) or the raw ``M_l``
            (``"reference_code"``), at the layer's resolution.

        Raises:
            ValueError: Activations that are not ``[B, K, h, w]``, ``groups`` not dividing ``K``, or
                ``grads`` given or missing against ``gradient_weights``.
        """
        b, k, h, w = self._check_features(features)
        if (grads is not None) != self.gradient_weights:
            raise ValueError(
                f"gradient_weights={self.gradient_weights} needs grads="
                f"{'the [B, K, h, w] layer gradients' if self.gradient_weights else 'None'}"
            )
        g = self.groups
        grouped = features.detach().reshape(b * g, k // g, h, w)
        if grads is None:
            maps = F.relu(grouped.sum(dim=1))
        else:
            # Eq. 2 is Grad-CAM of each group: view the contiguous groups as separate samples.
            maps = grad_cam(grouped, grads.reshape(b * g, k // g, h, w))
        if self.variant == "paper":
            if self.theta is not None:
                maps = denoise(maps, self.theta)
            maps = normalize(maps)
        return maps.view(b, g, h, w)

    def baseline(self, images: torch.Tensor) -> torch.Tensor:
        """The blurred baseline ``I_blur`` (Eq. 5) of ``[B, C, H, W]`` images, same shape."""
        return gaussian_blur(images, self.blur_kernel, self.blur_sigma)

    def scored_inputs(
        self, images: torch.Tensor, blurred: torch.Tensor, maps: torch.Tensor, rows: slice
    ) -> torch.Tensor:
        """Rows ``rows`` of the ``B * (G + 1)`` images that :meth:`score_masks` feeds to the model.

        Row ``n < B * G`` is ``I'`` of image ``n // G`` under mask ``n % G`` (Eq. 5); row ``B * G + i`` is
        the baseline of image ``i``. Each image is broadcast against its masks, so only the chunk itself and
        its masks are allocated.

        Args:
            images: ``[B, C, H, W]`` images.
            blurred: ``[B, C, H, W]`` baselines from :meth:`baseline`.
            maps: ``[B, G, h, w]`` group maps from :meth:`masks`.
            rows: A slice of ``range(B * (G + 1))`` with step 1.

        Returns:
            ``[rows.stop - rows.start, C, H, W]``.
        """
        b, c, height, width = images.shape
        g = maps.shape[1]
        n_perturbed = b * g
        out = images.new_empty(rows.stop - rows.start, c, height, width)
        stop = min(rows.stop, n_perturbed)
        if rows.start < stop:
            flat = maps.reshape(n_perturbed, *maps.shape[2:])[rows.start : stop]
            masks = self._perturbation_masks(flat, (height, width))
            row = rows.start
            while row < stop:
                i, end = row // g, min(stop, (row // g + 1) * g)
                part = slice(row - rows.start, end - rows.start)
                compose(images[i : i + 1], blurred[i : i + 1], masks[part], out=out[part])
                row = end
        if rows.stop > n_perturbed:
            first = max(rows.start, n_perturbed)
            out[first - rows.start :].copy_(blurred[first - n_perturbed : rows.stop - n_perturbed])
        return out

    def score_masks(
        self,
        images: torch.Tensor,
        maps: torch.Tensor,
        target: torch.Tensor,
        blurred: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Confidence gains ``alpha_l = p_c(I'_l) - p_c(I_blur)`` (Eq. 5-6), before any clipping.

        All ``B * G`` perturbed images and the ``B`` baselines (:meth:`scored_inputs`) are built and scored
        chunk by chunk (:meth:`chunk_size_for`) in no-grad forwards. With a ``[B]`` class target, ``p_c`` is
        the softmax probability of the class (Eq. 6). With a ``[B, C]`` multi-hot target (multi-label data,
        whose models are trained with per-class sigmoids), ``p`` is the sum of the *sigmoid* probabilities
        of the positive classes, so ``alpha_l`` is the sum of the per-class gains and the map covers every
        positive object (a softmax would make the positives compete; an image without positives scores 0).

        Args:
            images: ``[B, C, H, W]`` images.
            maps: ``[B, G, h, w]`` group maps from :meth:`masks` or :meth:`group_maps`.
            target: ``[B]`` classes, or ``[B, C]`` multi-hot positives.
            blurred: ``[B, C, H, W]`` baselines from :meth:`baseline`, when already computed.

        Returns:
            ``[B, G]`` scores.
        """
        check_images(images)
        b = images.shape[0]
        if maps.dim() != 4 or maps.shape[0] != b or target.dim() not in (1, 2) or target.shape[0] != b:
            raise ValueError(
                f"expected maps [B, G, h, w] and target [B] (classes) or [B, C] (multi-hot) for B={b} "
                f"images (from masks()), got {tuple(maps.shape)} and {tuple(target.shape)}"
            )
        if blurred is None:
            blurred = self.baseline(images)
        elif blurred.shape != images.shape:
            raise ValueError(
                f"blurred must be shaped like the images {tuple(images.shape)} (from baseline()), "
                f"got {tuple(blurred.shape)}"
            )
        multilabel = target.dim() == 2
        positives = target.to(images.dtype) if multilabel else None
        g = maps.shape[1]
        n_perturbed = b * g
        # The image (and class) of each scored row, in the row order of scored_inputs.
        source = torch.cat([torch.arange(b).repeat_interleave(g), torch.arange(b)]).to(target.device)
        probs = images.new_empty(n_perturbed + b)
        with eval_mode(self.model), torch.no_grad():
            for rows in self.chunks(n_perturbed + b, self.chunk_size_for(images)):
                logits = self.model(self.scored_inputs(images, blurred, maps, rows))
                if positives is None:
                    probs[rows] = logits.softmax(dim=1).gather(1, target[source[rows], None]).squeeze(1)
                    continue
                if positives.shape[1] != logits.shape[1]:
                    raise ValueError(
                        f"multi-hot target has {positives.shape[1]} classes, "
                        f"the model {logits.shape[1]} classes"
                    )
                probs[rows] = (logits.sigmoid() * positives[source[rows]]).sum(dim=1)
        return probs[:n_perturbed].view(b, g) - probs[n_perturbed:].view(b, 1)

    def combine(self, maps: torch.Tensor, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The saliency map (Eq. 7) at input resolution ``size``.

        ``"paper"``: ``ReLU(sum_l alpha_l up(M'_l))``; ``"reference_code"``: ``sum_l ReLU(alpha_l) up(M_l)``.
        Bilinear upsampling is linear, so the weighted sum is taken at the layer's resolution and upsampled
        once.

        Args:
            maps: ``[B, G, h, w]`` group maps from :meth:`masks`.
            scores: ``[B, G]`` scores from :meth:`score_masks`.
            size: ``(H, W)`` of the input.

        Returns:
            ``[B, H, W]`` non-negative maps.
        """
        if self.variant == "reference_code":
            scores = F.relu(scores)
        low = torch.einsum("bg,bghw->bhw", scores, maps)
        return F.relu(resize_map(low, size))

    def _attribute(self, images: torch.Tensor, target: TargetLike) -> torch.Tensor:
        maps, target = self.masks(images, target)
        scores = self.score_masks(images, maps, target)
        return self.combine(maps, scores, tuple(images.shape[-2:]))

    # ----------------------------------------------------------------------------------------- helpers

    def _check_features(self, features: torch.Tensor | None) -> tuple[int, int, int, int]:
        if features is None:
            raise ValueError(f"layer {self.layer!r} did not run in the forward pass; choose one that does")
        if features.dim() != 4:
            raise ValueError(
                f"layer {self.layer!r} returned shape {tuple(features.shape)}; Group-CAM needs a "
                "convolutional [B, K, h, w] layer"
            )
        b, k, h, w = features.shape
        if k % self.groups != 0:
            divisors = [d for d in range(1, k + 1) if k % d == 0]
            raise ValueError(
                f"groups={self.groups} does not divide the {k} channels of layer {self.layer!r}; pass "
                f"groups as a divisor of {k}: {divisors}"
            )
        return b, k, h, w

    def _perturbation_masks(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``[N, h, w]`` group maps -> ``[N, H, W]`` masks in ``[0, 1]`` (variant-dependent order)."""
        masks = resize_map(maps, size)
        return normalize(masks) if self.variant == "reference_code" else masks
