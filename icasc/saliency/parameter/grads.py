"""Per-sample parameter-gradient magnitudes per output unit: one batched pass, and the reference loop.

Parameter saliency (Levin et al., "Where do models go wrong? Parameter-space saliency maps for
explainability", §2.1) is ``s_i = |dL(x, y)/d theta_i|`` for one sample, averaged over each output unit's
parameters. Both engines here return, for every sample, the *sum* of the transformed magnitudes of each
unit's parameter gradients (see :class:`Magnitude`) together with the number of parameters per unit, so the
caller divides once.

* :func:`loop_totals` (reference): a batch-size-1 forward and ``torch.autograd.grad`` with respect to the
  parameters, per sample.
* :func:`batched_totals`: ONE forward/backward of the whole batch with parameters temporarily frozen
  (``requires_grad=False``), so autograd never forms the batch's parameter gradient. Forward hooks keep
  each profiled layer's input, tensor hooks on its output receive ``dL/d output`` (no module backward
  hooks; a tensor hook sees the gradient of the value before any later in-place op such as
  ``ReLU(inplace=True)``), and :mod:`~icasc.saliency.parameter.per_sample` turns them into per-unit sums
  during the backward pass (patches + batched matmul, chunked and blocked), so the full per-sample
  gradient never exists for the whole batch and each layer's input is released as soon as it is used.

Per-sample gradients of a batch are only independent when no layer mixes samples: the model must run in
eval mode, where BatchNorm uses its running statistics (the callers put it there). BatchNorm layers without
running statistics (``track_running_stats=False``) normalise with batch statistics even in eval mode and
are refused by :func:`check_per_sample_independence`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from icasc.saliency.parameter.layers import ProfiledLayer
from icasc.saliency.parameter.per_sample import (
    ABSOLUTE,
    Magnitude,
    bias_totals,
    conv_weight_totals,
    linear_weight_totals,
    norm_totals,
)

__all__ = [
    "LossFn",
    "batched_totals",
    "check_losses",
    "default_memory_mb",
    "frozen_parameters",
    "loop_totals",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def _requires_grad(params: Iterable[torch.Tensor], flag: bool) -> Iterator[None]:
    """Set ``requires_grad=flag`` on ``params``; restore each one's own flag on exit (also on error)."""
    saved = [(p, p.requires_grad) for p in params]
    try:
        for p, _ in saved:
            p.requires_grad_(flag)
        yield
    finally:
        for p, old in saved:
            p.requires_grad_(old)


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Set ``requires_grad=False`` on every parameter; restore each flag on exit (also on error)."""
    with _requires_grad(model.parameters(), False):
        yield


def check_losses(losses: torch.Tensor, batch: int) -> torch.Tensor:
    """The loss callable must return one loss per sample."""
    if not isinstance(losses, torch.Tensor) or losses.shape != (batch,):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(
            f"loss must return per-sample losses of shape [{batch}] (e.g. reduction='none'), got {shape}"
        )
    return losses


# ------------------------------------------------------------------------------------------ the engines


class _Recorder:
    """Forward hooks on the profiled layers (and BatchNorms, for "unit"), removed on exit.

    With ``per_sample=True`` it keeps each layer's input and registers a tensor hook on its output that turns
    ``dL/d output`` into per-unit sums at once (during the backward pass, so inputs are freed layer by
    layer). It always records which BatchNorm normalises which profiled convolution's output: a BatchNorm
    whose input *is* that output tensor joins the convolution's units ("unit" granularity).
    """

    def __init__(
        self,
        layers: Sequence[ProfiledLayer],
        granularity: str,
        magnitude: Magnitude,
        memory_mb: float,
        per_sample: bool,
        model: nn.Module,
    ) -> None:
        self.layers = {layer.name: layer for layer in layers}
        self.granularity = granularity
        self.magnitude = magnitude
        self.memory_mb = memory_mb
        self.per_sample = per_sample
        self.candidate_norms = (
            {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
            if granularity == "unit"
            else {}
        )
        self.strict_norms = False
        self.totals: dict[str, torch.Tensor] = {}
        self.norm_of: dict[str, tuple[str, _BatchNorm]] = {}
        self._outputs: dict[str, weakref.ref] = {}
        self._inputs: dict[str, torch.Tensor] = {}
        self.leaves: list[torch.Tensor] = []
        self.batch = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @contextmanager
    def attached(self) -> Iterator[_Recorder]:
        """Hooks live inside the block; tensor hooks too, so a later (double) backward does not fire them."""
        try:
            for name, layer in self.layers.items():
                self._handles.append(layer.module.register_forward_hook(self._layer_hook(name)))
            for name, norm in self.candidate_norms.items():
                self._handles.append(norm.register_forward_hook(self._norm_hook(name)))
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []
            self._inputs, self._outputs = {}, {}

    def _add(self, name: str, values: torch.Tensor) -> None:
        self.totals[name] = values if name not in self.totals else self.totals[name] + values

    def _layer_hook(self, name: str) -> Callable:
        layer = self.layers[name]

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if name in self._outputs:
                raise RuntimeError(
                    f"layer {name!r} ran more than once in one forward pass (shared weights); per-sample "
                    "gradients of such layers are not supported, profile other layers with layers=[...]"
                )
            if not self.per_sample:
                self._outputs[name] = weakref.ref(output)
                return None
            if args[0].shape[0] != self.batch:
                raise ValueError(
                    f"layer {name!r} ran on a batch of {args[0].shape[0]}, not on the {self.batch} images "
                    "(e.g. a shared constant branch), so its gradient is not a sum of per-sample terms; "
                    "use method='loop' or leave it out with layers=[...]"
                )
            self._inputs[name] = args[0]
            returned = None
            if not output.requires_grad:
                # Nothing upstream needs a gradient (frozen parameters, an input without grad): start the
                # backward pass here, so it never computes gradients of the layers before (e.g. the stem's
                # input gradient). The clone keeps the leaf out of later in-place ops.
                output = output.detach().requires_grad_(True)
                self.leaves.append(output)
                returned = output.clone()
            self._outputs[name] = weakref.ref(output if returned is None else returned)
            self._handles.append(output.register_hook(lambda gy: self._layer_grad(layer, gy)))
            return returned

        return hook

    def _layer_grad(self, layer: ProfiledLayer, gy: torch.Tensor) -> None:
        x = self._inputs.pop(layer.name)
        if isinstance(layer.module, nn.Conv2d):
            totals = conv_weight_totals(layer.module, x, gy, self.magnitude, self.memory_mb)
            channel_dim = 1
        else:
            totals = linear_weight_totals(x, gy, self.magnitude, self.memory_mb)
            channel_dim = gy.dim() - 1
        if self.granularity == "unit" and layer.module.bias is not None:
            totals = totals + bias_totals(gy, self.magnitude, channel_dim)
        self._add(layer.name, totals)

    def _norm_hook(self, name: str) -> Callable:
        norm = self.candidate_norms[name]

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            owner = next((n for n, ref in self._outputs.items() if ref() is args[0]), None)
            if owner is None:
                if self.strict_norms:
                    raise ValueError(
                        f"granularity='unit' puts BatchNorm parameters into the unit of the Conv2d/Linear "
                        f"layer whose output they normalise, but {name!r} does not normalise such an "
                        "output (e.g. a pre-activation layout); use granularity='filter' or pass "
                        "layers=[...]"
                    )
                return  # it belongs to a layer that is not profiled
            self.norm_of[owner] = (name, norm)
            if self.per_sample and norm.affine:
                x = args[0]
                self._handles.append(
                    output.register_hook(
                        lambda gy: self._add(owner, norm_totals(norm, x, gy, self.magnitude))
                    )
                )

        return hook


def _finish(
    totals: dict[str, torch.Tensor],
    layers: Sequence[ProfiledLayer],
    granularity: str,
    norm_of: dict[str, tuple[str, _BatchNorm]],
    batch: int,
    like: torch.Tensor,
) -> torch.Tensor:
    columns = []
    for layer in layers:
        norm = norm_of.get(layer.name, (None, None))[1]
        count = layer.params_per_unit(granularity, norm)
        # A layer the loss does not depend on (never run, or cut off) has zero gradient.
        values = totals.get(layer.name)
        if values is None:
            values = like.new_zeros(batch, layer.units)
        columns.append(values / count)
    return torch.cat(columns, dim=1)


def batched_totals(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss: LossFn,
    layers: Sequence[ProfiledLayer],
    granularity: str = "filter",
    magnitude: Magnitude = ABSOLUTE,
    memory_mb: float = 64.0,
    create_graph: bool = False,
    all_layers: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample profiles ``[B, n_units]`` and logits ``[B, C]`` from one batched forward/backward.

    The model must already be in eval mode. Parameters are frozen for the pass (flags restored after), so
    the backward pass computes no parameter gradient and never touches ``.grad``; without ``create_graph``
    it starts at the first profiled layers' outputs (made leaves), so nothing before them is differentiated.

    Args:
        model: The classifier, in eval mode.
        images: ``[B, C, H, W]`` images. With ``create_graph`` they must require grad; the returned
            profiles are then differentiable w.r.t. them.
        targets: Targets passed to ``loss``.
        loss: ``loss(logits, targets) -> [B]`` per-sample losses.
        layers: From :func:`resolve_profiled_layers`.
        granularity: ``"filter"`` or ``"unit"``.
        magnitude: The per-parameter transform that is averaged.
        memory_mb: Budget of one chunk's input patches per layer (see
            :func:`~icasc.saliency.parameter.per_sample.conv_weight_totals`).
        create_graph: Keep the graph, so the profiles can be differentiated w.r.t. ``images``.
        all_layers: Every parameter is profiled, so every BatchNorm must join a convolution's units.

    Returns:
        The profiles (mean transformed magnitude per unit) and the logits.
    """
    recorder = _Recorder(layers, granularity, magnitude, memory_mb, per_sample=True, model=model)
    recorder.strict_norms = all_layers
    recorder.batch = images.shape[0]
    with torch.enable_grad(), frozen_parameters(model), recorder.attached():
        x = images if create_graph else images.detach()
        logits = model(x)
        losses = check_losses(loss(logits, targets), images.shape[0])
        inputs = ([x] if create_graph else []) + recorder.leaves
        if inputs and losses.requires_grad:  # else no profiled layer ran: zero profiles
            torch.autograd.grad(losses.sum(), inputs, create_graph=create_graph, allow_unused=True)
    profiles = _finish(recorder.totals, layers, granularity, recorder.norm_of, images.shape[0], logits)
    return profiles, (logits if create_graph else logits.detach())


def _unit_params(layer: ProfiledLayer, granularity: str, norm: _BatchNorm | None) -> list[torch.Tensor]:
    params = [layer.module.weight]
    if granularity == "unit":
        if layer.module.bias is not None:
            params.append(layer.module.bias)
        if norm is not None and norm.affine:
            params += [norm.weight, norm.bias]
    return params


def loop_totals(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss: LossFn,
    layers: Sequence[ProfiledLayer],
    granularity: str = "filter",
    magnitude: Magnitude = ABSOLUTE,
    create_graph: bool = False,
    all_layers: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: per sample, a batch-size-1 forward and ``autograd.grad`` w.r.t. the parameters.

    Same arguments and result as :func:`batched_totals` (no memory budget: nothing is batched).
    """
    rows, all_logits = [], []
    candidates = [p for layer in layers for p in _unit_params(layer, granularity, None)]
    norms = (
        [m for m in model.modules() if isinstance(m, _BatchNorm) and m.affine]
        if granularity == "unit"
        else []
    )
    for i in range(images.shape[0]):
        recorder = _Recorder(layers, granularity, magnitude, 0.0, per_sample=False, model=model)
        recorder.strict_norms = all_layers
        params_needed = candidates + [p for n in norms for p in (n.weight, n.bias)]
        with torch.enable_grad(), _requires_grad(params_needed, True), recorder.attached():
            logits = model(images[i : i + 1])
            losses = check_losses(loss(logits, targets[i : i + 1]), 1)
            per_layer = [
                _unit_params(la, granularity, recorder.norm_of.get(la.name, (None, None))[1]) for la in layers
            ]
            flat = [p for params in per_layer for p in params]
            grads = torch.autograd.grad(losses.sum(), flat, create_graph=create_graph, allow_unused=True)
        totals: dict[str, torch.Tensor] = {}
        it = iter(grads)
        for layer, params in zip(layers, per_layer, strict=True):
            total = None
            for p in params:
                g = next(it)
                g = torch.zeros_like(p) if g is None else g
                part = magnitude.total(g.reshape(g.shape[0], -1), dim=-1)
                total = part if total is None else total + part
            totals[layer.name] = total[None]
        rows.append(_finish(totals, layers, granularity, recorder.norm_of, 1, logits))
        all_logits.append(logits if create_graph else logits.detach())
    return torch.cat(rows), torch.cat(all_logits)


def default_memory_mb(device: torch.device) -> float:
    """Per-layer chunk budget of :func:`batched_totals` when the caller gives none (see the bench)."""
    return 64.0 if device.type == "cpu" else 1024.0
