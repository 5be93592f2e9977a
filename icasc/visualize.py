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

__all__ = ["attention_figure", "denormalize"]

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
                ax.imshow(pictures[i])
                ax.imshow(maps[2][i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if i == 0 and j > 0:
                ax.set_title(COLUMNS[j], fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
