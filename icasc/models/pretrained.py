"""Torchvision's pretrained weights, with one clear error when they can be neither downloaded nor read.

Torchvision downloads the weights of ``resnet50(weights="IMAGENET1K_V1")`` to
``torch.hub.get_dir()/checkpoints/<file name of the url>`` and reads them from there afterwards. Without a
network the download fails with a long ``URLError`` trace; :func:`build_pretrained` turns it into
:class:`PretrainedWeightsError`, which says where to copy the file and how to train without it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

__all__ = ["PretrainedWeightsError", "build_pretrained"]


class PretrainedWeightsError(OSError):
    """Torchvision's pretrained weights could neither be downloaded nor read from torch.hub's cache.

    Attributes:
        arch: The backbone's registry name, e.g. ``"resnet50"``.
        weights: The weights' name, e.g. ``"IMAGENET1K_V1"``.
        url: Where torchvision downloads them from.
        cache_file: Where torchvision looks for them first: ``torch.hub.get_dir()/checkpoints/<file name>``.
        reason: What went wrong (the original error, also chained as ``__cause__``).
        cached: Whether ``cache_file`` existed (and so could not be read) rather than failed to download.
    """

    def __init__(
        self, arch: str, weights: str, url: str, cache_file: Path, reason: str, cached: bool, without: str
    ) -> None:
        self.arch, self.weights, self.url, self.cache_file = arch, weights, url, cache_file
        self.reason, self.cached = reason, cached
        super().__init__(self.describe(without))

    def describe(self, without: str) -> str:
        """The message, with ``without``: how to train without the weights (the option to set)."""
        what = f"the pretrained weights {self.weights} of {self.arch}"
        if self.cached:
            return (
                f"could not read {what} from torch.hub's cache {self.cache_file} ({self.reason}): the file "
                f"is truncated or not a torch file. Delete it (torchvision downloads it again from "
                f"{self.url}) or copy a complete one there; or train without pretrained weights: {without}"
            )
        return (
            f"could not download {what} from {self.url} ({self.reason}; no network?). Download that file "
            f"where there is internet and copy it to {self.cache_file} (torch.hub.get_dir()/checkpoints, "
            f"where torchvision looks first; TORCH_HOME moves it), or train without pretrained weights: "
            f"{without}"
        )


def _resolve(name: str, weights: Any) -> tuple[str, str]:
    """The weights' label for messages (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V1 (DEFAULT)"``) and url."""
    enum_cls = torchvision.models.get_model_weights(name)
    if not isinstance(weights, str):
        return str(weights.name), str(weights.url)
    key = weights.removeprefix(enum_cls.__name__ + ".")
    member = enum_cls.DEFAULT if key == "DEFAULT" else enum_cls[key]
    label = f"{member.name} (DEFAULT)" if key == "DEFAULT" else str(member.name)
    return label, str(member.url)


def build_pretrained(
    builder: Callable[..., nn.Module], arch: str, weights: Any, without: str, **kwargs: Any
) -> nn.Module:
    """``builder(weights=weights, **kwargs)``, turning a failed download into :class:`PretrainedWeightsError`.

    Args:
        builder: The torchvision model builder, e.g. ``torchvision.models.resnet50``.
        arch: Its name (``"resnet50"``), to find the weights' url.
        weights: A weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"``) or a torchvision weights enum member.
        without: How to train without the weights, for the message (e.g. ``"model.backbone.weights=null"``).
        **kwargs: Further builder arguments.

    Returns:
        The pretrained model.

    Raises:
        PretrainedWeightsError: The weights could not be downloaded nor read from torch.hub's cache.
    """
    label, url = _resolve(arch, weights)
    cache_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    cached = cache_file.is_file()
    try:
        return builder(weights=weights, **kwargs)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        # urllib's URLError and socket errors are OSErrors; torch.hub raises RuntimeError on a bad hash and
        # torch.load on a damaged cache file. Anything else (a bad builder argument) is not about the weights.
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        raise PretrainedWeightsError(arch, label, url, cache_file, reason, cached, without) from error
