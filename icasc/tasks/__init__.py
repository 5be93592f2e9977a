"""Tasks: ``run(cfg)`` functions behind the entry points (the only library code that sees DictConfig).

Importing this package registers the OmegaConf resolvers the configs use.
"""

from omegaconf import OmegaConf


def _required(message: str) -> None:
    """``${icasc_required:"why"}``: a value a preset needs from the user (fails with ``why`` when read)."""
    raise ValueError(message)


def _score_metric(multilabel: bool) -> str:
    """The checkpoint/sweep metric of the data: mAP for multi-label data, top-1 accuracy otherwise."""
    return "val/map" if multilabel else "val/top1"


# Presets cannot mark a value as required with `???`: merging `???` over a default keeps the default.
if not OmegaConf.has_resolver("icasc_required"):
    OmegaConf.register_new_resolver("icasc_required", _required)
if not OmegaConf.has_resolver("icasc_score_metric"):
    OmegaConf.register_new_resolver("icasc_score_metric", _score_metric)
