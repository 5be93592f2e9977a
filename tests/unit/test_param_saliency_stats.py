"""Reference statistics of parameter-saliency profiles: streaming moments, files, standardisation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, Dataset

from icasc.saliency import ParameterSaliency, SaliencyStats
from icasc.saliency.parameter import RunningMoments


class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Conv2d(width, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x)))).mean(dim=(2, 3))


class Images(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 3, 6, 6, generator=g)
        self.targets = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "target": self.targets[i]}


def _setup(width: int = 4) -> tuple[nn.Module, Images]:
    torch.manual_seed(0)
    return Net(width), Images(7)


def test_running_moments_equal_torch_mean_and_std_over_unequal_batches() -> None:
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 1e-3, 10.0, 0.0, 1.0], dtype=torch.float64)
    rows = torch.randn(23, 5, generator=g, dtype=torch.float64) * scale + 1e4  # a large offset: stability
    moments = RunningMoments()
    for part in rows.split([1, 9, 0, 4, 2, 7]):
        moments.update(part)
    reference = rows
    assert moments.count == 23
    torch.testing.assert_close(moments.mean, reference.mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(moments.std(), reference.std(0), rtol=1e-9, atol=1e-12)
    assert moments.std()[3] == 0
    with pytest.raises(ValueError, match="at least 2 profiles"):
        RunningMoments().std()
    with pytest.raises(ValueError, match="4 columns, earlier ones had 5"):
        moments.update(torch.zeros(2, 4))


def test_fit_stats_equals_mean_and_std_of_all_profiles() -> None:
    model, data = _setup()
    ps = ParameterSaliency(model)
    stats = ps.fit_stats(DataLoader(data, batch_size=3))  # batches of 3, 3, 1
    profiles = ps.profile(data.images, data.targets).double()
    assert stats is ps.stats and stats.count == 7 and stats.filters == ps.filters
    torch.testing.assert_close(stats.mean, profiles.mean(0), rtol=1e-6, atol=0)
    torch.testing.assert_close(stats.std, profiles.std(0), rtol=1e-5, atol=0)  # unbiased, torch's default
    partial = ps.fit_stats(DataLoader(data, batch_size=3), max_batches=2)
    assert partial.count == 6
    with pytest.raises(ValueError, match="at least 2 samples"):
        ps.fit_stats([(data.images[:1], data.targets[:1])])


def test_save_load_round_trip(tmp_path) -> None:
    model, data = _setup()
    ps = ParameterSaliency(model, granularity="unit")
    stats = ps.fit_stats(DataLoader(data, batch_size=4))
    path = stats.save(tmp_path / "stats" / "val.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["layers"]) == [["conv", 4], ["head", 3]] and meta["granularity"] == "unit"
    fresh = ParameterSaliency(model, granularity="unit")
    loaded = fresh.load_stats(path)
    assert fresh.stats is loaded and loaded.count == 7 and loaded.filters == ps.filters
    assert torch.equal(loaded.mean, stats.mean) and torch.equal(loaded.std, stats.std)
    p = ps.profile(data.images, data.targets)
    torch.testing.assert_close(fresh.standardize(p), ps.standardize(p), rtol=0, atol=0)


def test_stats_from_another_model_are_a_clear_error(tmp_path) -> None:
    model, data = _setup()
    path = ParameterSaliency(model).fit_stats([(data.images, data.targets)]).save(tmp_path / "a.safetensors")
    wider, _ = _setup(width=5)
    with pytest.raises(ValueError, match=r"another model .*7 filters there, 8 here.*fit_stats"):
        ParameterSaliency(wider).load_stats(path)
    same_count = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 3, 1))  # 7 filters, other names
    with pytest.raises(ValueError, match=r"column 0 is \('conv', 0\) there and \('0', 0\) here"):
        ParameterSaliency(same_count).load_stats(path)
    with pytest.raises(ValueError, match=r"granularity='filter'.*'unit'"):
        ParameterSaliency(model, granularity="unit", layers=["conv", "head"]).load_stats(path)
    with pytest.raises(FileNotFoundError, match="fit_stats"):
        ParameterSaliency(model).load_stats(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"mean": torch.zeros(7)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a parameter-saliency stats file"):
        SaliencyStats.load(tmp_path / "other.safetensors")


def test_standardize() -> None:
    model, _ = _setup()
    ps = ParameterSaliency(model)
    with pytest.raises(ValueError, match=r"fit_stats\(loader\) or load_stats\(path\)"):
        ps.standardize(torch.zeros(2, 7))
    mean = torch.arange(7, dtype=torch.float64)
    std = torch.tensor([1.0, 2.0, 0.5, 0.0, 4.0, 1.0, 1e-20], dtype=torch.float64)
    ps.set_stats(SaliencyStats(mean, std, 10, ps.filters))
    s = torch.tensor([[1.0, 3.0, 2.0, 5.0, 0.0, 5.0, 7.0]])
    expected = torch.tensor([[1.0, 1.0, 0.0, 2.0, -1.0, 0.0, 1.0]])  # zero/tiny std count as 1
    torch.testing.assert_close(ps.standardize(s), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="6 columns, the stats 7"):
        ps.standardize(torch.zeros(1, 6))
    with pytest.raises(ValueError, match=r"must both be \[7\]"):
        SaliencyStats(mean[:3], std, 10, ps.filters)
