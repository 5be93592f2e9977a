"""Lightning callbacks: Group-CAM fine-tuning augmentation (Group-CAM paper §5)."""

from icasc.callbacks.groupcam_augmentation import GroupCAMAugmentation
from icasc.callbacks.groupcam_blur import GroupCAMBlur
from icasc.callbacks.saliency_blur import Augmented, binarize, compose_augmented

__all__ = ["Augmented", "GroupCAMAugmentation", "GroupCAMBlur", "binarize", "compose_augmented"]
