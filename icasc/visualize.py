"""Figures: attention maps of the true and the most confusing class (PNG, matplotlib Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from icasc.attention.functional import max_normalize
from icasc.attention.mechanism import AttentionMechanism
from icasc.losses.functional import resize_map

__all__ = [
    "attention_figure",
    "denormalize",
    "difference_figure",
    "method_grid",
    "overlay_figure",
    "show_overlay",
]

COLUMNS = (
    "input",
    "true · inner",
    "confusing · inner",
    "true · last",
    "confusing · last",
    "overlay (true · last)",
)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo per-channel normalisation: ``[B,3,H,W]`` back to ``[0, 1]`` for display."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1)


def show_overlay(ax: plt.Axes, image: torch.Tensor, saliency: torch.Tensor, alpha: float = 0.5) -> None:
    """Draw a ``[0, 1]`` saliency map in jet over an ``[H, W, 3]`` image (the papers' figure style)."""
    ax.imshow(image)
    ax.imshow(saliency, cmap="jet", alpha=alpha, vmin=0, vmax=1)
    ax.axis("off")


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def overlay_figure(image: torch.Tensor, saliency: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """One overlay PNG: ``image`` ``[H, W, 3]`` in ``[0, 1]`` and a normalised ``[H, W]`` map."""
    fig, ax = plt.subplots(figsize=(3, 3))
    show_overlay(ax, image, saliency)
    ax.set_title(title, fontsize=8)
    return _save(fig, path)


def method_grid(
    image: torch.Tensor, maps: dict[str, dict[str, torch.Tensor]], columns: Sequence[str], path: str | Path
) -> Path:
    """A grid of overlays: one row per method, one column per explained class (e.g. predicted, true, second).

    Args:
        image: ``[H, W, 3]`` in ``[0, 1]``.
        maps: ``{method: {column title: [H, W] normalised map}}``.
        columns: Column titles, in order.
        path: Output PNG.
    """
    rows = list(maps)
    fig, axes = plt.subplots(
        len(rows), len(columns) + 1, figsize=(2.2 * (len(columns) + 1), 2.2 * len(rows)), squeeze=False
    )
    for i, method in enumerate(rows):
        axes[i, 0].imshow(image)
        axes[i, 0].axis("off")
        axes[i, 0].set_title(method, fontsize=8)
        for j, column in enumerate(columns, start=1):
            show_overlay(axes[i, j], image, maps[method][column])
            if i == 0:
                axes[i, j].set_title(column, fontsize=8)
    return _save(fig, path)


def difference_figure(
    image: torch.Tensor, difference: torch.Tensor, path: str | Path, title: str = ""
) -> Path:
    """A signed map in ``[-1, 1]`` in diverging colours beside the image (SmoothGrad paper, Fig. 6)."""
    fig, axes = plt.subplots(1, 2, figsize=(5, 2.6))
    axes[0].imshow(image)
    axes[0].axis("off")
    im = axes[1].imshow(difference, cmap="bwr", vmin=-1, vmax=1)
    axes[1].axis("off")
    axes[1].set_title(title, fontsize=8)
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    return _save(fig, path)


def attention_figure(
    mechanism: AttentionMechanism,
    images: torch.Tensor,
    targets: torch.Tensor,
    path: str | Path,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str] | None = None,
    boxes: torch.Tensor | None = None,
) -> Path:
    """Draw, per image, the input, the true- and confusing-class maps at both layers and a jet overlay.

    Maps are computed with the mechanism as in training (no graph kept) and each is shown min-max scaled
    to its own maximum; the overlay is the true-class last-layer map upsampled to the input, over the
    image, as in the Grad-CAM figures. The model's mode is not changed: put it in eval mode first.

    Args:
        mechanism: The attention mechanism of a trained module.
        images: ``[B, 3, H, W]`` normalised images.
        targets: ``[B]`` labels (or ``[B, C]`` multi-hot).
        path: Output PNG path.
        mean: Normalisation mean (for display).
        std: Normalisation std (for display).
        class_names: Optional names for the titles.
        boxes: Optional ``[B, 4]`` object boxes drawn on the input.

    Returns:
        The written path.
    """
    with torch.enable_grad():
        out = mechanism(images, targets, create_graph=False)
    probs = out.logits.detach().float().softmax(dim=1)
    pictures = denormalize(images.detach().float(), mean, std).permute(0, 2, 3, 1).cpu()
    size = tuple(images.shape[-2:])
    maps = [
        max_normalize(resize_map(m.detach().float(), size)).cpu()
        for m in (out.target["inner"], out.confusing["inner"], out.target["last"], out.confusing["last"])
    ]
    b = images.shape[0]
    fig, axes = plt.subplots(b, len(COLUMNS), figsize=(2.1 * len(COLUMNS), 2.2 * b), squeeze=False)

    def name(c: int) -> str:
        return class_names[c] if class_names is not None else str(c)

    for i in range(b):
        conf = int(out.confusing_class[i])
        if targets.dim() == 1:
            t = int(targets[i])
            row_title = f"{name(t)} p={probs[i, t]:.2f}\nvs {name(conf)} p={probs[i, conf]:.2f}"
        else:
            row_title = f"vs {name(conf)}"
        cells = [pictures[i], maps[0][i], maps[1][i], maps[2][i], maps[3][i], None]
        for j, cell in enumerate(cells):
            ax = axes[i, j]
            ax.axis("off")
            if j == 0:
                ax.imshow(cell)
                if boxes is not None:
                    x0, y0, x1, y1 = boxes[i].tolist()
                    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=1))
                ax.set_title(row_title, fontsize=7)
            elif cell is not None:
                ax.imshow(cell, cmap="jet", vmin=0, vmax=1)
            else:
                show_overlay(ax, pictures[i], maps[2][i])
            if i == 0 and j > 0:
                ax.set_title(COLUMNS[j], fontsize=7)
    return _save(fig, path)
