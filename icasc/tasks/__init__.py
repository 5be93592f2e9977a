"""Tasks: ``run(cfg)`` functions behind the entry points (the only library code that sees DictConfig).

Importing this package registers the OmegaConf resolvers the configs use.
"""

import os
from pathlib import Path

from omegaconf import OmegaConf


def _required(message: str) -> None:
    """``${icasc_required:"why"}``: a value a preset needs from the user (fails with ``why`` when read)."""
    raise ValueError(message)


def _score_metric(multilabel: bool) -> str:
    """The checkpoint/sweep metric of the data: mAP for multi-label data, top-1 accuracy otherwise."""
    return "val/map" if multilabel else "val/top1"


def _new_dir(path: str) -> str:
    """``${icasc_new_dir:base}``: create and return ``base``, or ``base_2``, ``base_3``, ... if taken.

    The run folder is named by the start time to the second; two runs started in the same second would share
    it (and overwrite each other's config and metrics). ``mkdir`` without ``exist_ok`` is atomic: of two
    runs, exactly one creates a given name. Registered with ``use_cache``, so a config resolves it once (Hydra
    copies the cache into each job of a sweep).
    """
    base, n = Path(path), 1
    while True:
        candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
        try:
            os.makedirs(candidate.parent, exist_ok=True)
            candidate.mkdir()
            return str(candidate)
        except FileExistsError:
            n += 1


def _image_folder_classes(root: str | None) -> int:
    """``${icasc_image_folder_classes:${.root}}``: the number of class folders of ``data=image_folder``."""
    # imported when resolved: importing icasc.tasks stays free of the data stack
    from icasc.data.folder_layout import count_image_folder_classes

    return count_image_folder_classes(root)


# Presets cannot mark a value as required with `???`: merging `???` over a default keeps the default.
if not OmegaConf.has_resolver("icasc_required"):
    OmegaConf.register_new_resolver("icasc_required", _required)
if not OmegaConf.has_resolver("icasc_new_dir"):
    OmegaConf.register_new_resolver("icasc_new_dir", _new_dir, use_cache=True)
if not OmegaConf.has_resolver("icasc_score_metric"):
    OmegaConf.register_new_resolver("icasc_score_metric", _score_metric)
if not OmegaConf.has_resolver("icasc_image_folder_classes"):
    OmegaConf.register_new_resolver("icasc_image_folder_classes", _image_folder_classes)
