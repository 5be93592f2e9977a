"""Training-time, differentiable class-specific attention (pure torch)."""

from icasc.attention.capture import FeatureCapture, resolve_layer
from icasc.attention.functional import channel_weighted, grad_cam, max_normalize
from icasc.attention.mechanism import ATTENTION_METHODS, AttentionMechanism, AttentionOutput, select_classes

__all__ = [
    "ATTENTION_METHODS",
    "AttentionMechanism",
    "AttentionOutput",
    "FeatureCapture",
    "channel_weighted",
    "grad_cam",
    "max_normalize",
    "resolve_layer",
    "select_classes",
]
