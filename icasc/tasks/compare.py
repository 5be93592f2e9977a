"""The Hydra side of ``python -m icasc.compare``: compose ``conf/train.yaml`` per run and run the train task.

The runs are in-process (Hydra's compose API + :func:`icasc.tasks.train.run`), not ``python train.py``
subprocesses: ``run`` returns the best checkpoint's metrics as a dict (no parsing of printed tables), a run
costs no interpreter and torch start-up, and the tests can drive the same code. Each run is isolated where it
matters: the train task re-seeds everything and builds a fresh datamodule, model and trainer.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

__all__ = ["check", "compose_train", "default_config_dir", "quoted", "score", "train"]


def default_config_dir() -> Path:
    """The repository's ``conf/`` (next to the ``icasc`` package)."""
    return Path(__file__).resolve().parents[2] / "conf"


def quoted(path: Path | str) -> str:
    """``path`` as a quoted Hydra override value: spaces, ``=`` and commas in folder names stay literal."""
    return "'" + str(path).replace("'", "\\'") + "'"


def compose_train(config_dir: Path, overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides``, writing to ``output_dir``."""
    # (importing icasc.tasks, this module's package, registered the resolvers the configs use)
    # compose needs a fresh global Hydra: a caller (a test, a notebook) may have initialised another one
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, f"paths.output_dir={quoted(output_dir)}"])


def check(config_dir: Path, overrides: Sequence[str], output_dir: Path) -> None:
    """Compose and resolve a run's config, so a typo or a missing required value fails before any training.

    Raises:
        ValueError: The overrides do not compose (unknown key or group, bad syntax) or a value does not
            resolve (e.g. a preset's required ``init_from``); the message is Hydra's or the preset's.
    """
    try:
        cfg = compose_train(config_dir, overrides, output_dir)
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # Hydra raises several unrelated exception types for bad overrides
        raise ValueError(f"{type(err).__name__}: {err}".strip()) from err


def _run(config_dir: Path, overrides: Sequence[str], output_dir: Path) -> dict[str, Any]:
    from icasc.tasks.train import run

    cfg = compose_train(config_dir, overrides, output_dir)
    # the train task's summary table goes to stderr: stdout carries the comparison's tables and JSON
    with contextlib.redirect_stdout(sys.stderr):
        result = run(cfg)
    metrics = {
        k: float(v)
        for k, v in result["metrics"].items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return {"metrics": metrics, "best_checkpoint": result["outputs"].get("best checkpoint")}


def train(
    config_dir: Path, overrides: Sequence[str], output_dir: Path, resume: Path | None = None
) -> dict[str, Any]:
    """Train one run (or continue it from ``resume``, its ``last.ckpt``) and score its best checkpoint.

    Returns:
        ``{"metrics": {name: float}, "best_checkpoint": path or None}``.
    """
    extra = [f"ckpt_path={quoted(resume)}"] if resume else []
    return _run(config_dir, [*overrides, *extra], output_dir)


def score(config_dir: Path, overrides: Sequence[str], output_dir: Path, checkpoint: Path) -> dict[str, Any]:
    """Score a finished run's best checkpoint without training (``train=false``; no log rows are added).

    Returns:
        As :func:`train`.
    """
    extra = ["train=false", f"ckpt_path={quoted(checkpoint)}", "logger=none"]
    return _run(config_dir, [*overrides, *extra], output_dir)
