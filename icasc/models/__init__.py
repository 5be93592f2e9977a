"""Models: backbone registry, the ICASC LightningModule and export."""

from icasc.models.backbones import build_backbone, default_attention_layers, list_backbones, register_backbone
from icasc.models.module import ICASCModule

__all__ = ["ICASCModule", "build_backbone", "default_attention_layers", "list_backbones", "register_backbone"]
