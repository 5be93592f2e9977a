"""Capture in-graph activations of named layers with forward hooks (no backward hooks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FeatureCapture", "resolve_layer"]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the sub-module called ``name`` (a dotted name as in ``model.named_modules()``).

    Raises:
        ValueError: If no such module exists; the message lists the valid names.
    """
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        valid = [n for n in modules if n]
        shown = ", ".join(valid[:60]) + (f", ... ({len(valid)} in all)" if len(valid) > 60 else "")
        raise ValueError(f"unknown layer {name!r} in {type(model).__name__}; valid layer names: {shown}")
    return modules[name]


class FeatureCapture:
    """Forward hooks that keep the outputs of named layers, attached to the autograd graph.

    Use as a context manager; every hook is removed on exit, also when the body raises::

        with FeatureCapture(model, ["layer3", "layer4"]) as cap:
            logits = model(images)
        cap.features["layer4"]  # [B, K, h, w], requires grad
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        if not layers:
            raise ValueError("FeatureCapture needs at least one layer name")
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        self.modules = {name: resolve_layer(model, name) for name in self.layers}
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name!r} returned {type(output).__name__}; a tensor is needed")
            # A layer called twice in one forward (weight sharing) would make the map ambiguous.
            if name in self.features:
                raise RuntimeError(f"layer {name!r} ran more than once in one forward pass")
            self.features[name] = output

        return keep

    def __enter__(self) -> FeatureCapture:
        self.features = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Forget the captured tensors (keeps the hooks)."""
        self.features = {}
