"""The parameter-saliency benchmark's report on a tiny network (keys, agreement; never timing)."""

from __future__ import annotations

import json

import pytest
import torch

from icasc.bench.__main__ import main
from icasc.bench.param_saliency import param_saliency_benchmark, relative_difference

KEYS = {"batched_ips", "loop_ips", "speedup", "max_rel_diff"}


def test_report_of_a_tiny_backbone() -> None:
    report = param_saliency_benchmark(
        backbone="tiny_cnn", image_size=16, batch_size=3, num_classes=5, repeats=1, warmup=0, memory_mb=0.01
    )
    assert set(report) >= KEYS
    assert all(isinstance(report[k], float) and report[k] > 0 for k in ("batched_ips", "loop_ips", "speedup"))
    assert report["speedup"] == pytest.approx(report["batched_ips"] / report["loop_ips"])
    assert report["max_rel_diff"] < 1e-4
    assert report["n_filters"] == 16 + 32 + 32 + 64 + 64 and report["memory_mb"] == 0.01


def test_cli_prints_the_report_as_its_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["param-saliency", "--backbone", "tiny_cnn", "--image-size", "16", "--batch-size", "2"]
    main([*argv, "--num-classes", "4", "--repeats", "1", "--warmup", "0", "--granularity", "unit"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report) >= KEYS and report["granularity"] == "unit"
    assert report["n_filters"] == 16 + 32 + 32 + 64 + 64 + 4 and report["max_rel_diff"] < 1e-4


def test_relative_difference_is_per_sample_and_layer() -> None:
    reference = torch.tensor([[1.0, 2.0, 1e-3, 0.0], [4.0, 1.0, 0.0, 0.0]])
    other = reference + torch.tensor([[0.0, 0.02, 1e-6, 0.0], [0.0, 0.0, 0.0, 0.0]])
    slices = {"a": slice(0, 2), "b": slice(2, 4)}
    assert relative_difference(other, reference, slices) == pytest.approx(1e-2)
    assert relative_difference(reference, reference, slices) == 0.0
