"""ICASC losses: pure functions (Eq. 3-5) and the combined objective (Eq. 6)."""

from icasc.losses.functional import attention_consistency, attention_separation, target_mask
from icasc.losses.icasc import DEFAULT_WEIGHTS, ICASCLoss

__all__ = [
    "DEFAULT_WEIGHTS",
    "ICASCLoss",
    "attention_consistency",
    "attention_separation",
    "target_mask",
]
