"""The KS statistic of ICASC Fig. 9: hand-computed values, scipy's ks_2samp, accumulation, DDP reduction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from icasc.metrics import (
    KSSign,
    KSStatistic,
    KSThreshold,
    ecdf,
    ks_curves,
    ks_statistic,
    most_confused,
    true_and_confused_probabilities,
)


def _brute_force(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """sup |F_a - F_b| by counting at every sample point, and the smallest point attaining it."""
    points = np.unique(np.concatenate([a, b]))
    gaps = np.array([abs((a <= x).mean() - (b <= x).mean()) for x in points])
    best = gaps.max()
    return float(best), float(points[np.flatnonzero(gaps == best)[0]])


def test_hand_computed_example_with_a_tie():
    # sorted points 0.1 0.2 0.3 0.6 0.7 0.8 0.9 (0.2 in both samples)
    # F_target   0   1/4 1/4 2/4 2/4 3/4 1
    # F_confused 1/4 2/4 3/4 3/4 1   1   1
    # gap        1/4 1/4 2/4 1/4 2/4 1/4 0   -> 0.5, first reached at 0.3
    target = torch.tensor([0.9, 0.2, 0.8, 0.6], dtype=torch.float64)
    confused = torch.tensor([0.3, 0.1, 0.7, 0.2], dtype=torch.float64)
    statistic, threshold = ks_statistic(target, confused)
    assert float(statistic) == 0.5 and float(threshold) == 0.3
    curves = ks_curves(target, confused)
    assert curves["x"].tolist() == [0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9]
    assert curves["target"].tolist() == [0, 0.25, 0.25, 0.5, 0.5, 0.75, 1]
    assert curves["confused"].tolist() == [0.25, 0.5, 0.75, 0.75, 1, 1, 1]


def test_hand_computed_unequal_sizes_and_repeated_values():
    # x: 0.1 0.5 0.9; F_target 0 2/3 1; F_confused 1/2 1 1; gaps 1/2 1/3 0
    statistic, threshold = ks_statistic(
        torch.tensor([0.5, 0.5, 0.9], dtype=torch.float64), torch.tensor([0.1, 0.5], dtype=torch.float64)
    )
    assert float(statistic) == 0.5 and float(threshold) == 0.1
    assert ecdf(torch.tensor([0.5, 0.5, 0.9]), torch.tensor([0.0, 0.5, 0.7, 0.9])).tolist() == [
        0.0,
        2 / 3,
        2 / 3,
        1.0,
    ]


def test_identical_samples_give_zero_and_disjoint_samples_give_one():
    x = torch.tensor([0.1, 0.4, 0.4, 0.8])
    assert float(ks_statistic(x, x.flip(0))[0]) == 0.0
    statistic, threshold = ks_statistic(torch.tensor([0.7, 0.9]), torch.tensor([0.1, 0.2, 0.3]))
    assert float(statistic) == 1.0 and float(threshold) == pytest.approx(0.3)


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_scipy_ks_2samp_including_ties(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 60, size=2)
    if seed % 2:  # coarse grid: many ties within and across the samples
        a, b = rng.integers(0, 8, n) / 8, rng.integers(0, 8, m) / 8
    else:
        a, b = rng.beta(4, 2, n), rng.beta(2, 4, m)
    statistic, threshold = ks_statistic(torch.from_numpy(a), torch.from_numpy(b))
    reference = ks_2samp(a, b)
    assert float(statistic) == pytest.approx(reference.statistic, abs=1e-12)
    assert (float(statistic), float(threshold)) == pytest.approx(_brute_force(a, b), abs=1e-12)
    # where the supremum is attained once, scipy's location is the same point
    gaps = np.abs(
        (a[:, None] <= np.unique(np.r_[a, b])).mean(0) - (b[:, None] <= np.unique(np.r_[a, b])).mean(0)
    )
    if (np.abs(gaps - gaps.max()) < 1e-12).sum() == 1:
        assert float(threshold) == reference.statistic_location


def test_true_and_confused_probabilities_single_label():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.25, 0.5]])
    true_p, confused_p = true_and_confused_probabilities(probs, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(true_p, torch.tensor([0.7, 0.3, 0.5]))
    torch.testing.assert_close(confused_p, torch.tensor([0.2, 0.6, 0.25]))


def test_true_and_confused_probabilities_multi_label_pairs_each_positive_with_the_top_negative():
    probs = torch.tensor(
        [[0.9, 0.2, 0.6, 0.1], [0.8, 0.7, 0.1, 0.3], [0.5, 0.5, 0.5, 0.5], [0.3, 0.4, 0.9, 0.8]]
    )
    targets = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]])
    true_p, confused_p = true_and_confused_probabilities(probs, targets.float())
    # image 0: classes 0 and 2 vs 0.2; image 1 has no positive, image 2 no negative; image 3: class 1 vs 0.9
    torch.testing.assert_close(true_p, torch.tensor([0.9, 0.6, 0.4]))
    torch.testing.assert_close(confused_p, torch.tensor([0.2, 0.2, 0.9]))


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric KSStatistic")
def test_bad_input_is_named():
    with pytest.raises(ValueError, match="not logits"):
        true_and_confused_probabilities(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        true_and_confused_probabilities(torch.tensor([[0.5, 0.5]]), torch.tensor([2]))
    with pytest.raises(ValueError, match="multi-hot"):
        true_and_confused_probabilities(torch.tensor([[0.5, 0.5]]), torch.tensor([[1, 0, 0]]))
    with pytest.raises(ValueError, match="empty"):
        ks_statistic(torch.tensor([]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="NaN"):
        ks_statistic(torch.tensor([float("nan")]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="before any sample"):
        KSStatistic().compute()


def _batches(seed: int, sizes=(7, 1, 12, 5), classes: int = 6):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, classes, generator=g).mul(2).softmax(dim=1),
            torch.randint(0, classes, (n,), generator=g),
        )
        for n in sizes
    ]


def test_metric_accumulating_updates_equals_one_shot():
    batches = _batches(0)
    metric = KSStatistic()
    for probs, targets in batches:
        metric.update(probs, targets)
    probs = torch.cat([p for p, _ in batches])
    targets = torch.cat([t for _, t in batches])
    result = metric.compute_details()
    statistic, threshold = ks_statistic(*true_and_confused_probabilities(probs, targets))
    assert float(result["statistic"]) == float(statistic) and float(result["threshold"]) == float(threshold)
    true_p, confused_p = true_and_confused_probabilities(probs, targets)
    torch.testing.assert_close(result["true_probs"], true_p)
    torch.testing.assert_close(result["confused_probs"], confused_p)
    assert float(result["statistic"]) == pytest.approx(ks_2samp(true_p.numpy(), confused_p.numpy()).statistic)
    metric.reset()
    metric.update(*batches[0])
    assert float(metric.compute_details()["statistic"]) == float(
        ks_statistic(*true_and_confused_probabilities(*batches[0]))[0]
    )


@pytest.mark.parametrize("seed", [0, 3])
def test_compute_is_a_loggable_scalar_and_the_threshold_and_sign_metrics_agree(seed):
    """``compute`` gives the statistic alone; KSThreshold and KSSign compute the other values of the dict."""
    metrics = {"ks": KSStatistic(), "ks_threshold": KSThreshold(), "ks_sign": KSSign()}
    for probs, targets in _batches(seed):
        for metric in metrics.values():
            metric.update(probs, targets)
    details = metrics["ks"].compute_details()
    values = {name: metric.compute() for name, metric in metrics.items()}
    assert all(value.dim() == 0 for value in values.values())
    assert values["ks"].dtype == values["ks_threshold"].dtype == torch.float64
    assert float(values["ks"]) == float(details["statistic"])
    assert float(values["ks_threshold"]) == float(details["threshold"])
    assert values["ks_sign"].item() == details["sign"] and isinstance(values["ks_sign"].item(), int)
    for metric in metrics.values():
        metric.reset()
        with pytest.raises(ValueError, match="before any sample"):
            metric.compute_details()


def test_merged_states_of_two_processes_equal_the_metric_on_the_concatenation():
    """DDP's reduction: the ``cat`` states of two ranks merged give the statistic of all samples."""
    rank0, rank1 = KSStatistic(), KSStatistic()
    for probs, targets in _batches(1):
        rank0.update(probs, targets)
    for probs, targets in _batches(2, sizes=(3, 9)):
        rank1.update(probs, targets)
    rank0.merge_state(rank1)
    everything = KSStatistic()
    for probs, targets in [*_batches(1), *_batches(2, sizes=(3, 9))]:
        everything.update(probs, targets)
    merged, expected = rank0.compute_details(), everything.compute_details()
    assert float(merged["statistic"]) == float(expected["statistic"])
    assert float(merged["threshold"]) == float(expected["threshold"])
    # the statistic of the union is not the mean of the parts' (why the states are samples, not values)
    parts = [
        float(
            ks_statistic(
                *true_and_confused_probabilities(torch.cat([p for p, _ in b]), torch.cat([t for _, t in b]))
            )[0]
        )
        for b in (_batches(1), _batches(2, sizes=(3, 9)))
    ]
    assert float(expected["statistic"]) != pytest.approx(sum(parts) / 2)


def _gloo_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        metric = KSStatistic()
        for probs, targets in _batches(1) if rank == 0 else _batches(2, sizes=(3, 9)):
            metric.update(probs, targets)
        result = metric.compute_details()  # gathers both processes' samples
        torch.save({k: result[k] for k in ("statistic", "threshold")}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_real_two_process_gloo_reduction_equals_the_concatenation(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    everything = KSStatistic()
    for probs, targets in [*_batches(1), *_batches(2, sizes=(3, 9))]:
        everything.update(probs, targets)
    expected = everything.compute_details()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert float(got["statistic"]) == float(expected["statistic"])
        assert float(got["threshold"]) == float(expected["threshold"])


def test_most_confused_orders_by_margin_single_and_multi_label():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.45, 0.1, 0.45], [0.1, 0.1, 0.8]])
    # margins: 0.6-0.3=0.3, 0.2-0.7=-0.5 (label 0), 0.45-0.45=0 (label 2), 0.8-0.1=0.7
    chosen = most_confused(probs, torch.tensor([0, 0, 2, 2]), k=3)
    assert chosen["index"].tolist() == [1, 2, 0]
    assert chosen["true_class"].tolist() == [0, 2, 0] and chosen["confused_class"].tolist() == [1, 0, 1]
    torch.testing.assert_close(chosen["margin"], torch.tensor([-0.5, 0.0, 0.3]))
    multi = torch.tensor([[0.9, 0.8, 0.2], [0.3, 0.9, 0.6], [0.7, 0.6, 0.5]])
    targets = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    # image 0: least probable positive 0.8 (class 1) vs top negative 0.2 -> 0.6; image 1: 0.3 vs 0.9 -> -0.6;
    # image 2 has no negative class: not a candidate, even with k larger than the candidates
    chosen = most_confused(multi, targets, k=5)
    assert chosen["index"].tolist() == [1, 0]
    assert chosen["true_class"].tolist() == [0, 1] and chosen["confused_class"].tolist() == [1, 2]
    torch.testing.assert_close(chosen["margin"], torch.tensor([-0.6, 0.6]))
