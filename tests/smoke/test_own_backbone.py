"""A user's own backbone, registered in the user's package and named ``<module>:<name>`` in the config.

The import in the name runs the user's ``@register_backbone``, so training, the checkpoint, the export and
the eval task all reach the backbone without icasc knowing the package.
"""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap

import pytest

from icasc.models.backbones import get_backbone, unregister_backbone
from icasc.tasks import evaluate
from icasc.tasks.train import run as train
from tests.conftest import TINY, compose_config

pytestmark = pytest.mark.slow

USER_NETS = """
from torch import nn

from icasc.models import register_backbone


class TwoBlock(nn.Module):
    def __init__(self, num_classes, width=8):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.classifier(self.block2(self.block1(x)).mean(dim=(2, 3)))


@register_backbone(
    "two_block",
    inner_layer="block1",
    last_layer="block2",
    head="classifier",
    input_defaults={"image_size": 64, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    model_types=(TwoBlock,),
)
def build_two_block(num_classes, weights=None, **kwargs):
    if weights is not None:
        raise ValueError("two_block has no pretrained weights; pass weights=None")
    return TwoBlock(num_classes, **kwargs)
"""


@pytest.fixture
def user_nets(tmp_path, monkeypatch):
    (tmp_path / "user_nets_pkg.py").write_text(textwrap.dedent(USER_NETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_nets_pkg"
    sys.modules.pop("user_nets_pkg", None)
    with contextlib.suppress(KeyError):
        unregister_backbone("two_block")


def test_a_backbone_named_by_its_module_trains_exports_and_evaluates(user_nets, tmp_path):
    backbone = ["model.backbone.name=user_nets_pkg:two_block", "~model.backbone.batchnorm"]
    run_dir = tmp_path / "train"
    result = train(compose_config("train", [*TINY, *backbone, "model.backbone.width=8"], run_dir))
    assert get_backbone("user_nets_pkg:two_block").name == "two_block"
    card = json.loads((run_dir / "export" / "model_card.json").read_text())
    assert card["backbone"] == "user_nets_pkg:two_block" and card["backbone_kwargs"] == {"width": 8}
    assert card["attention"]["layers"] == {"inner": "block1", "last": "block2"}  # from the registration
    ckpt = result["outputs"]["best checkpoint"]
    # a fresh process would import the package again from the recorded name: unregister to show it does
    unregister_backbone("two_block")
    sys.modules.pop("user_nets_pkg")
    scored = evaluate.run(
        compose_config(
            "eval", [f"ckpt_path={ckpt}", "progress=false", "data.test_size=32"], tmp_path / "eval"
        )
    )
    assert 0.0 <= scored["metrics"]["test/top1"] <= 1.0


def test_a_module_that_does_not_register_the_name_is_named_in_the_error(user_nets):
    with pytest.raises(KeyError, match=r"importing 'user_nets_pkg' registered no backbone 'other'"):
        get_backbone("user_nets_pkg:other")
    with pytest.raises(ImportError, match=r"cannot import 'no_such_pkg'.*PYTHONPATH"):
        get_backbone("no_such_pkg:two_block")


def test_unknown_names_mention_the_module_form():
    with pytest.raises(KeyError, match=r"'<your.module>:<name>'"):
        get_backbone("nope")
