"""Which layers' output units become profile columns, and whether per-sample gradients are independent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GRANULARITIES", "ProfiledLayer", "check_per_sample_independence", "resolve_profiled_layers"]

GRANULARITIES = ("filter", "unit")


@dataclass(frozen=True)
class ProfiledLayer:
    """A layer whose output units are profile columns: an ``nn.Conv2d`` (filters) or ``nn.Linear`` (rows)."""

    name: str
    module: nn.Module

    @property
    def units(self) -> int:
        m = self.module
        return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features

    @property
    def weights_per_unit(self) -> int:
        return self.module.weight[0].numel()

    def params_per_unit(self, granularity: str, norm: _BatchNorm | None) -> int:
        """Parameters averaged per unit: the filter's weights, plus bias and BatchNorm affine for "unit"."""
        if granularity == "filter":
            return self.weights_per_unit
        extra = int(self.module.bias is not None)
        if norm is not None and norm.affine:
            extra += 2
        return self.weights_per_unit + extra


def resolve_profiled_layers(
    model: nn.Module, layers: Sequence[str] | None, granularity: str
) -> list[ProfiledLayer]:
    """The profiled layers in ``model.modules()`` order.

    Args:
        model: The classifier.
        layers: ``None`` for every candidate layer, else dotted module names.
        granularity: ``"filter"`` (candidates: ``nn.Conv2d``) or ``"unit"`` (``nn.Conv2d`` and ``nn.Linear``;
            with ``layers=None`` every parameter of the model must belong to such a layer or to a
            BatchNorm, since "unit" means all parameters).

    Raises:
        ValueError: Unknown granularity, unknown or unsuitable layer names (the message lists the valid
            ones), a model without candidate layers, or (``"unit"``, all layers) parameters held by other
            module types.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    kinds = (nn.Conv2d,) if granularity == "filter" else (nn.Conv2d, nn.Linear)
    candidates = {n: m for n, m in model.named_modules() if n and isinstance(m, kinds)}
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no {' or '.join(k.__name__ for k in kinds)} layer")
    if layers is None:
        if granularity == "unit":
            others = [
                f"{n} ({type(m).__name__})"
                for n, m in model.named_modules()
                if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, (*kinds, _BatchNorm))
            ]
            if others:
                raise ValueError(
                    "granularity='unit' groups every parameter by output unit and knows Conv2d, Linear and "
                    f"BatchNorm; these modules hold other parameters: {', '.join(others)}. Use "
                    "granularity='filter' or pass layers=[...]"
                )
        return [ProfiledLayer(n, m) for n, m in candidates.items()]
    if isinstance(layers, str) or not all(isinstance(n, str) for n in layers) or not layers:
        raise ValueError(f"layers must be None or a non-empty list of dotted layer names, got {layers!r}")
    unknown = [n for n in layers if n not in candidates]
    if unknown:
        valid = list(candidates)
        shown = ", ".join(valid[:80]) + (f", ... ({len(valid)} in all)" if len(valid) > 80 else "")
        raise ValueError(
            f"unknown or non-{'/'.join(k.__name__ for k in kinds)} layers {unknown} for "
            f"granularity={granularity!r}; valid layer names: {shown}"
        )
    wanted = set(layers)
    return [ProfiledLayer(n, m) for n, m in candidates.items() if n in wanted]


def check_per_sample_independence(model: nn.Module) -> None:
    """Raise unless every BatchNorm of ``model`` can use running statistics (per-sample independence)."""
    bad = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.running_mean is None]
    if bad:
        raise ValueError(
            f"BatchNorm layers {bad} have no running statistics (track_running_stats=False), so they "
            "normalise with batch statistics even in eval mode and per-sample gradients would depend on the "
            "rest of the batch; use layers with running statistics"
        )
