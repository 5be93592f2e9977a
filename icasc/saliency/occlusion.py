"""Occlusion sensitivity (Zeiler & Fergus 2014; Grad-CAM paper §5.3 and appendix C.1, Fig. A4)."""

from __future__ import annotations

import torch
from torch import nn

from icasc.saliency._input_gradients import class_scores
from icasc.saliency.base import Attribution, TargetLike
from icasc.utils import is_int

__all__ = ["AGGREGATES", "Occlusion"]

SCORES = ("probability", "logit")
AGGREGATES = ("centre", "mean")


class Occlusion(Attribution):
    """The drop of the class score when the region around each location is occluded (Grad-CAM app. C.1).

    Grad-CAM appendix C.1: "At each location of the occlusion map we store the difference in the original
    score for the particular class and the score obtained after forward propagating the masked image", the
    mask being a ``window x window`` square (35 x 35 by default, "a good trade-off between sharp results and
    a smooth appearance") around that location, with the image zero-padded so that the map has the image's
    size. So the default ``aggregate="centre"`` stores at pixel ``(i, j)`` the drop
    ``score(x) - score(x_masked)`` of the window centred on ``(i, j)``: rows ``[i - window // 2,
    i - window // 2 + window)`` clipped to the image (for an even window the centre is the lower-right pixel
    of the central 2 x 2). Positive values are evidence for the class, negative ones (the score rises) hint at
    confusing classes. This is the map the faithfulness metric compares with (Grad-CAM §5.3,
    :mod:`icasc.metrics.faithfulness`).

    ``stride=1`` is the paper's map itself (``H * W`` forward passes per image). With ``stride = s > 1`` the
    image is cut into ``s x s`` cells (the last row and column of cells clipped to the image) and every pixel
    of a cell gets the drop of the window centred on the cell's central pixel, ``start + (length - 1) // 2``
    along each axis: the paper's map sampled on a coarser grid and upsampled by nearest neighbour (exact at
    the cell centres). The default stride ``max(1, window // 5)`` (7 px for 35) costs ~``s**2`` = 49x fewer
    forwards.

    ``aggregate="mean"`` is not the paper's map: windows start every ``stride`` pixels on the padded axis
    (plus one flush with its end) and each pixel gets the mean drop of all the windows that cover it, a
    box-blurred map (smoother, at any stride). All masked images are scored in no-grad forwards of
    ``chunk_size`` images.

    Args:
        model: The classifier, returning ``[B, K]`` logits.
        window: Side of the square mask in pixels.
        stride: Spacing of the window centres; ``None`` -> ``max(1, window // 5)``.
        fill: Value of the occluded pixels: a float, or a ``[C]`` tensor of per-channel values. The default 0
            is the dataset mean colour when the images are normalised with the dataset mean and std.
        chunk_size: Masked images per forward pass.
        score: ``"probability"`` (softmax probability of the class, default: drops are comparable across
            images and bounded by 1) or ``"logit"`` (the pre-softmax class score).
        aggregate: ``"centre"`` (the paper's map, default) or ``"mean"`` (the mean drop of the covering
            windows).
    """

    def __init__(
        self,
        model: nn.Module,
        window: int = 35,
        stride: int | None = None,
        fill: float | torch.Tensor = 0.0,
        chunk_size: int = 64,
        score: str = "probability",
        aggregate: str = "centre",
    ) -> None:
        super().__init__(model)
        if not is_int(window) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        stride = max(1, window // 5) if stride is None else stride
        if not is_int(stride) or stride < 1:
            raise ValueError(f"stride must be a positive int or None, got {stride!r}")
        if not is_int(chunk_size) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(
                f"aggregate must be one of {AGGREGATES} ('centre': the paper's map), got {aggregate!r}"
            )
        self.window = window
        self.stride = stride
        self.fill = fill
        self.chunk_size = chunk_size
        self.score = score
        self.aggregate = aggregate

    def window_centres(self, size: int) -> torch.Tensor:
        """``[N]`` pixel index of each window's centre along an axis of ``size`` pixels.

        ``"centre"``: the central pixel of each ``stride``-cell, ``start + (length - 1) // 2`` (every pixel
        when ``stride=1``). ``"mean"``: every ``stride`` pixels on the axis padded by ``window // 2`` on each
        side, plus one window flush with the padded end.
        """
        if self.window > size:
            raise ValueError(
                f"occlusion window {self.window} is larger than the image side {size}; use window <= {size}"
            )
        if self.aggregate == "centre":
            starts = torch.arange(0, size, self.stride)
            lengths = (size - starts).clamp(max=self.stride)
            return starts + (lengths - 1) // 2
        last = size + 2 * (self.window // 2) - self.window
        starts = list(range(0, last + 1, self.stride))
        if starts[-1] != last:
            starts.append(last)
        return torch.tensor(starts)

    def window_spans(self, size: int) -> torch.Tensor:
        """``[N, 2]`` (start, stop) pixel ranges of the windows along an axis, clipped to the image.

        The window centred on pixel ``c`` (:meth:`window_centres`) spans ``[c - window // 2, c - window // 2
        + window)``.
        """
        begin = self.window_centres(size) - self.window // 2
        return torch.stack([begin.clamp(min=0), (begin + self.window).clamp(max=size)], dim=1)

    def _scores(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        if self.score == "probability":
            logits = logits.softmax(dim=1)
        return logits.gather(1, classes[:, None]).squeeze(1)

    def _fill_value(self, images: torch.Tensor) -> torch.Tensor:
        fill = torch.as_tensor(self.fill, dtype=images.dtype, device=images.device)
        if fill.dim() == 0:
            return fill
        if fill.dim() != 1 or fill.numel() != images.shape[1]:
            raise ValueError(
                f"fill must be a float or a [C] tensor with C={images.shape[1]}, "
                f"got shape {tuple(fill.shape)}"
            )
        return fill.view(1, -1, 1, 1)

    def _attribute(self, images: torch.Tensor, target: TargetLike) -> torch.Tensor:
        images = images.detach()
        b, _, h, w = images.shape
        rows, cols = self.window_spans(h).to(images.device), self.window_spans(w).to(images.device)
        fill = self._fill_value(images)
        # Pixel-in-window indicators per axis: [N_rows, H] and [N_cols, W]; a window is a (row, col) pair.
        in_rows = self._indicator(rows, h, images)
        in_cols = self._indicator(cols, w, images)
        n_windows = len(rows) * len(cols)
        with torch.no_grad():
            logits = self.model(images)
            classes, _ = class_scores(logits, target)
            clean = self._scores(logits, classes)
            drops = images.new_empty(b * n_windows)
            for start in range(0, b * n_windows, self.chunk_size):
                flat = torch.arange(start, min(start + self.chunk_size, b * n_windows), device=images.device)
                which, window = flat // n_windows, flat % n_windows
                mask = in_rows[window // len(cols)][:, :, None] * in_cols[window % len(cols)][:, None, :]
                masked = torch.where(mask[:, None] > 0, fill, images[which])
                drops[flat] = clean[which] - self._scores(self.model(masked), classes[which])
        drops = drops.view(b, len(rows), len(cols))
        if self.aggregate == "centre":
            # Each pixel takes the drop of the window centred on its stride-cell (Grad-CAM app. C.1).
            cell_rows = torch.arange(h, device=images.device) // self.stride
            cell_cols = torch.arange(w, device=images.device) // self.stride
            return drops[:, cell_rows][:, :, cell_cols]
        # "mean": the sum of the drops of the windows covering each pixel over how many windows cover it.
        credited = in_rows.t() @ drops @ in_cols
        coverage = in_rows.sum(dim=0)[:, None] * in_cols.sum(dim=0)[None, :]
        return credited / coverage

    @staticmethod
    def _indicator(spans: torch.Tensor, size: int, images: torch.Tensor) -> torch.Tensor:
        pixels = torch.arange(size, device=images.device)
        inside = (pixels[None, :] >= spans[:, :1]) & (pixels[None, :] < spans[:, 1:])
        return inside.to(images.dtype)
