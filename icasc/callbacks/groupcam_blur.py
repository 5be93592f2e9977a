"""Group-CAM saliency blur of batches (Group-CAM paper §5, steps 1-3), without Lightning."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
from torch import nn

from icasc.attention.capture import resolve_layer
from icasc.callbacks.saliency_blur import (
    COMPOSITIONS,
    MODES,
    THRESHOLDS,
    Augmented,
    binarize,
    compose_augmented,
)
from icasc.models.backbones import default_attention_layers
from icasc.saliency.base import check_images, resolve_target
from icasc.saliency.blur import gaussian_blur
from icasc.saliency.groupcam import GroupCAM
from icasc.utils import check_option, eval_mode, is_int, is_number

__all__ = [
    "MASK_CLASSES",
    "PAPER_BLUR",
    "PAPER_RELATIVE_BLUR",
    "GroupCAMBlur",
    "blur_size",
    "predicted_class",
]

MASK_CLASSES = ("target", "predicted")
# Group-CAM §5: a 51-pixel kernel with sigma 50 on 224-pixel images
PAPER_BLUR = (51, 50.0)
# the same blur as fractions of the shorter image side, so it scales with the images
PAPER_RELATIVE_BLUR = (51 / 224, 50 / 224)


def blur_size(kernel: float, sigma: float, relative: bool, height: int, width: int) -> tuple[int, float]:
    """The blur's kernel size and sigma in pixels for a ``height x width`` image.

    Args:
        kernel: Odd kernel size in pixels, or (``relative``) a fraction in ``(0, 1]`` of the shorter side.
        sigma: Standard deviation in pixels, or (``relative``) a fraction in ``(0, 1]`` of the shorter side.
        relative: Whether ``kernel`` and ``sigma`` are fractions of the shorter side.
        height: Image height.
        width: Image width.

    Returns:
        ``(odd kernel size, sigma)`` in pixels; a relative kernel is the odd size ``2 * floor(f * side / 2) +
        1`` (so the paper's ``51 / 224`` gives 51 on 224 pixels and 15 on 64).
    """
    if not relative:
        return int(kernel), float(sigma)
    side = min(height, width)
    return 2 * int(kernel * side / 2) + 1, float(sigma) * side


def _relative_message(name: str, value: Any, paper: tuple[int, float]) -> str:
    return (
        f"{name} must be a fraction of the shorter image side in (0, 1] with blur_relative=true "
        f"(the paper's {paper[0]:g}/224 = {paper[1]:.4f}); got {value!r}"
    )


class GroupCAMBlur:
    """Group-CAM saliency blur of batches (Group-CAM paper §5, steps 1-3), without Lightning.

    The engine of :class:`~icasc.callbacks.GroupCAMAugmentation`; use it directly in a notebook or a custom
    loop: :meth:`attach` a model, :meth:`apply` to batch dicts, :meth:`detach`. Per image:

    1. ``M``: Group-CAM of the ground-truth class with ``G = groups`` contiguous channel groups of
       ``layer``, unit channel weights and no de-noising -- the paper's fast setting, no backward pass.
       The group masks are ``ReLU`` of each group's channel sum, min-max normalised, bilinearly upsampled;
       each is scored by ``p_c(I'_l) - p_c(blur(I))`` (softmax of the true class; for ``[B, C]`` multi-hot
       targets the sum of the positive classes' sigmoid probabilities, see
       :meth:`~icasc.saliency.GroupCAM.score_masks`).
    2. ``M`` binarised at its mean (:func:`binarize`).
    3. ``Ĩ = I ⊙ M + blur(I) ⊙ (1 - M)`` with the Group-CAM blur (:func:`compose_augmented`).

    ``mask_class="predicted"`` explains the model's predicted class instead of the ground truth (a wrong
    model then blurs around what it believes it sees), and ``blur_relative=True`` reads ``blur_kernel`` and
    ``blur_sigma`` as fractions of the shorter image side, so one setting serves 64- and 448-pixel images.
    The same blurred image is Group-CAM's baseline (step 1) and the background of step 3, as in the paper.

    The maps come from the model as it is at each call, so in training they sharpen as the model improves.

    Cost and state: one forward of the ``N`` chosen images with the activation captured, then ``N * (G + 1)``
    scoring forwards in chunks of ``memory_budget_mb`` MiB of input -- all in eval mode and under
    ``no_grad``, so BatchNorm running statistics and parameter gradients are untouched, and every module's
    train/eval mode is restored on return. :meth:`attach` registers one forward hook on the layer, which
    keeps the activation only during this object's own capture forward; :meth:`detach` removes it.

    Args:
        layer: Dotted name of the explained layer; ``None``: the model's default last attention layer
            (:func:`~icasc.models.backbones.default_attention_layers`).
        groups: Number of groups ``G`` (paper: 16 for fine-tuning); must divide the layer's channels.
        threshold: ``"image_mean"`` (per image) or ``"batch_mean"`` (the authors' release).
        compose: ``"paper"`` (Eq. 5) or ``"reference_code"`` (the release's ``I⊙M + blur(I) + (1-M)``).
        p: Probability that an image is augmented (paper: 1.0).
        mode: ``"replace"`` the chosen images (paper), or ``"append"`` their augmented copies together with
            their ``target``, ``box`` and every other per-sample tensor of the batch.
        blur_kernel: Odd Gaussian kernel size of ``blur`` in pixels (paper: 51; clipped to small images), or
            with ``blur_relative`` a fraction in ``(0, 1]`` of the shorter image side (paper: 51/224).
        blur_sigma: Its standard deviation in pixels (paper: 50), or with ``blur_relative`` a fraction in
            ``(0, 1]`` of the shorter image side (paper: 50/224).
        memory_budget_mb: Input MiB per scoring forward; ``None``: Group-CAM's per-device default.
        seed: Seed of the ``p`` draws (plus the ``rank`` given to :meth:`attach`); ``None``: torch's global
            generator.
        blur_relative: Whether ``blur_kernel`` and ``blur_sigma`` are fractions of the shorter image side.
        mask_class: Which class's map makes the mask: ``"target"`` (the paper: the true class) or
            ``"predicted"`` (the model's top class; for multi-hot targets the classes with a positive logit,
            or the top one where none is positive).

    Attributes:
        groupcam: The :class:`~icasc.saliency.GroupCAM` whose pieces make the maps, while attached.
        augmented_batches: Batches augmented so far.
        augmented_images: Images augmented so far.

    Raises:
        ValueError: An invalid option (the message names the valid values).
    """

    def __init__(
        self,
        layer: str | None = None,
        groups: int = 16,
        threshold: str = "image_mean",
        compose: str = "paper",
        p: float = 1.0,
        mode: str = "replace",
        blur_kernel: int = 51,
        blur_sigma: float = 50.0,
        memory_budget_mb: float | None = None,
        seed: int | None = 0,
        blur_relative: bool = False,
        mask_class: str = "target",
    ) -> None:
        if blur_relative is True:
            blur_checks = [
                (is_number(value) and 0 < value <= 1, _relative_message(name, value, paper))
                for name, value, paper in (
                    ("blur_kernel", blur_kernel, (PAPER_BLUR[0], PAPER_RELATIVE_BLUR[0])),
                    ("blur_sigma", blur_sigma, (PAPER_BLUR[1], PAPER_RELATIVE_BLUR[1])),
                )
            ]
        else:
            blur_checks = [
                (
                    is_int(blur_kernel) and blur_kernel >= 1 and blur_kernel % 2 == 1,
                    "blur_kernel must be an odd positive int (pixels), or a fraction in (0, 1] with "
                    f"blur_relative=true; got {blur_kernel!r}",
                ),
                (
                    is_number(blur_sigma) and blur_sigma > 0,
                    f"blur_sigma must be > 0 (pixels), got {blur_sigma!r}",
                ),
            ]
        checks = [
            (blur_relative in (True, False), f"blur_relative must be true or false, got {blur_relative!r}"),
            (mask_class in MASK_CLASSES, f"mask_class must be one of {MASK_CLASSES}, got {mask_class!r}"),
            *blur_checks,
            (
                layer is None or (isinstance(layer, str) and layer != ""),
                f"layer must be a name or None, got {layer!r}",
            ),
            (is_int(groups) and groups >= 1, f"groups must be a positive int, got {groups!r}"),
            (threshold in THRESHOLDS, f"threshold must be one of {THRESHOLDS}, got {threshold!r}"),
            (compose in COMPOSITIONS, f"compose must be one of {COMPOSITIONS}, got {compose!r}"),
            (
                is_number(p) and 0.0 <= p <= 1.0,
                f"p must be a probability in [0, 1], got {p!r}",
            ),
            (mode in MODES, f"mode must be one of {MODES}, got {mode!r}"),
            (
                memory_budget_mb is None or (is_number(memory_budget_mb) and memory_budget_mb > 0),
                f"memory_budget_mb must be > 0 or None, got {memory_budget_mb!r}",
            ),
            (seed is None or is_int(seed), f"seed must be an int or None, got {seed!r}"),
        ]
        for ok, message in checks:
            check_option(ok, message)
        self.layer = layer
        self.groups = groups
        self.threshold = threshold
        self.compose = compose
        self.p = float(p)
        self.mode = mode
        self.blur_kernel = blur_kernel
        self.blur_sigma = float(blur_sigma)
        self.blur_relative = bool(blur_relative)
        self.mask_class = mask_class
        self.memory_budget_mb = memory_budget_mb
        self.seed = seed
        self.augmented_batches = 0
        self.augmented_images = 0
        self.groupcam: GroupCAM | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._capturing = False
        self._features: torch.Tensor | None = None
        self._generator: torch.Generator | None = None

    # ---------------------------------------------------------------------------------- hook lifecycle

    def attach(self, model: nn.Module, rank: int = 0) -> None:
        """Build the Group-CAM pieces for ``model`` and register the one forward hook on the layer.

        :class:`~icasc.callbacks.GroupCAMAugmentation` calls it in ``setup("fit")``; outside a Trainer
        call it yourself before :meth:`augment` or :meth:`apply`, and :meth:`detach` afterwards.

        Args:
            model: The classifier (``[B, C, H, W]`` -> ``[B, classes]`` logits).
            rank: Added to ``seed`` for the ``p`` draws (the global rank under DDP).
        """
        self.detach()
        layer = self.layer if self.layer is not None else default_attention_layers(model)[1]
        try:
            module = resolve_layer(model, layer)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__} layer={layer!r}: {err}") from err
        # the blur depends on the image size when relative: saliency() makes the baseline itself
        kernel, sigma = PAPER_BLUR if self.blur_relative else (self.blur_kernel, self.blur_sigma)
        self.groupcam = GroupCAM(
            model,
            layer,
            groups=self.groups,
            theta=None,
            blur_kernel=kernel,
            blur_sigma=sigma,
            gradient_weights=False,
            memory_budget_mb=self.memory_budget_mb,
        )
        self._handle = module.register_forward_hook(self._keep)
        if self.seed is not None:
            self._generator = torch.Generator().manual_seed(self.seed + rank)

    def detach(self) -> None:
        """Remove the hook and forget the model (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
        self._handle, self.groupcam, self._features, self._capturing = None, None, None, False
        self._generator = None

    @property
    def attached(self) -> bool:
        """Whether the hook is registered."""
        return self._handle is not None

    def _keep(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._capturing:
            return
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"layer {self.groupcam.layer!r} returned {type(output).__name__}; a tensor is needed"
            )
        if self._features is not None:
            raise RuntimeError(
                f"layer {self.groupcam.layer!r} ran more than once in one forward; choose another layer"
            )
        self._features = output

    # ------------------------------------------------------------------------------------ the procedure

    def _require(self) -> GroupCAM:
        if self.groupcam is None:
            raise RuntimeError(
                f"{type(self).__name__} is not attached to a model: call attach(model) first (as a "
                "callback: pass it to Trainer(callbacks=[...]) and call fit)"
            )
        return self.groupcam

    def blur(self, images: torch.Tensor) -> torch.Tensor:
        """``blur(I)``: the Gaussian blur of ``[N, C, H, W]`` images (kernel and sigma for their size)."""
        kernel, sigma = blur_size(self.blur_kernel, self.blur_sigma, self.blur_relative, *images.shape[-2:])
        return gaussian_blur(images, kernel, sigma)

    @torch.no_grad()
    def saliency(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step (1): Group-CAM maps in the fast setting, from the model as it is now.

        The maps explain ``target`` (``mask_class="target"``) or the model's prediction (``"predicted"``).

        Args:
            images: ``[N, C, H, W]`` normalised images.
            target: ``[N]`` classes or ``[N, classes]`` multi-hot positives.

        Returns:
            ``(maps, blurred)``: ``[N, H, W]`` non-negative maps and the ``[N, C, H, W]`` blurred images.
        """
        gc = self._require()
        check_images(images)
        with eval_mode(gc.model):
            self._features, self._capturing = None, True
            try:
                logits = gc.model(images)
            finally:
                self._capturing = False
            features, self._features = self._features, None
            if target.dim() == 2:
                check_option(
                    target.shape == logits.shape,
                    f"multi-hot target {tuple(target.shape)} does not match the logits {tuple(logits.shape)}",
                )
            else:
                target = resolve_target(logits, target)
            if self.mask_class == "predicted":
                target = predicted_class(logits, multilabel=target.dim() == 2)
            if features is None:
                raise ValueError(f"layer {gc.layer!r} did not run in the forward pass; choose one that does")
            maps = gc.group_maps(features)
            blurred = self.blur(images)
            scores = gc.score_masks(images, maps, target, blurred=blurred)
        return gc.combine(maps, scores, tuple(images.shape[-2:])), blurred

    def augment(self, images: torch.Tensor, target: torch.Tensor) -> Augmented:
        """Steps (1)-(3) for every image: the training images, their maps and their binary masks."""
        maps, blurred = self.saliency(images, target)
        masks = binarize(maps, self.threshold)
        return Augmented(compose_augmented(images, blurred, masks, self.compose), maps, masks)

    def _choose(self, n: int, device: torch.device, p: float) -> torch.Tensor | None:
        """Indices of the images to augment (``None``: all of them)."""
        if p >= 1.0:
            return None
        draws = torch.rand(n, generator=self._generator) if self._generator is not None else torch.rand(n)
        return torch.nonzero(draws < p).flatten().to(device)

    def apply(self, batch: MutableMapping[str, Any], p: float | None = None) -> Augmented | None:
        """Augment a batch dict in place, as each training step does; ``None`` when no image was drawn.

        Args:
            batch: ``{"image": [B, C, H, W], "target": [B] or [B, classes], ...}``.
            p: Probability that an image is augmented in this batch (``None``: the ``p`` option); the
                callback passes its schedule's value.

        Returns:
            The augmentation of the chosen images.
        """
        if not isinstance(batch, MutableMapping) or "image" not in batch or "target" not in batch:
            raise TypeError(
                f"{type(self).__name__} needs dict batches "
                "{'image': [B,C,H,W], 'target': [B] or [B,C], ...}; "
                f"got {type(batch).__name__}"
            )
        images, target = batch["image"], batch["target"]
        chosen = self._choose(images.shape[0], images.device, self.p if p is None else float(p))
        if chosen is not None and chosen.numel() == 0:
            return None
        result = self.augment(*((images, target) if chosen is None else (images[chosen], target[chosen])))
        n = images.shape[0]
        if self.mode == "replace":
            if chosen is None:
                batch["image"] = result.images
            else:
                batch["image"] = images.index_copy(0, chosen, result.images)
        else:
            for key, value in list(batch.items()):
                if key == "image":
                    batch[key] = torch.cat([images, result.images])
                elif isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
                    batch[key] = torch.cat([value, value if chosen is None else value[chosen]])
        self.augmented_batches += 1
        self.augmented_images += result.images.shape[0]
        return result._replace(index=chosen)


def predicted_class(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """The classes a model predicts: ``[N]`` top classes, or (``multilabel``) ``[N, C]`` multi-hot.

    Multi-hot predictions are the classes with a positive logit (sigmoid > 0.5); a row without any takes
    its top class, so every image has a class to explain.
    """
    top = logits.argmax(dim=1)
    if not multilabel:
        return top
    hot = (logits > 0).to(logits.dtype)
    empty = torch.nonzero(hot.sum(dim=1) == 0).flatten()
    hot[empty, top[empty]] = 1.0
    return hot
