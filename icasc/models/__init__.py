"""Models: backbone registry (with metadata), the ICASC LightningModule and export."""

from icasc.models.backbones import (
    BackboneEntry,
    build_backbone,
    default_attention_layers,
    get_backbone,
    list_backbones,
    register_backbone,
    unregister_backbone,
)
from icasc.models.module import ICASCModule

__all__ = [
    "BackboneEntry",
    "ICASCModule",
    "build_backbone",
    "default_attention_layers",
    "get_backbone",
    "list_backbones",
    "register_backbone",
    "unregister_backbone",
]
