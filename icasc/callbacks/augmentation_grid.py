"""The picture :class:`~icasc.callbacks.GroupCAMAugmentation` logs: what the model is trained on.

One row per image, four columns: the original, its Group-CAM map (jet), the binary mask (white = kept
sharp) and the augmented image (Group-CAM paper §5, steps 1-3). It goes to the image-capable loggers of the
run (Weights & Biases, TensorBoard), else to PNG files next to the other logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid, save_image

from icasc.saliency.base import normalize

__all__ = ["COLUMNS", "augmentation_grid", "grid_directory", "log_grid"]

COLUMNS = ("original", "map", "mask", "augmented")


def _rgb(images: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, 3, H, W]``: RGB kept, anything else shown as the channel mean in grey."""
    return images if images.shape[1] == 3 else images.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)


def _jet(maps: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` maps -> ``[N, 3, H, W]`` jet colours of the per-map min-max normalised values."""
    import matplotlib

    lut = torch.tensor(matplotlib.colormaps["jet"](torch.linspace(0, 1, 256).numpy())[:, :3])
    index = (normalize(maps) * 255).round().long()
    return lut.to(maps.dtype)[index].permute(0, 3, 1, 2)


def augmentation_grid(
    images: torch.Tensor,
    maps: torch.Tensor,
    masks: torch.Tensor,
    augmented: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """A ``[3, H', W']`` image in ``[0, 1]``: rows are images, columns :data:`COLUMNS`.

    Args:
        images: ``[N, C, H, W]`` normalised originals.
        maps: ``[N, H, W]`` saliency maps.
        masks: ``[N, H, W]`` binary masks.
        augmented: ``[N, C, H, W]`` augmented images.
        mean: Per-channel normalisation mean of the data, to show the images as they were; with ``std``.
        std: Per-channel normalisation std. Without both, each original is min-max scaled for display
            and its augmented copy scaled alike (so the blur stays visible).

    Returns:
        The grid, float32 on the CPU.
    """
    images, augmented = images.detach().float().cpu(), augmented.detach().float().cpu()
    if mean is not None and std is not None:
        m = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        shown = [(x * s + m).clamp(0, 1) for x in (images, augmented)]
    else:
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        span = (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-12)
        shown = [((x - low) / span).clamp(0, 1) for x in (images, augmented)]
    heat = _jet(maps.detach().float().cpu())
    binary = masks.detach().float().cpu().unsqueeze(1).expand(-1, 3, -1, -1)
    tiles = torch.stack([_rgb(shown[0]), heat, binary, _rgb(shown[1])], dim=1).flatten(0, 1)
    return make_grid(tiles, nrow=len(COLUMNS), padding=2, pad_value=1.0)


def grid_directory(trainer: L.Trainer) -> Path:
    """Where the PNG grids go: ``<log_dir>/groupcam_augmentation`` of the first logger, else of the run root.

    Computed without ``trainer.log_dir``, which is a collective call under DDP (only rank 0 logs).
    """
    for logger in trainer.loggers:
        directory = getattr(logger, "log_dir", None) or logger.save_dir
        if directory:
            return Path(directory) / "groupcam_augmentation"
    return Path(trainer.default_root_dir) / "groupcam_augmentation"


def log_grid(
    trainer: L.Trainer, grid: torch.Tensor, step: int, key: str = "groupcam_augmentation"
) -> list[str]:
    """Send ``grid`` to the run's image loggers, or write ``step_XXXXXX.png`` when it has none.

    Weights & Biases gets ``logger.log_image(key, [grid])``, TensorBoard ``add_image(key, grid)``; any other
    logger (CSV) or none: a PNG under :func:`grid_directory`.

    Args:
        trainer: The running trainer (call on global rank 0 only).
        grid: ``[3, H, W]`` image from :func:`augmentation_grid`.
        step: The global step, in the file name and the loggers' step.
        key: Name of the image in the loggers.

    Returns:
        Where it went: logger class names and PNG paths.
    """
    sent: list[str] = []
    caption = " | ".join(COLUMNS)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[grid], step=step, caption=[caption])
            sent.append(logger.__class__.__name__)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=step)
            sent.append(logger.__class__.__name__)
    if not sent:
        path = grid_directory(trainer) / f"step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        sent.append(str(path))
    return sent
