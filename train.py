"""icasc's entry point: `python train.py` trains; `-cn eval|explain|export|param_saliency` run the rest."""

from __future__ import annotations

import importlib

import hydra
from omegaconf import DictConfig

import icasc.tasks  # noqa: F401  (registers the OmegaConf resolvers the configs use, before composing)

# task_name -> the module whose run(cfg) does the work; imported on demand so one task's imports stay its own
TASKS = {
    "train": "icasc.tasks.train",
    "eval": "icasc.tasks.evaluate",
    "explain": "icasc.tasks.explain",
    "export": "icasc.tasks.export",
    "param_saliency": "icasc.tasks.param_saliency",
}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if cfg.task_name not in TASKS:
        raise ValueError(f"unknown task_name {cfg.task_name!r}; choose one of {sorted(TASKS)}")
    result = importlib.import_module(TASKS[cfg.task_name]).run(cfg)
    # Sweepers (Optuna) optimise the returned value.
    value = result.get("metrics", {}).get(cfg.get("optimized_metric"))
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
