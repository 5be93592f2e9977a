"""One record of what a checkpoint or an export is, and one model-card builder."""

from __future__ import annotations

import json

from icasc.data.contract import DataInfo
from icasc.models import ICASCModule
from icasc.models.export import CARD_FILE, GENERATED_CARD_KEYS, export_backbone
from icasc.models.loading import load_classifier, load_classifier_record
from icasc.models.record import ModelRecord, build_card
from tests.helpers import save_tiny_checkpoint

_DATA = DataInfo("tests.Data", 3, class_names=("a", "b", "c"), image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


def _module() -> ICASCModule:
    return ICASCModule({"name": "tiny_cnn", "width": 8}, num_classes=3, pointing_tolerance=4.0)


def test_the_record_of_a_module_reads_back_from_its_export(tmp_path):
    module = _module()
    record = ModelRecord.from_module(module)
    assert record.backbone == "tiny_cnn" and record.backbone_kwargs == {"width": 8}
    assert record.backbone_spec == module.backbone_spec
    assert record.attention == {"method": module.attention.method, "layers": dict(module.attention.layers)}
    assert record.multilabel is False and record.pointing_tolerance == 4.0 and record.source_card == {}

    card = build_card(record, _DATA, {"val/top1": 0.5}, "0" * 64)
    assert card["class_names"] == ["a", "b", "c"] and card["input"] == _DATA.card_input()
    assert card["metrics"] == {"val/top1": 0.5} and card["config_hash"] == "0" * 64
    export_backbone(module.backbone, tmp_path, card)
    _, loaded = load_classifier_record(tmp_path)
    # the card adds what the data knows; every other field reads back as it was
    assert loaded.class_names == ("a", "b", "c") and loaded.input == _DATA.card_input()
    assert ModelRecord(**{**vars(loaded), "class_names": None, "input": None}) == record
    assert load_classifier(tmp_path)[1] == loaded.as_info()


def test_export_backbone_adds_exactly_the_generated_keys(tmp_path):
    module = _module()
    card = build_card(ModelRecord.from_module(module), _DATA, {}, "h")
    export_backbone(module.backbone, tmp_path, card)
    written = json.loads((tmp_path / CARD_FILE).read_text())
    assert set(written) == set(card) | set(GENERATED_CARD_KEYS)
    assert not set(card) & set(GENERATED_CARD_KEYS)


def test_a_card_record_carries_the_cards_other_keys_into_a_derived_card(tmp_path):
    module = ICASCModule("tiny_cnn", num_classes=3)
    export_backbone(module.backbone, tmp_path, {"backbone": "tiny_cnn", "num_classes": 3, "note": "kept"})
    _, record = load_classifier_record(tmp_path)
    # a hand-written card: what it does not record stays unknown
    assert record.backbone_kwargs == {} and record.multilabel is None and record.attention == {"layers": {}}
    assert record.pointing_tolerance is None and record.class_names is None and record.init_from is None
    card = build_card(record, _DATA, {"val/top1": 1.0}, "h")
    assert card["note"] == "kept" and not set(card) & set(GENERATED_CARD_KEYS)
    assert card["class_names"] == ["a", "b", "c"] and card["metrics"] == {"val/top1": 1.0}


def test_a_checkpoints_info_and_record(tmp_path):
    module = save_tiny_checkpoint(tmp_path / "tiny.ckpt", pointing_tolerance=2.0)
    model, record = load_classifier_record(tmp_path / "tiny.ckpt")
    assert not model.training and record == ModelRecord.from_module(module)
    info = record.as_info()
    assert info["backbone"] == "tiny_cnn" and info["num_classes"] == 5 and info["pointing_tolerance"] == 2.0
    assert info["class_names"] is None and info["input"] is None and info["init_from"] is None
