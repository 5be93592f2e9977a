"""Cyclic cosine annealing (ICASC Table 1 "CCA") and the paper presets' learning-rate schedules, per epoch."""

from __future__ import annotations

import csv
import itertools
import math

import pytest
import torch
from hydra.utils import instantiate

from icasc.models.schedulers import CyclicCosineAnnealingLR, cycle_length, cyclic_cosine_factor
from icasc.tasks.train import run
from tests.conftest import compose_train


def _optimizer(*lrs: float) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)


def _epoch_lrs(optimizer: torch.optim.Optimizer, scheduler, epochs: int) -> list[list[float]]:
    """The rate of each epoch, stepped as Lightning does with interval="epoch" (after each epoch)."""
    rates = []
    for _ in range(epochs):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return rates


# ------------------------------------------------------------------------------------------- the formula


@pytest.mark.parametrize(
    "epoch, total, cycles, expected",
    [
        (0, 20, 1, 1.0),
        (10, 20, 1, 0.5),  # half-way through the cycle: cos(pi/2) = 0
        (5, 20, 1, (1 + math.sqrt(0.5)) / 2),  # cos(pi/4)
        (15, 20, 1, (1 - math.sqrt(0.5)) / 2),  # cos(3pi/4)
        (19, 20, 1, (1 + math.cos(math.pi * 19 / 20)) / 2),
        (1, 6, 2, 0.75),  # L = 3: cos(pi/3) = 1/2
        (2, 6, 2, 0.25),  # cos(2pi/3) = -1/2
        (3, 6, 2, 1.0),  # restart
        (6, 6, 2, 1.0),  # past the budget the cycles continue
        (4, 7, 2, 1.0),  # L = ceil(7/2) = 4
        (6, 7, 2, 0.5),
        (0, 1, 1, 1.0),
    ],
)
def test_cyclic_cosine_factor_hand_values(epoch, total, cycles, expected):
    assert cyclic_cosine_factor(epoch, total, cycles) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("total, cycles, length", [(20, 1, 20), (20, 4, 5), (7, 2, 4), (10, 3, 4), (5, 5, 1)])
def test_cycle_length_is_ceil(total, cycles, length):
    assert cycle_length(total, cycles) == length


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epoch": 0, "total_epochs": 0}, "total_epochs must be an integer >= 1"),
        ({"epoch": 0, "total_epochs": 2.5}, "total_epochs must be an integer >= 1"),
        ({"epoch": 0, "total_epochs": 10, "cycles": 0}, "cycles must be an integer >= 1"),
        ({"epoch": 0, "total_epochs": 10, "cycles": True}, "cycles must be an integer >= 1"),
        ({"epoch": 0, "total_epochs": 3, "cycles": 4}, "cycles=4 does not fit into total_epochs=3"),
        ({"epoch": -1, "total_epochs": 10}, "epoch must be an integer >= 0"),
        ({"epoch": 1.5, "total_epochs": 10}, "epoch must be an integer >= 0"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cyclic_cosine_factor(**kwargs)


# ----------------------------------------------------------------------------------------- the scheduler


def test_scheduler_rates_per_group_and_restarts():
    opt = _optimizer(0.1, 0.01)
    sched = CyclicCosineAnnealingLR(opt, total_epochs=8, cycles=2, eta_min=0.001)
    rates = _epoch_lrs(opt, sched, 8)
    for epoch, (a, b) in enumerate(rates):
        f = cyclic_cosine_factor(epoch, 8, 2)
        assert a == pytest.approx(0.001 + (0.1 - 0.001) * f)
        assert b == pytest.approx(0.001 + (0.01 - 0.001) * f)
    firsts = [r[0] for r in rates]
    assert firsts[0] == firsts[4] == pytest.approx(0.1)  # the second cycle restarts at epoch L = 4
    assert firsts[0] > firsts[1] > firsts[2] > firsts[3] and firsts[4] > firsts[5] > firsts[6] > firsts[7]
    assert firsts[2] == pytest.approx(0.001 + 0.099 * 0.5)  # mid-cycle


def test_one_cycle_is_torch_cosine_annealing():
    # The paper's "cycle of one" is a single cosine decay: torch's CosineAnnealingLR with T_max = T.
    opt_a, opt_b = _optimizer(0.01), _optimizer(0.01)
    ours = _epoch_lrs(opt_a, CyclicCosineAnnealingLR(opt_a, total_epochs=20, cycles=1), 20)
    torch_cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt_b, T_max=20)
    theirs = _epoch_lrs(opt_b, torch_cos, 20)
    for a, b in zip(ours, theirs, strict=True):
        assert a[0] == pytest.approx(b[0], rel=1e-9, abs=1e-15)


def test_state_dict_resumes_mid_cycle():
    opt = _optimizer(0.1)
    sched = CyclicCosineAnnealingLR(opt, total_epochs=9, cycles=3)
    full = _epoch_lrs(opt, sched, 9)

    opt2 = _optimizer(0.1)
    first = CyclicCosineAnnealingLR(opt2, total_epochs=9, cycles=3)
    head = _epoch_lrs(opt2, first, 4)
    state = first.state_dict()
    opt3 = _optimizer(0.1)
    resumed = CyclicCosineAnnealingLR(opt3, total_epochs=9, cycles=3)
    resumed.load_state_dict(state)
    for group, lr in zip(opt3.param_groups, resumed.get_last_lr(), strict=True):
        group["lr"] = lr  # Lightning restores the optimizer state too; here by hand
    tail = _epoch_lrs(opt3, resumed, 5)
    assert [r[0] for r in head + tail] == pytest.approx([r[0] for r in full])


def test_scheduler_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"eta_min=0\.5 is above the learning rate 0\.1"):
        CyclicCosineAnnealingLR(_optimizer(0.1), total_epochs=10, eta_min=0.5)
    with pytest.raises(ValueError, match=r"eta_min must be a number >= 0"):
        CyclicCosineAnnealingLR(_optimizer(0.1), total_epochs=10, eta_min=-1.0)
    with pytest.raises(ValueError, match=r"lower model\.scheduler\.cycles or raise trainer\.max_epochs"):
        CyclicCosineAnnealingLR(_optimizer(0.1), total_epochs=2, cycles=3)


# ------------------------------------------------------------------------------- the composed presets

# (preset, epochs, {first epoch of a new rate: the rate}) of the multi-step rows of Table 1
MULTISTEP = [
    ("cifar100/resnet110_icasc_ach", 160, {0: 0.1, 81: 0.01, 122: 0.001}),
    ("cifar100/resnet110_baseline", 160, {0: 0.1, 81: 0.01, 122: 0.001}),
    ("imagenet/resnet18_icasc_ach", 90, {0: 0.1, 30: 0.01, 60: 0.001}),
    ("imagenet/resnet18_tencrop_baseline", 90, {0: 0.1, 30: 0.01, 60: 0.001}),
    ("cub200/resnet50_icasc_ach", 90, {0: 1e-3, 30: 1e-4, 60: 1e-5}),
    ("cub200/resnet101_baseline", 90, {0: 1e-3, 30: 1e-4, 60: 1e-5}),
]


def _preset_schedule(preset: str) -> tuple[int, list[float]]:
    """The preset's optimizer and scheduler, instantiated as ICASCModule.configure_optimizers does."""
    cfg = compose_train([f"experiment={preset}", "data.root=/nonexistent"], tiny=False)
    epochs = int(cfg.trainer.max_epochs)
    opt = instantiate(cfg.model.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    sched = instantiate(cfg.model.scheduler)(opt)
    return epochs, [r[0] for r in _epoch_lrs(opt, sched, epochs)]


@pytest.mark.parametrize("preset, epochs, changes", MULTISTEP)
def test_multistep_milestones_land_on_the_papers_epochs(preset, epochs, changes):
    total, rates = _preset_schedule(preset)
    assert total == epochs
    starts = sorted(changes)
    for epoch, lr in enumerate(rates):
        current = changes[max(s for s in starts if s <= epoch)]
        assert lr == pytest.approx(current, rel=1e-9), f"epoch {epoch}"


@pytest.mark.parametrize(
    "preset", ["caltech256/resnet18_icasc_ach", "caltech256/vgg19_baseline", "voc2012/resnet18_icasc_gradcam"]
)
def test_cyclic_cosine_presets_decay_once_over_20_epochs(preset):
    total, rates = _preset_schedule(preset)
    assert total == 20
    assert rates[0] == pytest.approx(0.01)
    assert rates[10] == pytest.approx(0.005)  # half-way
    assert all(a > b > 0 for a, b in itertools.pairwise(rates))  # one cycle: no restart
    assert rates == pytest.approx([0.01 * cyclic_cosine_factor(e, 20, 1) for e in range(20)])


def test_cycles_follow_the_trainer_epochs_when_overridden():
    cfg = compose_train(
        ["experiment=voc2012/resnet18_icasc_ach", "model.scheduler.cycles=2", "trainer.max_epochs=10"],
        tiny=False,
    )
    opt = instantiate(cfg.model.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    rates = [r[0] for r in _epoch_lrs(opt, instantiate(cfg.model.scheduler)(opt), 10)]
    assert rates[0] == rates[5] == pytest.approx(0.01) and rates[4] < rates[3]


@pytest.mark.slow
def test_lightning_steps_the_cycles_per_epoch(tmp_path):
    """Trained for real: the learning-rate monitor logs the cyclic rates epoch by epoch."""
    cfg = compose_train(
        [
            "model/scheduler=cyclic_cosine",
            "model.scheduler.cycles=2",
            "model.optimizer.lr=0.04",
            "trainer.max_epochs=4",
            "export=false",
            "figure.enabled=false",
        ],
        output_dir=tmp_path,
    )
    run(cfg)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    column = next(k for k in rows[0] if k.startswith("lr-"))
    logged = [float(r[column]) for r in rows if r.get(column)]
    assert logged == pytest.approx([0.04, 0.02, 0.04, 0.02])
