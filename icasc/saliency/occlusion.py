"""Occlusion sensitivity (Zeiler & Fergus 2014; Grad-CAM paper §5 and appendix C.1, Fig. A4)."""

from __future__ import annotations

import torch
from torch import nn

from icasc.saliency._input_gradients import class_scores
from icasc.saliency.base import Attribution, TargetLike

__all__ = ["Occlusion"]

SCORES = ("probability", "logit")


class Occlusion(Attribution):
    """The drop of the class score when a square region around each pixel is occluded.

    Following appendix C.1 of the Grad-CAM paper, a ``window x window`` mask (35 x 35 by default, "a good
    trade-off between sharp results and a smooth appearance") slides over the image, which is zero-padded by
    ``window // 2`` on each side so that windows centred on the border pixels exist and the map has the
    image's size. Each masked image is scored and the drop ``score(x) - score(x_masked)`` is credited to the
    pixels the window covers; a pixel's value is the mean drop over all the windows that cover it. Positive
    values are evidence for the class, negative ones (the score rises) hint at confusing classes.

    The paper stores a value at every location (stride 1: ``H * W`` forward passes per image). The default
    stride ``max(1, window // 5)`` (7 px for 35) costs ~25x fewer forwards and still averages every pixel over
    about 25 windows; pass ``stride=1`` for the paper's dense computation. All masked images are scored in
    no-grad forwards of ``chunk_size`` images.

    Args:
        model: The classifier, returning ``[B, K]`` logits.
        window: Side of the square mask in pixels.
        stride: Step between windows; ``None`` -> ``max(1, window // 5)``.
        fill: Value of the occluded pixels: a float, or a ``[C]`` tensor of per-channel values. The default 0
            is the dataset mean colour when the images are normalised with the dataset mean and std.
        chunk_size: Masked images per forward pass.
        score: ``"probability"`` (softmax probability of the class, default: drops are comparable across
            images and bounded by 1) or ``"logit"`` (the pre-softmax class score).
    """

    def __init__(
        self,
        model: nn.Module,
        window: int = 35,
        stride: int | None = None,
        fill: float | torch.Tensor = 0.0,
        chunk_size: int = 64,
        score: str = "probability",
    ) -> None:
        super().__init__(model)
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        stride = max(1, window // 5) if stride is None else stride
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int or None, got {stride!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.window = window
        self.stride = stride
        self.fill = fill
        self.chunk_size = chunk_size
        self.score = score

    def window_spans(self, size: int) -> torch.Tensor:
        """``[N, 2]`` (start, stop) pixel ranges of the windows along an axis of ``size`` pixels.

        Windows start every ``stride`` pixels on the padded axis (``window // 2`` each side), plus one flush
        with its end so that the last pixels are covered; the ranges are clipped to the image.
        """
        if self.window > size:
            raise ValueError(
                f"occlusion window {self.window} is larger than the image side {size}; use window <= {size}"
            )
        pad = self.window // 2
        last = size + 2 * pad - self.window
        starts = list(range(0, last + 1, self.stride))
        if starts[-1] != last:
            starts.append(last)
        begin = torch.tensor(starts) - pad
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
        # Sum of the drops of the windows covering each pixel, divided by how many windows cover it.
        drops = drops.view(b, len(rows), len(cols))
        credited = in_rows.t() @ drops @ in_cols
        coverage = in_rows.sum(dim=0)[:, None] * in_cols.sum(dim=0)[None, :]
        return credited / coverage

    @staticmethod
    def _indicator(spans: torch.Tensor, size: int, images: torch.Tensor) -> torch.Tensor:
        pixels = torch.arange(size, device=images.device)
        inside = (pixels[None, :] >= spans[:, :1]) & (pixels[None, :] < spans[:, 1:])
        return inside.to(images.dtype)
