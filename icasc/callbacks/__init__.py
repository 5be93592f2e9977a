"""Lightning callbacks: Group-CAM fine-tuning augmentation (Group-CAM paper §5), exact resume (RunState)."""

from icasc.callbacks.groupcam_augmentation import GroupCAMAugmentation
from icasc.callbacks.groupcam_blur import GroupCAMBlur
from icasc.callbacks.run_state import RunState
from icasc.callbacks.saliency_blur import Augmented, binarize, compose_augmented

__all__ = ["Augmented", "GroupCAMAugmentation", "GroupCAMBlur", "RunState", "binarize", "compose_augmented"]
