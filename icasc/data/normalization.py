"""Per-channel normalisation statistics of the standard datasets (RGB, images in ``[0, 1]``).

``data/`` owns them: datamodules normalise with them, and the model registry quotes them as a backbone's
input defaults. This module imports nothing from icasc, so any room can import it without a cycle.
"""

from __future__ import annotations

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
