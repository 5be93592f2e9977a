"""The saliency benchmark's report on a tiny network (keys, types, agreement; never timing)."""

from __future__ import annotations

import json

import pytest
import torch

from icasc.bench.__main__ import main
from icasc.bench.saliency import saliency_benchmark

KEYS = {"batched_ips", "per_image_ips", "speedup", "max_abs_diff", "batched_s", "per_image_s"}


def test_groupcam_report() -> None:
    # float64: float32 rounding alone puts Group-CAM's batched/per-image gap near 1e-5 on a random network
    # (convolution kernels differ with the batch size); in float64 any gap above 1e-5 is a real bug.
    report = saliency_benchmark(
        backbone="tiny_cnn",
        image_size=32,
        batch_size=2,
        repeats=1,
        warmup=0,
        methods=("groupcam",),
        dtype=torch.float64,
    )
    assert list(report) == ["groupcam"]
    entry = report["groupcam"]
    assert set(entry) == KEYS | {"essential_s", "essential_ratio", "chunk_size"}
    assert all(isinstance(v, float) for k, v in entry.items() if k != "chunk_size")
    assert isinstance(entry["chunk_size"], int) and entry["chunk_size"] >= 1
    assert entry["batched_ips"] > 0 and entry["per_image_ips"] > 0 and entry["essential_ratio"] > 0
    assert entry["speedup"] == pytest.approx(entry["batched_ips"] / entry["per_image_ips"])
    assert entry["max_abs_diff"] < 1e-5


def test_cli_prints_the_report_as_its_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["saliency", "--backbone", "tiny_cnn", "--image-size", "32", "--batch-size", "2"]
    argv += ["--repeats", "1", "--warmup", "0", "--methods", "gradcam,smoothgrad,groupcam"]
    main([*argv, "--smoothgrad-samples", "2"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads(last)
    assert list(report) == ["gradcam", "smoothgrad", "groupcam"]
    assert set(report["gradcam"]) == set(report["smoothgrad"]) == KEYS
    assert report["gradcam"]["max_abs_diff"] < 1e-5 and report["smoothgrad"]["max_abs_diff"] < 1e-5
    assert report["groupcam"]["max_abs_diff"] < 1e-4  # float32 rounding, see test_groupcam_report


def test_unknown_method_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown saliency methods.*groupcam"):
        saliency_benchmark(backbone="tiny_cnn", image_size=32, batch_size=1, methods=("gradcam_pp",))
