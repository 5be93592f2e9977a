"""Reference statistics of saliency profiles: streaming mean and std, saved with the filter names.

The standardised profile ``s_hat = (s - mu) / sigma`` (paper §2.1) needs the per-filter mean and standard
deviation of per-sample profiles over a reference set (the validation set). :class:`RunningMoments` merges
batches with Chan et al.'s parallel update in float64, so the result equals ``torch.mean`` and the unbiased
``torch.std`` (Bessel's correction, torch's default and the authors' choice) over all profiles at once,
without keeping them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["RunningMoments", "SaliencyStats"]

_FORMAT = "icasc.parameter_saliency_stats/1"


class RunningMoments:
    """Per-column count, mean and sum of squared deviations ``M2``, merged batch by batch (float64).

    Merging a batch ``(n_b, mean_b, M2_b)`` into ``(n, mean, M2)`` (Chan, Golub & LeVeque, 1979)::

        delta = mean_b - mean;  n' = n + n_b
        mean' = mean + delta * n_b / n'
        M2'   = M2 + M2_b + delta^2 * n * n_b / n'
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, rows: torch.Tensor) -> None:
        """Add ``[N, F]`` rows (any float dtype; accumulated in float64 on the CPU)."""
        if rows.dim() != 2:
            raise ValueError(f"profiles must be [N, n_filters], got shape {tuple(rows.shape)}")
        rows = rows.detach().to(device="cpu", dtype=torch.float64)
        n_b = rows.shape[0]
        if n_b == 0:
            return
        if self.mean is not None and rows.shape[1] != self.mean.numel():
            raise ValueError(f"profiles have {rows.shape[1]} columns, earlier ones had {self.mean.numel()}")
        mean_b = rows.mean(dim=0)
        m2_b = ((rows - mean_b) ** 2).sum(dim=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        total = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * n_b / total)
        self.count = total

    def std(self) -> torch.Tensor:
        """Unbiased standard deviation ``sqrt(M2 / (n - 1))``, as ``torch.std``'s default."""
        if self.count < 2:
            raise ValueError(f"the standard deviation needs at least 2 profiles, got {self.count}")
        return (self.m2 / (self.count - 1)).sqrt()


@dataclass
class SaliencyStats:
    """Per-filter mean and std of saliency profiles over a reference set, and what they belong to.

    Attributes:
        mean: ``[n_filters]`` float64 mean.
        std: ``[n_filters]`` float64 unbiased standard deviation.
        count: Number of profiles they were computed from.
        filters: ``(layer name, output unit)`` per column, as :attr:`ParameterSaliency.filters`.
        granularity: ``"filter"`` or ``"unit"``.
    """

    mean: torch.Tensor
    std: torch.Tensor
    count: int
    filters: list[tuple[str, int]]
    granularity: str = "filter"

    def __post_init__(self) -> None:
        n = len(self.filters)
        if self.mean.shape != (n,) or self.std.shape != (n,):
            raise ValueError(
                f"mean {tuple(self.mean.shape)} and std {tuple(self.std.shape)} must both be [{n}] "
                "(one entry per filter)"
            )

    @property
    def n_filters(self) -> int:
        return len(self.filters)

    def save(self, path: str | Path) -> Path:
        """Write safetensors (tensors ``mean``, ``std``; metadata: count, granularity, layer names/sizes)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        layers: dict[str, int] = {}
        for layer, _ in self.filters:  # per layer: its number of columns, in column order
            layers[layer] = layers.get(layer, 0) + 1
        metadata = {
            "format": _FORMAT,
            "count": str(self.count),
            "granularity": self.granularity,
            "layers": json.dumps(list(layers.items())),
        }
        tensors = {"mean": self.mean.contiguous().cpu(), "std": self.std.contiguous().cpu()}
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SaliencyStats:
        """Read a file written by :meth:`save`.

        Raises:
            FileNotFoundError: No such file.
            ValueError: The file is not a saliency-stats file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no saliency stats file at {path}; write one with fit_stats(...).save()")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a parameter-saliency stats file (written by SaliencyStats.save)")
        tensors = load_file(str(path))
        filters = [(layer, i) for layer, n in json.loads(metadata["layers"]) for i in range(n)]
        return cls(tensors["mean"], tensors["std"], int(metadata["count"]), filters, metadata["granularity"])

    def check_matches(
        self, filters: list[tuple[str, int]], granularity: str, source: str = "these stats"
    ) -> None:
        """Raise a ValueError unless the stats belong to profiles with these columns."""
        if granularity != self.granularity:
            raise ValueError(
                f"{source} were computed with granularity={self.granularity!r}, this analysis uses "
                f"{granularity!r}; recompute them with fit_stats"
            )
        if list(filters) == list(self.filters):
            return
        if len(filters) != len(self.filters):
            detail = f"{len(self.filters)} filters there, {len(filters)} here"
        else:
            i = next(i for i, (a, b) in enumerate(zip(self.filters, filters, strict=True)) if a != b)
            detail = f"column {i} is {self.filters[i]} there and {filters[i]} here"
        raise ValueError(
            f"{source} come from another model or layer selection ({detail}); recompute them with "
            "fit_stats on this model"
        )
