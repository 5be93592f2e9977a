"""icasc's entry point: `python train.py` trains; `-cn explain ...` explains; `-cn export ...` exports."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from icasc.tasks import explain, export, train

TASKS = {"train": train.run, "explain": explain.run, "export": export.run}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if cfg.task_name not in TASKS:
        raise ValueError(f"unknown task_name {cfg.task_name!r}; choose one of {sorted(TASKS)}")
    result = TASKS[cfg.task_name](cfg)
    # Sweepers (Optuna) optimise the returned value.
    value = result.get("metrics", {}).get(cfg.get("optimized_metric"))
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
