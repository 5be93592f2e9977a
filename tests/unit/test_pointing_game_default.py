"""One pointing-game definition and one default tolerance for training, -cn eval and -cn explain."""

from __future__ import annotations

import inspect

import pytest
import torch

from icasc.metrics.pointing_game import (
    POINTING_TOLERANCE,
    PointingGame,
    pointing_game_hits,
    resolve_tolerance,
)
from icasc.models import ICASCModule
from tests.conftest import compose_config, compose_train


def test_the_default_is_inside_the_box():
    # Group-CAM §4.4: "if the most salient pixel lies inside the annotated bounding boxes ... a hit".
    assert POINTING_TOLERANCE == 0.0
    assert resolve_tolerance(None) == POINTING_TOLERANCE and resolve_tolerance(15) == 15.0
    maps = torch.zeros(1, 10, 10)
    maps[0, 2, 3] = 1.0  # maximum at the pixel centre (3.5, 2.5)
    next_to = torch.tensor([[4.0, 2.0, 6.0, 4.0]])  # 0.5 px to the right of it
    assert not pointing_game_hits(maps, next_to, (10, 10)).item()
    assert pointing_game_hits(maps, next_to, (10, 10), tolerance=15).item()
    assert PointingGame(3).tolerance == POINTING_TOLERANCE
    for bad in (-1.0, "15", True):
        with pytest.raises(ValueError, match="tolerance must be >= 0 pixels or None"):
            resolve_tolerance(bad)


def test_train_eval_and_explain_share_the_default():
    # Training and validation logging: the module's default and conf/model/icasc.yaml.
    assert inspect.signature(ICASCModule).parameters["pointing_tolerance"].default == POINTING_TOLERANCE
    module = ICASCModule("tiny_cnn", num_classes=3)
    assert module.pointing_tolerance == POINTING_TOLERANCE
    assert compose_train().model.pointing_tolerance == POINTING_TOLERANCE
    # -cn eval: null keeps the checkpoint's setting, whose default is the one above (exports: the default).
    assert compose_config("eval").pointing_tolerance is None
    # -cn explain: null means the default.
    explain_cfg = compose_config("explain")
    assert explain_cfg.pointing_tolerance is None
    assert resolve_tolerance(explain_cfg.get("pointing_tolerance")) == POINTING_TOLERANCE
