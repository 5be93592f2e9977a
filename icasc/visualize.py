"""Figures: attention maps of the true and the most confusing class, the KS chart (PNG, matplotlib Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from icasc.attention.functional import max_normalize
from icasc.attention.mechanism import AttentionMechanism
from icasc.metrics.ks import ks_curves, ks_statistic
from icasc.utils import denormalize, resize_map

__all__ = [
    "attention_figure",
    "confusion_gallery",
    "difference_figure",
    "ks_figure",
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


def show_overlay(ax: plt.Axes, image: torch.Tensor, saliency: torch.Tensor, alpha: float = 0.5) -> None:
    """Draw a ``[0, 1]`` saliency map in jet over an ``[H, W, 3]`` image (the papers' figure style)."""
    ax.imshow(image)
    ax.imshow(saliency, cmap="jet", alpha=alpha, vmin=0, vmax=1)
    ax.axis("off")


def _save(fig: plt.Figure, path: str | Path, top: float = 1.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0, 1, top))  # top < 1 leaves room for a suptitle
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


def ks_figure(
    true_probs: torch.Tensor,
    confused_probs: torch.Tensor,
    path: str | Path,
    title: str = "",
    labels: tuple[str, str] = ("Target", "Confused"),
) -> Path:
    """The KS chart of ICASC Fig. 9: both empirical CDFs and their largest gap.

    Args:
        true_probs: ``[n]`` probabilities of the ground-truth class.
        confused_probs: ``[m]`` probabilities of the most confusing class.
        path: Output PNG.
        title: Figure title.
        labels: Legend names of the two curves.

    Returns:
        The written path.
    """
    curves = ks_curves(true_probs, confused_probs)
    statistic, threshold = ks_statistic(true_probs, confused_probs)
    # Steps from 0 at x=0 to 1 at x=1, so the curves span the probability axis as in Fig. 9.
    x = torch.cat(
        [torch.zeros(1, dtype=curves["x"].dtype), curves["x"], torch.ones(1, dtype=curves["x"].dtype)]
    )
    fig, ax = plt.subplots(figsize=(5, 4))
    for key, label, color in (("target", labels[0], "tab:blue"), ("confused", labels[1], "tab:red")):
        y = torch.cat([torch.zeros(1, dtype=x.dtype), curves[key], torch.ones(1, dtype=x.dtype)])
        ax.step(x.cpu().numpy(), y.cpu().numpy(), where="post", color=color, label=label)
    at = int(torch.searchsorted(curves["x"], threshold))
    target_at, confused_at = float(curves["target"][at]), float(curves["confused"][at])
    t = float(threshold)
    label = f"KS = {float(statistic):.2f} at p = {t:.2f}"
    if confused_at < target_at:  # not the case of Fig. 9: the confusing class wins
        label += f"\n({labels[1]} probabilities higher)"
    ax.vlines(
        t,
        min(target_at, confused_at),
        max(target_at, confused_at),
        colors="black",
        linestyles="--",
        label=label,
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("classification probability")
    ax.set_ylabel("cumulative fraction of images")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def confusion_gallery(
    pictures: torch.Tensor,
    true_maps: torch.Tensor,
    confused_maps: torch.Tensor,
    rows: Sequence[str],
    true_titles: Sequence[str],
    confused_titles: Sequence[str],
    path: str | Path,
    boxes: Sequence[torch.Tensor | None] | None = None,
    title: str = "",
) -> Path:
    """One row per image: the input, and jet overlays of the true-class and the most-confusing-class maps.

    Args:
        pictures: ``[N, H, W, 3]`` images in ``[0, 1]``.
        true_maps: ``[N, H, W]`` maps of the true class, normalised to ``[0, 1]``.
        confused_maps: ``[N, H, W]`` maps of the most confusing class, normalised to ``[0, 1]``.
        rows: ``N`` titles of the input column (e.g. the image's index).
        true_titles: ``N`` titles of the true-class column (class name and probability).
        confused_titles: ``N`` titles of the confusing-class column.
        path: Output PNG.
        boxes: Optional per image ``[4]`` or ``[K, 4]`` xyxy boxes (or ``None``) drawn on the input.
        title: Figure title.

    Returns:
        The written path.
    """
    n = pictures.shape[0]
    if not (true_maps.shape[0] == confused_maps.shape[0] == len(rows) == n):
        raise ValueError(
            f"confusion_gallery needs as many maps and titles as pictures ({n}), got {true_maps.shape[0]} "
            f"true maps, {confused_maps.shape[0]} confusing maps and {len(rows)} row titles"
        )
    fig, axes = plt.subplots(max(n, 1), 3, figsize=(6.6, 2.3 * max(n, 1)), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(pictures[i].cpu())
        axes[i, 0].axis("off")
        axes[i, 0].set_title(rows[i], fontsize=7)
        box = boxes[i] if boxes is not None else None
        if box is not None:
            for x0, y0, x1, y1 in box.reshape(-1, 4).tolist():
                axes[i, 0].add_patch(
                    plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=1)
                )
        show_overlay(axes[i, 1], pictures[i].cpu(), true_maps[i].cpu())
        axes[i, 1].set_title(true_titles[i], fontsize=7)
        show_overlay(axes[i, 2], pictures[i].cpu(), confused_maps[i].cpu())
        axes[i, 2].set_title(confused_titles[i], fontsize=7)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no image to show", ha="center", va="center")
        for ax in axes[0]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path, top=1 - 0.35 / fig.get_figheight() if title else 1.0)
