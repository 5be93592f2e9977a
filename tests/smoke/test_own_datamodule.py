"""A user's own DataModule, plugged in the Hydra way (``hydra.searchpath`` + ``data=<name>``), in every task.

The module below gives only what the contract requires (``num_classes`` and loaders of dict batches): no
``multilabel``, ``mean``, ``std``, ``image_size`` or ``class_names``. Train (with export and figure), eval,
explain and param_saliency run on it; the model card records the unknown fields as ``null``.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from icasc.data.contract import DataContractError
from icasc.tasks import evaluate, explain, param_saliency
from icasc.tasks.train import run as train
from tests.conftest import compose_config

pytestmark = pytest.mark.slow

USER_MODULE = '''
import lightning as L
import torch
from torch.utils.data import DataLoader


class Shapes(torch.utils.data.Dataset):
    """Class c: a bright square at one of three places."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 32, 32, generator=g) * 0.2
        self.targets = torch.arange(n) % 3
        for i, c in enumerate(self.targets.tolist()):
            self.images[i, :, 4 + 8 * c : 12 + 8 * c, 4 + 8 * c : 12 + 8 * c] = 1.0

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return {"image": self.images[i], "target": self.targets[i]}


class MyData(L.LightningDataModule):
    def __init__(self, num_classes=3, batch_size=8):
        super().__init__()
        self.num_classes = num_classes
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(Shapes(32, 0), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(Shapes(16, 1), batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(Shapes(16, 2), batch_size=self.batch_size)


class Tuples(MyData):
    """A mistake users make: (image, label) tuples instead of dict batches."""

    def train_dataloader(self):
        data = Shapes(32, 0)
        return DataLoader([(d["image"], d["target"]) for d in data], batch_size=self.batch_size)


class Lacking(L.LightningDataModule):
    """Another: no num_classes, and a mean without a std."""

    mean = (0.5, 0.5, 0.5)

    def __init__(self, num_classes=3, batch_size=8):
        super().__init__()
'''

DATA_YAML = """
_target_: {target}
num_classes: 3
batch_size: 8
"""

TINY = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "figure.num_images=2",
]


@pytest.fixture(scope="module")
def user_conf(tmp_path_factory) -> Path:
    """A package ``my_pkg`` with the DataModules, and a config folder ``conf/data/*.yaml`` naming them."""
    root = tmp_path_factory.mktemp("user")
    (root / "my_pkg").mkdir()
    (root / "my_pkg" / "__init__.py").write_text(textwrap.dedent(USER_MODULE))
    data = root / "conf" / "data"
    data.mkdir(parents=True)
    for name, cls in (("my_data", "MyData"), ("tuples", "Tuples"), ("lacking", "Lacking")):
        (data / f"{name}.yaml").write_text(DATA_YAML.format(target=f"my_pkg.{cls}"))
    return root


@pytest.fixture
def on_path(user_conf, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(user_conf))
    return user_conf


def _compose(name: str, conf: Path, overrides: list[str], out: Path):
    return compose_config(name, [f"hydra.searchpath=[file://{conf / 'conf'}]", *overrides], out)


def test_train_eval_explain_param_saliency_on_a_users_datamodule(on_path, tmp_path):
    run_dir = tmp_path / "train"
    result = train(_compose("train", on_path, ["data=my_data", *TINY], run_dir))
    assert result["outputs"]["exported model"] and Path(result["outputs"]["attention figure"]).is_file()
    card = json.loads((run_dir / "export" / "model_card.json").read_text())
    assert card["num_classes"] == 3 and card["multilabel"] is False
    assert card["input"] == {"image_size": None, "mean": None, "std": None}  # unknown, not a crash
    assert card["class_names"] == []

    ckpt = str(next((run_dir / "checkpoints").glob("epoch_*.ckpt")))
    scored = evaluate.run(
        _compose("eval", on_path, ["data=my_data", f"ckpt_path={ckpt}", "progress=false"], tmp_path / "eval")
    )
    assert 0.0 <= scored["metrics"]["test/top1"] <= 1.0

    explained = explain.run(
        _compose(
            "explain",
            on_path,
            [
                *("data=my_data", f"ckpt_path={run_dir / 'export'}", "num_images=2", "methods=[gradcam]"),
                *("progress=false", "faithfulness.step_fraction=0.25"),
            ],
            tmp_path / "explain",
        )
    )
    assert explained["methods"]["gradcam"]["images"] == 2

    profiled = param_saliency.run(
        _compose(
            "param_saliency",
            on_path,
            ["data=my_data", f"ckpt_path={run_dir / 'export'}", "progress=false", "num_images=2"]
            + [f"{name}.enabled=false" for name in ("pruning", "perturbation", "neighbours", "masking")],
            tmp_path / "param_saliency",
        )
    )
    assert profiled["samples"] == 16


def test_a_datamodule_lacking_the_contract_fails_before_training(on_path, tmp_path):
    with pytest.raises(DataContractError) as error:
        train(_compose("train", on_path, ["data=lacking", *TINY], tmp_path))
    message = str(error.value)
    assert "my_pkg.Lacking" in message and "num_classes is missing" in message
    assert "train_dataloader() is missing" in message and "val_dataloader() is missing" in message
    assert "mean is given but std is not" in message and "Bring your own data" in message
    assert not (tmp_path / "checkpoints").exists()  # nothing trained


def test_tuple_batches_fail_on_the_first_step_naming_the_format(on_path, tmp_path):
    with pytest.raises(DataContractError, match=r"first training batch is a list.*dicts"):
        train(_compose("train", on_path, ["data=tuples", "+trainer.num_sanity_val_steps=0", *TINY], tmp_path))
