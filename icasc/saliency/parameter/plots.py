"""Figures of parameter-space saliency: layer-wise profiles (Fig. 11–12), input saliency, neighbour grids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from icasc.visualize import show_overlay

__all__ = ["input_saliency_figure", "layer_sorted_profile", "neighbour_grid", "profile_figure"]

CORRECT, WRONG = "#1a9641", "#d7191c"


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _ordered_layers(layer_slices: Mapping[str, slice], n_filters: int) -> list[tuple[str, slice]]:
    layers = sorted(layer_slices.items(), key=lambda item: item[1].start)
    covered = sum(s.stop - s.start for _, s in layers)
    if covered != n_filters:
        raise ValueError(
            f"layer_slices cover {covered} columns but the profiles have {n_filters}: pass the "
            "ParameterSaliency.layer_slices of the model that computed them"
        )
    return layers


def layer_sorted_profile(
    profile: torch.Tensor, layer_slices: Mapping[str, slice]
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Per layer (shallow to deep), its filters' values sorted descending, at x in ``[layer, layer + 1)``.

    Every layer gets the same width on the x axis whatever its filter count, as in Fig. 11–12.

    Args:
        profile: ``[n_filters]`` one (e.g. averaged, standardised) profile.
        layer_slices: ``{layer name: slice of profile columns}`` (``ParameterSaliency.layer_slices``).

    Returns:
        ``[(layer name, x [n], sorted values [n])]``.
    """
    if profile.dim() != 1:
        raise ValueError(f"profile must be one [n_filters] vector, got shape {tuple(profile.shape)}")
    out = []
    for i, (name, cols) in enumerate(_ordered_layers(layer_slices, profile.numel())):
        values = profile[cols].detach().float().cpu().sort(descending=True).values
        x = i + torch.arange(values.numel(), dtype=torch.float32) / values.numel()
        out.append((name, x, values))
    return out


def profile_figure(
    profiles: Mapping[str, torch.Tensor],
    layer_slices: Mapping[str, slice],
    path: str | Path,
    ylabel: str = "standardised saliency",
    title: str = "",
) -> Path:
    """The layer-wise saliency profile plot (Fig. 11–12), one panel per group.

    Within each layer the filter values are sorted descending; layers are concatenated left to right from
    shallow to deep, each with equal width, and their boundaries are marked by dotted lines.

    Args:
        profiles: ``{panel title: [n_filters] profile}``, e.g. the mean standardised profile of correctly
            and of incorrectly classified samples.
        layer_slices: ``{layer name: slice of columns}`` (``ParameterSaliency.layer_slices``).
        path: Output PNG.
        ylabel: The y-axis label.
        title: Figure title.
    """
    if not profiles:
        raise ValueError("profiles is empty: give at least one {title: [n_filters] profile}")
    n = len(profiles)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), squeeze=False, sharex=True)
    for ax, (name, profile) in zip(axes[:, 0], profiles.items()):
        layers = layer_sorted_profile(profile, layer_slices)
        for _, x, values in layers:
            ax.plot(x.numpy(), values.numpy(), color="#2b83ba", linewidth=1.0)
            ax.fill_between(x.numpy(), values.numpy(), alpha=0.3, color="#2b83ba", linewidth=0)
        for boundary in range(1, len(layers)):
            ax.axvline(boundary, color="grey", linestyle=":", linewidth=0.8)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xlim(0, len(layers))
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(name, fontsize=9)
    ax = axes[-1, 0]
    if len(layers) <= 16:  # names fit under the panels; deeper models get layer ids like the paper
        ax.set_xticks([i + 0.5 for i in range(len(layers))])
        ax.set_xticklabels([name for name, _, _ in layers], rotation=45, ha="right", fontsize=7)
    else:
        ax.set_xlabel("layer id (shallow → deep; filters sorted descending within each layer)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def input_saliency_figure(
    image: torch.Tensor, saliency: torch.Tensor, path: str | Path, title: str = ""
) -> Path:
    """The image, its input-space saliency (B.2) and the jet overlay, side by side.

    Args:
        image: ``[H, W, 3]`` in ``[0, 1]`` (``icasc.utils.denormalize`` then permute).
        saliency: ``[H, W]`` map scaled to ``[0, 1]`` (``postprocess_input_saliency`` + ``normalize``).
        path: Output PNG.
        title: Title over the panels (e.g. true and predicted class).
    """
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    axes[0].imshow(image.cpu())
    axes[0].axis("off")
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(saliency.cpu(), cmap="gray", vmin=0, vmax=1)
    axes[1].axis("off")
    axes[1].set_title("input saliency", fontsize=8)
    show_overlay(axes[2], image.cpu(), saliency.cpu())
    axes[2].set_title("overlay", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _frame(ax: plt.Axes, correct: bool) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(CORRECT if correct else WRONG)
        spine.set_linewidth(3)


def neighbour_grid(
    queries: torch.Tensor,
    neighbours: torch.Tensor,
    query_correct: torch.Tensor,
    neighbour_correct: torch.Tensor,
    path: str | Path,
    query_titles: Sequence[str] | None = None,
    neighbour_titles: Sequence[Sequence[str]] | None = None,
) -> Path:
    """One row per query: the query image, then its k nearest neighbours in saliency space (A.4, Fig. 14–15).

    Frames mark correctness: green for a correctly classified image, red for a misclassified one, and the
    titles carry ✓ / ✗.

    Args:
        queries: ``[Q, H, W, 3]`` images in ``[0, 1]``.
        neighbours: ``[Q, k, H, W, 3]`` their neighbours, most similar first.
        query_correct: ``[Q]`` bool.
        neighbour_correct: ``[Q, k]`` bool.
        path: Output PNG.
        query_titles: ``Q`` titles (e.g. ``"true → predicted"``).
        neighbour_titles: ``Q × k`` titles.
    """
    if neighbours.dim() != 5 or neighbours.shape[0] != queries.shape[0]:
        raise ValueError(
            f"neighbours must be [Q, k, H, W, 3] for Q = {queries.shape[0]} queries, "
            f"got {tuple(neighbours.shape)}"
        )
    q, k = neighbours.shape[:2]
    fig, axes = plt.subplots(q, k + 1, figsize=(1.6 * (k + 1), 1.8 * q), squeeze=False)
    for i in range(q):
        ok = bool(query_correct[i])
        axes[i, 0].imshow(queries[i].cpu())
        _frame(axes[i, 0], ok)
        head = query_titles[i] if query_titles else "query"
        axes[i, 0].set_title(f"{'✓' if ok else '✗'} {head}", fontsize=7)
        for j in range(k):
            ok = bool(neighbour_correct[i, j])
            axes[i, j + 1].imshow(neighbours[i, j].cpu())
            _frame(axes[i, j + 1], ok)
            label = neighbour_titles[i][j] if neighbour_titles else f"#{j + 1}"
            axes[i, j + 1].set_title(f"{'✓' if ok else '✗'} {label}", fontsize=6)
    return _save(fig, path)
