"""What icasc reads from a data module: the contract of a user's ``LightningDataModule``, checked once.

Required:

* ``num_classes``: an int >= 1 (the model is built with it);
* ``train_dataloader()`` and ``val_dataloader()`` (``test_dataloader()`` for ``test=true``, ``-cn eval
  split=test`` and ``before_after.split=test``) yielding **dict batches** ``{"image": [B, 3, H, W] float,
  "target": [B] int64 class indices (or [B, C] multi-hot with multilabel=True), optional "box": [B, 4] xyxy
  pixel boxes}``.

Optional, with defaults:

* ``multilabel`` (``False``);
* ``mean`` / ``std``: the per-channel normalisation the loaders apply (both or neither); used to display
  images and recorded in model cards. Absent: images are displayed as they come and the card records
  ``null`` (unknown);
* ``image_size``: side of the model's input, recorded in model cards (``null`` when absent);
* ``class_names``: ``num_classes`` strings, for figures, reports and model cards (class indices when absent);
* ``check_split(name)``: for a module whose splits depend on its data (``"train"``, ``"val"``, ``"test"``),
  raise a ``ValueError`` that says how to add ``name`` when the data has no such split, so that e.g.
  ``test=true`` fails before training rather than after it.

Every task reads a data module through :func:`describe_data` (the attributes, before any work) and
:func:`check_batch` (the first batch of each loop).

Example:
    >>> info = describe_data(my_datamodule)  # doctest: +SKIP
    >>> info.num_classes, info.multilabel, info.mean  # doctest: +SKIP
    (10, False, None)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from lightning.pytorch.core.hooks import DataHooks

from icasc.utils import is_int, is_number

__all__ = [
    "ClassificationDataModule",
    "DataContractError",
    "DataInfo",
    "check_batch",
    "check_data_fits_model",
    "describe_data",
]

_GUIDE = "see the README section 'Bring your own data'"


@runtime_checkable
class ClassificationDataModule(Protocol):
    """The part of a ``LightningDataModule`` icasc relies on (the optional attributes: the module doc)."""

    num_classes: int

    def train_dataloader(self) -> Any: ...

    def val_dataloader(self) -> Any: ...


class DataContractError(ValueError):
    """A data module, or one of its batches, breaks the contract (the message lists every problem)."""


@dataclass(frozen=True)
class DataInfo:
    """What icasc knows about a data module; ``None`` marks an optional attribute the module does not give.

    Attributes:
        source: The data module's class, ``module.Class``.
        num_classes: Number of classes.
        multilabel: Whether targets are multi-hot.
        class_names: One name per class, or ``None``.
        image_size: Side of the model's input, or ``None``.
        mean: Per-channel normalisation mean, or ``None``.
        std: Per-channel normalisation standard deviation, or ``None``.
    """

    source: str
    num_classes: int
    multilabel: bool = False
    class_names: tuple[str, ...] | None = None
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def display_mean(self) -> tuple[float, ...]:
        """The mean to undo for display: ``mean``, or 0 (images shown as the loaders give them)."""
        return self.mean if self.mean is not None else (0.0, 0.0, 0.0)

    @property
    def display_std(self) -> tuple[float, ...]:
        """The std to undo for display: ``std``, or 1."""
        return self.std if self.std is not None else (1.0, 1.0, 1.0)

    def names(self) -> list[str]:
        """``class_names``, or the class indices as strings."""
        return list(self.class_names) if self.class_names else [str(c) for c in range(self.num_classes)]

    def card_input(self) -> dict[str, Any]:
        """The model card's ``input``: ``image_size``, ``mean``, ``std`` (``None`` where unknown)."""
        return {
            "image_size": self.image_size,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }


def _floats(value: Any) -> tuple[float, ...] | None:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, str) or not isinstance(value, Sequence):
        return None
    if not value or not all(is_number(v) for v in value):
        return None
    return tuple(float(v) for v in value)


def _read(datamodule: Any, name: str, problems: list[str]) -> Any:
    """``getattr`` that reports a property raising as a problem instead of crashing."""
    try:
        return getattr(datamodule, name, None)
    except Exception as error:  # a property of the user's module that fails: say which
        problems.append(f"reading {name} raised {type(error).__name__}: {error}")
        return None


def describe_data(datamodule: Any, loaders: Sequence[str] = ("train", "val")) -> DataInfo:
    """Check a data module against the contract and return what icasc reads from it.

    Called by every task before any work (before training starts), so a data module that lacks something
    fails at once, with one message that lists every problem and how to fix it.

    Args:
        datamodule: The data module (a ``LightningDataModule``, or any object with the attributes).
        loaders: The loaders the caller will use: ``"train"``, ``"val"``, ``"test"``.

    Returns:
        The :class:`DataInfo`; optional attributes the module does not give are ``None`` (unknown).

    Raises:
        DataContractError: Something required is missing, or something given is malformed.
    """
    cls = type(datamodule)
    source = f"{cls.__module__}.{cls.__qualname__}"
    problems: list[str] = []
    num_classes = _read(datamodule, "num_classes", problems)
    if num_classes is None:
        problems.append(
            "num_classes is missing: add an attribute or property num_classes (an int >= 1), e.g. set "
            "self.num_classes in __init__ and num_classes: <N> in the data yaml"
        )
    elif not is_int(num_classes) or num_classes < 1:
        problems.append(f"num_classes must be an int >= 1, got {num_classes!r}")
    for name in loaders:
        method = getattr(cls, f"{name}_dataloader", None)
        # LightningDataModule's own hooks only raise "must be implemented": not defined by the user
        if not callable(method) or method is getattr(DataHooks, f"{name}_dataloader", None):
            problems.append(
                f"{name}_dataloader() is missing: define it, returning a DataLoader of dict batches"
            )
        elif callable(check_split := getattr(datamodule, "check_split", None)):
            try:
                check_split(name)
            except ValueError as err:  # the module's own message says how to add the split
                problems.append(f"{name} split: {err}")
    multilabel = _read(datamodule, "multilabel", problems)
    if multilabel is not None and not isinstance(multilabel, bool):
        problems.append(f"multilabel must be True or False (or absent: False), got {multilabel!r}")
    class_names = _read(datamodule, "class_names", problems)
    names: tuple[str, ...] | None = None
    if class_names is not None and len(class_names) > 0:
        if isinstance(class_names, str) or not isinstance(class_names, Sequence):
            problems.append(f"class_names must be a list of strings, got {type(class_names).__name__}")
        elif is_int(num_classes) and num_classes >= 1 and len(class_names) != num_classes:
            problems.append(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        else:
            names = tuple(str(c) for c in class_names)
    image_size = _read(datamodule, "image_size", problems)
    if image_size is not None and (not is_int(image_size) or image_size < 1):
        problems.append(f"image_size must be an int >= 1 (the side of the model's input), got {image_size!r}")
    stats: dict[str, tuple[float, ...] | None] = {}
    for key in ("mean", "std"):
        value = _read(datamodule, key, problems)
        stats[key] = None if value is None else _floats(value)
        if value is not None and stats[key] is None:
            problems.append(
                f"{key} must be a sequence of per-channel floats, e.g. (0.5, 0.5, 0.5), got {value!r}"
            )
    mean, std = stats["mean"], stats["std"]
    if (mean is None) != (std is None) and not any(p.startswith(("mean", "std")) for p in problems):
        given, absent = ("mean", "std") if mean is not None else ("std", "mean")
        problems.append(
            f"{given} is given but {absent} is not: give both (the loaders' normalisation) or neither"
        )
    elif mean is not None and std is not None:
        if len(mean) != len(std):
            problems.append(f"mean has {len(mean)} channels and std {len(std)}: give one value per channel")
        if any(s <= 0 for s in std):
            problems.append(f"std must be > 0 in every channel, got {list(std)}")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DataContractError(
            f"the data module {source} does not follow icasc's contract ({_GUIDE}):\n{lines}"
        )
    return DataInfo(
        source=source,
        num_classes=int(num_classes),
        multilabel=bool(multilabel),
        class_names=names,
        image_size=None if image_size is None else int(image_size),
        mean=mean,
        std=std,
    )


def check_batch(batch: Any, num_classes: int, multilabel: bool, where: str = "batch") -> None:
    """Check one batch against the contract (dict with ``image``, ``target``, optional ``box``).

    Cheap (shapes and dtypes, one ``min``/``max`` of the targets): the module calls it on the first batch of
    every loop, so a data module that yields tuples or wrong targets fails on its first step, not deep inside
    a loss.

    Args:
        batch: The batch.
        num_classes: The model's class count.
        multilabel: Whether targets must be multi-hot.
        where: For the message, e.g. ``"the first training batch"``.

    Raises:
        DataContractError: Every problem found, with what the batch must be.
    """
    expected = (
        '{"image": [B, 3, H, W] float, "target": '
        + ("[B, C] multi-hot" if multilabel else "[B] int64 class indices")
        + ', optional "box": [B, 4] xyxy pixels}'
    )
    if not isinstance(batch, Mapping):
        raise DataContractError(
            f"{where} is a {type(batch).__name__}, but icasc's batches are dicts {expected}; make the "
            f'dataset return {{"image": image, "target": label}} ({_GUIDE})'
        )
    problems: list[str] = []
    image, target = batch.get("image"), batch.get("target")
    missing = [k for k in ("image", "target") if k not in batch]
    if missing:
        problems.append(f"missing key(s) {missing} (the batch has {sorted(batch)})")
    if image is not None:
        if not isinstance(image, torch.Tensor) or not image.is_floating_point():
            problems.append(
                f"image must be a float tensor, got {getattr(image, 'dtype', type(image).__name__)}"
            )
        elif image.dim() not in (4, 5) or image.shape[-3] != 3:
            problems.append(
                f"image must be [B, 3, H, W] (or [B, n_crops, 3, H, W] for multi-crop evaluation), got "
                f"{list(image.shape)}"
            )
    if isinstance(target, torch.Tensor):
        _check_target(target, num_classes, multilabel, problems)
    elif target is not None:
        problems.append(f"target must be a tensor, got {type(target).__name__}")
    box = batch.get("box")
    if box is not None and (not isinstance(box, torch.Tensor) or box.dim() != 2 or box.shape[-1] != 4):
        problems.append(
            f"box must be [B, 4] (x1, y1, x2, y2 in pixels), got {list(getattr(box, 'shape', []))}"
        )
    sizes = {k: int(v.shape[0]) for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if len(set(sizes.values())) > 1:
        problems.append(f"the entries have different batch sizes: {sizes}")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DataContractError(
            f"{where} does not follow icasc's batch format {expected} ({_GUIDE}):\n{lines}"
        )


def _check_target(target: torch.Tensor, num_classes: int, multilabel: bool, problems: list[str]) -> None:
    if multilabel:
        if target.dim() != 2 or target.shape[1] != num_classes:
            problems.append(
                f"target must be [B, {num_classes}] multi-hot for multi-label data, got {list(target.shape)}"
            )
        return
    if target.dim() != 1 or target.is_floating_point() or target.dtype == torch.bool:
        problems.append(
            f"target must be [B] int64 class indices, got {target.dtype} {list(target.shape)}"
            + (" (multi-hot targets need multilabel=True)" if target.dim() == 2 else "")
        )
    elif target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        problems.append(
            f"target holds classes {int(target.min())}..{int(target.max())} outside 0..{num_classes - 1}: "
            "num_classes is too small, or the labels are not 0-based"
        )


def check_data_fits_model(
    info: DataInfo, num_classes: int, multilabel: bool, model: str, classes_fix: str, label_fix: str
) -> None:
    """Raise unless the data's class count and label kind are the model's (the one data/model check).

    Args:
        info: The data's :class:`DataInfo`.
        num_classes: The model's class count.
        multilabel: Whether the model is multi-label.
        model: What the model is, for the message (e.g. ``"ckpt_path=runs/x/last.ckpt"``).
        classes_fix: How to fix a class-count mismatch (the option to set).
        label_fix: How to fix a label-kind mismatch.

    Raises:
        ValueError: The class counts or the label kinds differ.
    """
    if info.num_classes != num_classes:
        raise ValueError(
            f"{model} was built for {num_classes} classes but the data ({info.source}) has "
            f"{info.num_classes}: {classes_fix}"
        )
    if info.multilabel != multilabel:
        kinds = ("multi" if multilabel else "single", "multi" if info.multilabel else "single")
        raise ValueError(
            f"{model} is a {kinds[0]}-label model but the data ({info.source}) is {kinds[1]}-label: "
            f"{label_fix}"
        )
