"""Train a classifier with ICASC attention supervision (or the baseline): `python train.py --help`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from icasc.tasks.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    result = run(cfg)
    # Sweepers (Optuna) optimise the returned value.
    value = result["metrics"].get(cfg.get("optimized_metric"))
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
