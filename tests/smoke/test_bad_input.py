"""Bad input fails early with a message that names the fix."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from icasc.losses import ICASCLoss
from icasc.models import ICASCModule
from icasc.tasks.train import run

pytestmark = pytest.mark.slow


def test_num_classes_disagreeing_with_data(train_cfg):
    with pytest.raises(ValueError, match=r"the model was built for 7 classes but the data .* has 10"):
        run(train_cfg("model.num_classes=7", "export=false"))


def test_multilabel_data_with_single_label_loss(train_cfg):
    with pytest.raises(ValueError, match=r"model.loss.multilabel=True"):
        run(train_cfg("data.multilabel=true", "model.loss.multilabel=false", "export=false"))


def test_multilabel_targets_given_to_single_label_loss():
    module = ICASCModule("tiny_cnn", 4)
    with pytest.raises(ValueError, match="multilabel=True"):
        module.compute_loss(torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0, 0, 1], [0, 1.0, 0, 0]]))


def test_unknown_layer_in_config_lists_valid_names(train_cfg):
    # Hydra wraps the error; its message is what the user reads.
    with pytest.raises(
        InstantiationException, match=r"unknown layer 'layer4'.*valid layer names: .*layer1.*layer2"
    ):
        instantiate(train_cfg("model.attention.inner_layer=layer4").model)


def test_unknown_backbone_lists_valid_names(train_cfg):
    with pytest.raises(InstantiationException, match=r"resnet9000.*resnet18.*tiny_cnn"):
        instantiate(train_cfg("model.backbone.name=resnet9000").model)


def test_targets_out_of_range_are_caught():
    module = ICASCModule("tiny_cnn", 4)
    with pytest.raises(ValueError, match=r"out of range \[0, 4\).*num_classes"):
        module.compute_loss(torch.randn(2, 3, 32, 32), torch.tensor([0, 9]))


@pytest.mark.parametrize("term", ["classification", "separation_inner"])
def test_non_finite_loss_stops_naming_step_and_term(monkeypatch, term):
    module = ICASCModule("tiny_cnn", 4, loss=ICASCLoss())
    module.log = lambda *a, **k: None  # no trainer attached in this unit-level check
    original = ICASCLoss.__call__

    def poisoned(self, logits, targets, attention=None, scale=1.0):
        total, terms = original(self, logits, targets, attention, scale)
        terms[term] = terms[term] * math.nan
        return total + terms[term], terms

    monkeypatch.setattr(ICASCLoss, "__call__", poisoned)
    batch = {"image": torch.randn(2, 3, 32, 32), "target": torch.tensor([0, 1])}
    with pytest.raises(FloatingPointError, match=rf"global step 0 .*batch 3.*\['{term}'"):
        module.training_step(batch, 3)


def test_nan_inputs_stop_training_through_the_trainer(train_cfg, tmp_path):
    import lightning as L

    from icasc.data import SyntheticDataModule

    class NaNData(SyntheticDataModule):
        def train_dataloader(self):
            for batch in super().train_dataloader():
                batch["image"][0] = math.nan
                yield batch

    dm = NaNData(train_size=32, val_size=16, test_size=16, batch_size=16)
    module = ICASCModule("tiny_cnn", 10)
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        inference_mode=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at global step 0"):
        trainer.fit(module, datamodule=dm)
