"""What a checkpoint needs, beyond Lightning's own state, for a resumed run to continue exactly.

Lightning restores the weights, the optimiser, the schedulers and the loops, but not the random number
generators (data order, augmentations, dropout) nor the loggers' files. :class:`RunState` stores both in
every checkpoint: the RNG states of torch, NumPy and Python as plain tensors and lists (so the file still
loads with ``weights_only=True``) and the number of metric rows each resumable logger had written. A run
resumed from that checkpoint restores the generators just before the training data iterator is made (after
the sanity check, which draws from them too) and cuts the loggers back to those rows, which it then logs
again.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from icasc.loggers import ResumableCSVLogger

__all__ = ["RunState"]

_KEY = "icasc_run_state"


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), NumPy and Python RNG states as tensors, lists and numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _resumable_loggers(trainer: L.Trainer) -> dict[str, ResumableCSVLogger]:
    # isinstance, not hasattr: Lightning's DummyLogger (fast_dev_run) answers every attribute
    loggers = enumerate(trainer.loggers)
    return {f"{i}:{type(lg).__name__}": lg for i, lg in loggers if isinstance(lg, ResumableCSVLogger)}


class RunState(Callback):
    """Store RNG states and logger row counts in checkpoints; restore them when a run resumes.

    The RNG states restored are those of the process that wrote the checkpoint (rank 0). A single-process
    run therefore continues bit for bit; under DDP each rank restores them only when the run has one process,
    and otherwise keeps the generators it was seeded with (the data order of DDP does not depend on them).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        rows = {}
        if trainer.is_global_zero:
            for name, logger in _resumable_loggers(trainer).items():
                logger.save()  # what the checkpoint has seen must be on disk before it exists
                rows[name] = logger.rows
        checkpoint[_KEY] = {
            "rng": rng_state(),
            "world_size": trainer.world_size,
            "logger_rows": rows,
            "epoch": trainer.current_epoch,
            # an end-of-epoch checkpoint: the epoch's aggregates are logged after it and not again on resume
            "epoch_end": bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch),
        }

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get(_KEY)
        if state is None:
            return
        if trainer.is_global_zero:
            for name, logger in _resumable_loggers(trainer).items():
                if name in state["logger_rows"]:
                    keep = state["epoch"] if state["epoch_end"] else None
                    logger.truncate(int(state["logger_rows"][name]), keep)
        if state["world_size"] == 1 and trainer.world_size == 1:
            self._pending = state["rng"]

    # The generators must hold the saved state when the fit loop creates its first data iterator (that draws
    # the sampler's seed): after the sanity check (which draws too) and before training starts. Without a
    # sanity check, on_fit_start is the last hook before that point.
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = None
