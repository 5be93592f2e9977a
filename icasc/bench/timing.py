"""What every benchmark shares: interleaved medians, device synchronisation, the timed training step."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from icasc.losses.icasc import ICASCLoss
from icasc.models.module import ICASCModule

__all__ = ["baseline_loss", "device_sync", "interleaved_medians", "run_info", "sgd_step", "tf32_state"]


def interleaved_medians(
    sides: dict[str, Callable[[], None]], repeats: int, warmup: int, sync: Callable[[], None] | None = None
) -> dict[str, float]:
    """Median seconds per call of each side, run interleaved (order alternating every round).

    Args:
        sides: Name -> function of no arguments to time.
        repeats: Timed rounds; each runs every side once, the order reversed every other round.
        warmup: Untimed rounds first.
        sync: Called before starting and before stopping each clock (e.g. ``torch.cuda.synchronize``).

    Returns:
        Name -> median seconds per call.
    """
    sync = sync or (lambda: None)
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            sync()
            start = time.perf_counter()
            sides[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def device_sync(device: torch.device) -> Callable[[], None] | None:
    """The ``sync`` of :func:`interleaved_medians` for ``device``: CUDA's synchronize, else ``None``."""
    return torch.cuda.synchronize if device.type == "cuda" else None


def tf32_state(device: torch.device) -> dict[str, bool] | None:
    """Whether CUDA may round convolutions / matrix products to TF32 (``None`` off CUDA).

    PyTorch lets cuDNN convolutions use TF32 by default, which on Ampere and later GPUs makes two
    float32 paths that agree to ~1e-6 differ by ~1e-2 (measured on an H200; README): the reports
    record the state so that a gap can be read as rounding rather than disagreement.
    """
    if device.type != "cuda":
        return None
    return {
        "conv": bool(torch.backends.cudnn.allow_tf32),
        "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
    }


def run_info(device: torch.device) -> dict[str, object]:
    """Where a report was measured: ``device``, CPU ``threads``, the ``torch`` version and ``tf32``."""
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tf32": tf32_state(device),
    }


def baseline_loss() -> ICASCLoss:
    """:class:`ICASCLoss` with the three attention terms off: cross-entropy alone, the baseline's loss."""
    return ICASCLoss(weights={"separation_inner": 0.0, "separation_last": 0.0, "consistency": 0.0})


def sgd_step(module: ICASCModule, targets: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """A training step of ``module`` on given images and ``targets``: forward, loss, backward, SGD step.

    Args:
        module: The model, already on its device and in the mode it should be timed in.
        targets: ``[B]`` classes of every batch the step will see.

    Returns:
        A function of the ``[B, 3, H, W]`` images.
    """
    opt = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9)

    def step(images: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        total, _, _ = module.compute_loss(images, targets)
        total.backward()
        opt.step()

    return step
