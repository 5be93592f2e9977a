"""Fine-tuning with Group-CAM augmentation (Group-CAM paper §5, Fig. 7-8) as a Lightning callback.

For each training batch: (1) the Group-CAM map ``M`` of every image for its ground-truth class in the
paper's fast setting (``G = 16``, no gradient weights, no de-noising: no backward pass); (2) ``M`` binarised
at its mean; (3) ``Ĩ = I ⊙ M + blur(I) ⊙ (1 - M)`` (Eq. 5: the background blurred, the salient object kept
sharp); (4) the model is trained on ``Ĩ``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import lightning as L
import torch
from torch import nn

from icasc.callbacks.augmentation_grid import augmentation_grid, log_grid
from icasc.callbacks.groupcam_blur import GroupCAMBlur
from icasc.callbacks.saliency_blur import Augmented
from icasc.utils import check_option, is_int, is_number

__all__ = ["GroupCAMAugmentation"]


class GroupCAMAugmentation(GroupCAMBlur, L.Callback):
    """Train on Group-CAM-blurred images (Group-CAM paper §5): the background blurred, the object sharp.

    In ``on_train_batch_start`` the batch dict is changed in place by :meth:`GroupCAMBlur.apply
    <icasc.callbacks.GroupCAMBlur.apply>`, so ``training_step`` sees the result: ``batch["image"]`` is
    replaced (``mode="replace"``, the paper), or the augmented copies are appended with their ``target``,
    ``box`` and every other per-sample tensor (``mode="append"``). The steps, their cost, and the
    guarantees on the model's state are those of :class:`~icasc.callbacks.GroupCAMBlur`: every map is
    Group-CAM in the paper's fast setting, computed in eval mode under ``no_grad`` (BatchNorm statistics
    untouched, the training forward in train mode), binarised at its mean, and used to blur the background.

    The maps come from the *current* model at every step, so they sharpen as the model improves and the
    augmentation improves with them (paper §5, Fig. 8); a map that stops changing hints at convergence.
    Watch it: every ``log_every_n_steps`` a grid (original, map, mask, augmented) goes to the logger.

    Hooks: one forward hook on the layer per fit, registered in ``setup("fit")`` and removed in
    ``on_fit_end``, ``teardown`` and ``on_exception``. Under DDP each rank augments its own shard (no
    communication; ``seed + global_rank`` seeds the draws of ``p``); only global rank 0 logs grids.

    The model is ``pl_module.backbone`` when it exists (:class:`~icasc.models.ICASCModule`), else
    ``pl_module``; it must return ``[B, classes]`` logits. The layer is the model's default last attention
    layer unless ``layer`` is given.

    Originals and augmented images can be mixed: ``mode="append"`` trains on both; ``p < 1`` augments a
    random share of each batch; ``p_end`` moves that share linearly from ``p`` at the first augmented step to
    ``p_end`` at the last training step (e.g. ``p=1, p_end=0`` ends the fine-tune on the original images, the
    distribution it is tested on). The probability in force is logged as ``groupcam_augmentation/p``.

    Args:
        layer, groups, threshold, compose, p, mode, blur_kernel, blur_sigma, memory_budget_mb, seed,
            blur_relative, mask_class: As in :class:`~icasc.callbacks.GroupCAMBlur` (the defaults are the
            paper's settings).
        p_end: Probability at the end of training (``None``: ``p`` throughout); the schedule runs over
            ``trainer.max_epochs`` (or ``trainer.max_steps`` when no epoch limit is set).
        start_epoch: First epoch (0-based) that is augmented.
        every_n_steps: Augment the batches whose index in the epoch is a multiple of this.
        log_every_n_steps: Log a grid at augmented batches whose global step is a multiple of this: a
            Weights & Biases image or TensorBoard image where such a logger is active, else PNG files
            ``<log_dir>/groupcam_augmentation/step_XXXXXX.png``; ``None`` logs no images.
        log_images: Rows of that grid.

    Attributes:
        logged_grids: Grids logged so far (non-zero on global rank 0 only); see also
            :class:`~icasc.callbacks.GroupCAMBlur`'s counters.

    Raises:
        ValueError: An invalid option (the message names the valid values), a schedule that never augments
            an image (``p = 0`` and ``p_end`` 0 or unset, or ``start_epoch >= trainer.max_epochs``, the
            latter when the fit starts), or a ``layer`` the model lacks (when the fit starts).
    """

    def __init__(
        self,
        layer: str | None = None,
        groups: int = 16,
        threshold: str = "image_mean",
        compose: str = "paper",
        p: float = 1.0,
        mode: str = "replace",
        start_epoch: int = 0,
        every_n_steps: int = 1,
        blur_kernel: int = 51,
        blur_sigma: float = 50.0,
        memory_budget_mb: float | None = None,
        log_every_n_steps: int | None = 200,
        log_images: int = 4,
        seed: int | None = 0,
        blur_relative: bool = False,
        mask_class: str = "target",
        p_end: float | None = None,
    ) -> None:
        super().__init__(
            layer=layer,
            groups=groups,
            threshold=threshold,
            compose=compose,
            p=p,
            mode=mode,
            blur_kernel=blur_kernel,
            blur_sigma=blur_sigma,
            memory_budget_mb=memory_budget_mb,
            seed=seed,
            blur_relative=blur_relative,
            mask_class=mask_class,
        )
        check_option(
            p_end is None or (is_number(p_end) and 0 <= p_end <= 1),
            f"p_end must be a probability in [0, 1], or None to keep p throughout; got {p_end!r}",
        )
        check_option(
            self.p > 0 or bool(p_end),
            f"p={p!r} and p_end={p_end!r}: no image would ever be augmented; set p > 0, or p_end > 0 for a "
            "schedule that starts on the originals (or leave the callback out: callbacks=default)",
        )
        check_option(
            is_int(start_epoch) and start_epoch >= 0, f"start_epoch must be an int >= 0, got {start_epoch!r}"
        )
        check_option(
            is_int(every_n_steps) and every_n_steps >= 1,
            f"every_n_steps must be an int >= 1, got {every_n_steps!r}",
        )
        check_option(
            log_every_n_steps is None or (is_int(log_every_n_steps) and log_every_n_steps >= 1),
            f"log_every_n_steps must be an int >= 1, or None to log no images; got {log_every_n_steps!r}",
        )
        check_option(
            is_int(log_images) and log_images >= 1, f"log_images must be an int >= 1, got {log_images!r}"
        )
        self.p_end = None if p_end is None else float(p_end)
        self.start_epoch = start_epoch
        self.every_n_steps = every_n_steps
        self.log_every_n_steps = log_every_n_steps
        self.log_images = log_images
        self.logged_grids = 0
        self._logged_step = -1

    # ---------------------------------------------------------------------------------- Lightning hooks

    @staticmethod
    def model_of(pl_module: L.LightningModule) -> nn.Module:
        """The classifier that is explained: ``pl_module.backbone`` if it is a module, else ``pl_module``."""
        backbone = getattr(pl_module, "backbone", None)
        return backbone if isinstance(backbone, nn.Module) else pl_module

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        epochs = trainer.max_epochs
        check_option(
            epochs is None or epochs < 0 or self.start_epoch < epochs,
            f"start_epoch={self.start_epoch} but trainer.max_epochs={epochs}: no batch would be augmented; "
            f"set start_epoch to one of 0..{(epochs or 1) - 1}",
        )
        if self.p_end is not None:
            check_option(
                (epochs is not None and epochs > 0) or trainer.max_steps > 0,
                "p_end schedules p over the training: set trainer.max_epochs or trainer.max_steps",
            )
        self.attach(self.model_of(pl_module), trainer.global_rank)

    def p_at(self, trainer: L.Trainer, batch_idx: int) -> float:
        """The probability that an image of this batch is augmented (``p``, or the ``p_end`` schedule's)."""
        if self.p_end is None:
            return self.p
        epochs = trainer.max_epochs
        batches = trainer.num_training_batches
        if epochs is not None and epochs > 0 and 0 < batches < float("inf"):
            done = (trainer.current_epoch - self.start_epoch) * batches + batch_idx
            total = (epochs - self.start_epoch) * batches
        else:  # no epoch limit (or an iterable of unknown length): the schedule runs over max_steps
            done, total = trainer.global_step, trainer.max_steps
        progress = min(max(done / max(total - 1, 1), 0.0), 1.0)
        return self.p + (self.p_end - self.p) * progress

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch < self.start_epoch or batch_idx % self.every_n_steps != 0:
            return
        original = batch.get("image") if isinstance(batch, MutableMapping) else None
        p = self.p_at(trainer, batch_idx)
        if self.p_end is not None:
            pl_module.log("groupcam_augmentation/p", p, on_step=True, on_epoch=False, batch_size=1)
        result = self.apply(batch, p)
        if result is None:
            return
        pl_module.log(
            "groupcam_augmentation/kept_fraction",
            result.masks.mean(),
            on_step=True,
            on_epoch=False,
            batch_size=result.masks.shape[0],
        )
        step = trainer.global_step
        if self.log_every_n_steps is None or step % self.log_every_n_steps or step == self._logged_step:
            return
        self._logged_step = step
        if trainer.is_global_zero:
            self._log_grid(trainer, original, result)

    def _log_grid(self, trainer: L.Trainer, original: torch.Tensor, result: Augmented) -> list[str]:
        n = min(self.log_images, result.images.shape[0])
        originals = (original if result.index is None else original[result.index])[:n]
        datamodule = getattr(trainer, "datamodule", None)
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        grid = augmentation_grid(originals, result.maps[:n], result.masks[:n], result.images[:n], mean, std)
        self.logged_grids += 1
        return log_grid(trainer, grid, trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.detach()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.detach()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.detach()
