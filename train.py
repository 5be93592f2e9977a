"""icasc's entry point: `python train.py` trains; `-cn eval|explain|export|param_saliency` run the rest.

The config's ``task`` key chooses the task (each config sets its own); ``task_name`` only names the output
folder, ``outputs/<task_name>/...``, so ``python train.py -cn eval task_name=my_eval ...`` still evaluates.
"""

from __future__ import annotations

import importlib

import hydra
from omegaconf import DictConfig

import icasc.tasks  # noqa: F401  (registers the OmegaConf resolvers the configs use, before composing)

# task -> the module whose run(cfg) does the work; imported on demand so one task's imports stay its own
TASKS = {
    "train": "icasc.tasks.train",
    "eval": "icasc.tasks.evaluate",
    "explain": "icasc.tasks.explain",
    "export": "icasc.tasks.export",
    "param_saliency": "icasc.tasks.param_saliency",
}


def task_module(task: object) -> str:
    """The module that runs ``task`` (the config's ``task`` key).

    Raises:
        ValueError: ``task`` is not one of :data:`TASKS`; the message lists them.
    """
    if task not in TASKS:
        raise ValueError(
            f"unknown task {task!r}: the config's `task` key must be one of {', '.join(TASKS)} "
            "(each of conf/{train,eval,explain,export,param_saliency}.yaml sets its own; task_name only names "
            "the output folder)"
        )
    return TASKS[task]


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    result = importlib.import_module(task_module(cfg.get("task"))).run(cfg)
    # Sweepers (Optuna) optimise the returned value.
    value = result.get("metrics", {}).get(cfg.get("optimized_metric"))
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
