"""Shared fixtures: compose the real Hydra configs with overrides that make runs tiny."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import icasc.tasks  # noqa: F401  (registers the configs' resolvers)
from tests import fakedata

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A run of a few steps on a small synthetic split: seconds on a CPU.
TINY = [
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "figure.num_images=2",
]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def compose_config(name: str, overrides: Sequence[str] = (), output_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/<name>.yaml`` as ``python train.py -cn <name>`` would, with ``overrides``."""
    GlobalHydra.instance().clear()
    extra = list(overrides)
    if output_dir is not None:
        extra.append(f"paths.output_dir={output_dir}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=extra)


def compose_train(
    overrides: Sequence[str] = (), output_dir: Path | None = None, tiny: bool = True
) -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides`` (after the TINY ones unless ``tiny=False``)."""
    return compose_config("train", [*(TINY if tiny else []), *overrides], output_dir)


@pytest.fixture
def train_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        return compose_train(overrides, tmp_path, tiny)

    return make


@pytest.fixture(scope="session")
def fake_roots(tmp_path_factory):
    """Write each fake dataset once, on first use."""
    cache: dict[str, tuple[Path, list[str]]] = {}

    def get(dataset: str) -> tuple[Path, list[str]]:
        if dataset not in cache:
            cache[dataset] = fakedata.FAKE_DATASETS[dataset](tmp_path_factory.mktemp(dataset))
        return cache[dataset]

    return get
