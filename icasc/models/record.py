"""What a checkpoint or an export is, and its model card: built once, used by every task.

A :class:`ModelRecord` says which model was trained (the backbone's registry name and build arguments, the
class count and kind, the attention method and layers, the loss weights, the pointing-game tolerance it was
validated with) and, for an export, what its model card adds (class names, input, ``init_from``). It is
built from a trained :class:`~icasc.models.ICASCModule` (:meth:`ModelRecord.from_module`) or from a model
card (:meth:`ModelRecord.from_card`); :func:`build_card` turns it back into the card an export carries.

Example:
    >>> record = ModelRecord.from_module(ICASCModule("tiny_cnn", num_classes=3))  # doctest: +SKIP
    >>> card = build_card(record, describe_data(datamodule), {"val/top1": 0.9}, "<sha256>")  # doctest: +SKIP
    >>> ModelRecord.from_card(card).attention_layers  # doctest: +SKIP
    {'inner': 'layer1', 'last': 'layer2'}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from icasc.models.export import GENERATED_CARD_KEYS

if TYPE_CHECKING:
    from icasc.data.contract import DataInfo
    from icasc.models.module import ICASCModule

__all__ = ["ModelRecord", "build_card"]


@dataclass(frozen=True)
class ModelRecord:
    """What a trained classifier is, whether it was read from a checkpoint or from an export.

    Attributes:
        backbone: Registry name of the backbone.
        num_classes: Class count.
        backbone_kwargs: Build arguments of the backbone, without ``weights`` (the trained weights replace
            them).
        multilabel: Multi-label (``True``) or single-label; ``None``: a card that does not record it.
        attention_method: The attention method (``"ach"``, ``"gradcam"``); ``None``: not recorded.
        attention_layers: ``{"inner": ..., "last": ...}`` dotted module names (empty: not recorded).
        loss_weights: The ICASC loss weights; ``None``: not recorded.
        pointing_tolerance: The pointing-game tolerance the model was validated with (input pixels);
            ``None``: a card from before it was recorded.
        class_names: The class names of an export's card (``None``: unknown, e.g. for a checkpoint).
        input: An export card's ``input`` (``image_size``, ``mean``, ``std``); ``None`` for a checkpoint.
        init_weights: The backbone's ``weights`` option training started from (``None``: none).
        init_from: The weights a fine-tune started from (``None``: trained from scratch, or not recorded).
        source_card: The model card the record was read from, ``{}`` for a checkpoint (the other keys a
            task recorded, carried into the card of a model derived from it).
    """

    backbone: str
    num_classes: int
    backbone_kwargs: Mapping[str, Any] = field(default_factory=dict)
    multilabel: bool | None = None
    attention_method: str | None = None
    attention_layers: Mapping[str, str] = field(default_factory=dict)
    loss_weights: Mapping[str, float] | None = None
    pointing_tolerance: float | None = None
    class_names: tuple[str, ...] | None = None
    input: Mapping[str, Any] | None = None
    init_weights: str | None = None
    init_from: str | None = None
    source_card: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_module(cls, module: ICASCModule) -> ModelRecord:
        """The record of a (trained) :class:`~icasc.models.ICASCModule`."""
        spec = dict(module.backbone_spec)
        name = spec.pop("name")
        return cls(
            backbone=name,
            num_classes=int(module.num_classes),
            backbone_kwargs={k: v for k, v in spec.items() if k != "weights"},
            multilabel=bool(module.multilabel),
            attention_method=module.attention.method,
            attention_layers=dict(module.attention.layers),
            loss_weights=dict(module.loss.weights),
            pointing_tolerance=float(module.pointing_tolerance),
            init_weights=spec.get("weights"),
        )

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> ModelRecord:
        """The record of an export, read from its model card (``backbone`` and ``num_classes`` required)."""
        attention = card.get("attention") or {}
        names = card.get("class_names")
        loss_weights = card.get("loss_weights")
        return cls(
            backbone=card["backbone"],
            num_classes=int(card["num_classes"]),
            backbone_kwargs={k: v for k, v in (card.get("backbone_kwargs") or {}).items() if k != "weights"},
            multilabel=card.get("multilabel"),
            attention_method=attention.get("method"),
            attention_layers=dict(attention.get("layers") or {}),
            loss_weights=None if loss_weights is None else dict(loss_weights),
            pointing_tolerance=card.get("pointing_tolerance"),
            class_names=tuple(names) if names else None,
            input=card.get("input"),
            init_weights=card.get("init_weights"),
            init_from=card.get("init_from"),
            source_card=dict(card),
        )

    @property
    def backbone_spec(self) -> dict[str, Any]:
        """``{"name": backbone, **backbone_kwargs}``, as :class:`~icasc.models.ICASCModule` takes it."""
        return {"name": self.backbone, **self.backbone_kwargs}

    @property
    def attention(self) -> dict[str, Any]:
        """The card's ``attention``: ``{"method": ..., "layers": {...}}`` (no ``method`` when unknown)."""
        layers = {"layers": dict(self.attention_layers)}
        return layers if self.attention_method is None else {"method": self.attention_method, **layers}

    def as_info(self) -> dict[str, Any]:
        """The record as the plain dict :func:`~icasc.models.loading.load_classifier` returns."""
        return {
            "backbone": self.backbone,
            "backbone_kwargs": dict(self.backbone_kwargs),
            "num_classes": self.num_classes,
            "multilabel": self.multilabel,
            "attention_layers": dict(self.attention_layers),
            "class_names": None if self.class_names is None else list(self.class_names),
            "input": None if self.input is None else dict(self.input),
            "init_from": self.init_from,
            "pointing_tolerance": self.pointing_tolerance,
        }


def build_card(
    record: ModelRecord, data: DataInfo, metrics: Mapping[str, Any], config_hash: str
) -> dict[str, Any]:
    """The model card of ``record`` (the one card builder; see :func:`~icasc.models.export.export_backbone`).

    Every field of the record is written (``None`` where unknown, which reads back the same); a record read
    from a card carries that card's other keys (e.g. ``before_after``), without the ones
    :func:`~icasc.models.export.export_backbone` generates.

    Args:
        record: What the model is.
        data: What its data module gives (:func:`~icasc.data.contract.describe_data`): the class names and the
            input (size, normalisation) where the record does not know them (``None``/empty when unknown).
        metrics: The metrics to record.
        config_hash: The hash of the config that produced the model
            (:func:`~icasc.models.export.config_hash`).

    Returns:
        The card, JSON-serialisable when ``metrics`` are.
    """
    carried = {k: v for k, v in record.source_card.items() if k not in GENERATED_CARD_KEYS}
    return {
        **carried,
        "backbone": record.backbone,
        "backbone_kwargs": dict(record.backbone_kwargs),
        # `weights` only initialised training; the exported file holds the trained weights.
        "init_weights": record.init_weights,
        "num_classes": record.num_classes,
        "multilabel": record.multilabel,
        "class_names": list(record.class_names or data.class_names or []),
        "input": dict(record.input) if record.input else data.card_input(),
        "attention": record.attention,
        "loss_weights": None if record.loss_weights is None else dict(record.loss_weights),
        # the tolerance of the card's pointing_game, so -cn eval / explain score the export alike
        "pointing_tolerance": record.pointing_tolerance,
        "init_from": record.init_from,
        "metrics": dict(metrics),
        "config_hash": config_hash,
    }
