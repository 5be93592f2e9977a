"""Learning-rate schedules of the ICASC paper's Table 1 that torch does not ship.

Cyclic cosine annealing ("CCA" in Table 1, used for Caltech-256 and PASCAL VOC 2012 "with a cycle of one" over
20 epochs, appendix A.1/A.3) is the schedule of Snapshot Ensembles (Huang et al., 2017): the total budget of
``T`` epochs is cut into ``M`` cycles of ``L = ceil(T / M)`` epochs, and inside each cycle the learning rate
falls from its initial value along half a cosine::

    lr(t) = eta_min + (lr_0 - eta_min) * (1 + cos(pi * (t mod L) / L)) / 2,   t = 0, 1, ... (epochs)

With ``M = 1`` it is a single cosine decay over the whole run (torch's ``CosineAnnealingLR`` with
``T_max = T``); with ``M > 1`` the rate jumps back to ``lr_0`` at epochs ``L, 2L, ...`` (warm restarts).

The schedule is epoch-wise: :class:`~icasc.models.ICASCModule` hands schedulers to Lightning with
``interval="epoch"``, so ``t`` is the index of the epoch being trained (Lightning steps the scheduler at the
end of every training epoch). Example:

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01, momentum=0.9)
    >>> sched = CyclicCosineAnnealingLR(opt, total_epochs=20, cycles=1)
    >>> [round(g["lr"], 6) for g in opt.param_groups]  # epoch 0
    [0.01]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from icasc.utils import is_int, is_number

__all__ = ["CyclicCosineAnnealingLR", "cycle_length", "cyclic_cosine_factor"]


def _positive_int(name: str, value: Any) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def cycle_length(total_epochs: int, cycles: int = 1) -> int:
    """Epochs per cycle, ``L = ceil(total_epochs / cycles)`` (Snapshot Ensembles' cycle length).

    Args:
        total_epochs: The training budget ``T`` in epochs (>= 1).
        cycles: The number of cosine cycles ``M`` in it (1 <= M <= T).

    Returns:
        ``L``; when ``M`` does not divide ``T`` the last cycle is cut short at epoch ``T``.

    Raises:
        ValueError: If either is not a positive integer or ``cycles > total_epochs``.
    """
    total_epochs = _positive_int("total_epochs", total_epochs)
    cycles = _positive_int("cycles", cycles)
    if cycles > total_epochs:
        raise ValueError(
            f"cycles={cycles} does not fit into total_epochs={total_epochs}: a cycle needs at least one "
            "epoch; lower model.scheduler.cycles or raise trainer.max_epochs"
        )
    return math.ceil(total_epochs / cycles)


def cyclic_cosine_factor(epoch: int, total_epochs: int, cycles: int = 1) -> float:
    """The cyclic cosine annealing factor ``(1 + cos(pi * (epoch mod L) / L)) / 2`` in ``(0, 1]``.

    ICASC Table 1 "CCA" (Caltech-256, VOC 2012: one cycle over 20 epochs), after Snapshot Ensembles' Eq. 2:
    the learning rate of epoch ``epoch`` is ``eta_min + (lr_0 - eta_min) * factor``.

    Args:
        epoch: 0-based index of the epoch being trained (>= 0). Past ``total_epochs`` the cycles continue
            periodically (Lightning steps once more after the last epoch).
        total_epochs: The training budget ``T`` in epochs.
        cycles: Number of cycles ``M``; each restarts at the full learning rate.

    Returns:
        The factor: 1 at the first epoch of every cycle, falling towards 0 at its end.

    Raises:
        ValueError: If ``epoch`` is negative or not an integer, or ``total_epochs``/``cycles`` are invalid
            (see :func:`cycle_length`).
    """
    length = cycle_length(total_epochs, cycles)
    if not is_int(epoch) or epoch < 0:
        raise ValueError(f"epoch must be an integer >= 0 (0 = the first epoch), got {epoch!r}")
    return 0.5 * (1.0 + math.cos(math.pi * (int(epoch) % length) / length))


class CyclicCosineAnnealingLR(LRScheduler):
    """Cyclic cosine annealing (ICASC Table 1 "CCA"), stepped once per epoch.

    Every parameter group's rate is ``eta_min + (base_lr - eta_min) * cyclic_cosine_factor(epoch, ...)``.
    The state (``last_epoch``, settings) is saved in Lightning checkpoints: resumed runs continue the cycle.

    Args:
        optimizer: The wrapped optimizer; its groups' ``lr`` are the cycles' initial rates.
        total_epochs: The training budget ``T`` in epochs (the preset's ``trainer.max_epochs``).
        cycles: Number of cycles ``M`` (the paper: 1).
        eta_min: The floor the cosine falls towards (absolute, as in torch's ``CosineAnnealingLR``); must not
            exceed any group's initial rate.
        last_epoch: Index of the last epoch when resuming (-1: start).

    Raises:
        ValueError: For invalid ``total_epochs``/``cycles`` (see :func:`cycle_length`) or an ``eta_min``
            that is negative or above a group's learning rate.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_epochs: int,
        cycles: int = 1,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.cycle_length = cycle_length(total_epochs, cycles)
        self.total_epochs = int(total_epochs)
        self.cycles = int(cycles)
        if not is_number(eta_min) or eta_min < 0:
            raise ValueError(f"eta_min must be a number >= 0, got {eta_min!r}")
        for i, group in enumerate(optimizer.param_groups):
            lr = group.get("initial_lr", group["lr"])
            if eta_min > lr:
                raise ValueError(
                    f"eta_min={eta_min} is above the learning rate {lr} of parameter group {i}: the cosine "
                    "would rise; set model.scheduler.eta_min below model.optimizer.lr"
                )
        self.eta_min = float(eta_min)
        super().__init__(optimizer, last_epoch)

    def _rates(self, epoch: int) -> list[float]:
        factor = cyclic_cosine_factor(epoch, self.total_epochs, self.cycles)
        return [self.eta_min + (base - self.eta_min) * factor for base in self.base_lrs]

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Rates of the current epoch (closed form, so restarts and resumes are exact)."""
        return self._rates(max(self.last_epoch, 0))

    def _get_closed_form_lr(self) -> list[float]:
        return self._rates(max(self.last_epoch, 0))
