"""Post-hoc saliency methods, one per file, one verb: ``Method(model, ...).attribute(images, target)``."""

from icasc.saliency.base import Attribution, normalize, resolve_target
from icasc.saliency.gradcam import ChannelWeightedAttention, GradCAM
from icasc.saliency.groupcam import GroupCAM
from icasc.saliency.guided_backprop import Deconvolution, GuidedBackprop
from icasc.saliency.guided_gradcam import GuidedGradCAM
from icasc.saliency.integrated_gradients import IntegratedGradients
from icasc.saliency.occlusion import Occlusion
from icasc.saliency.parameter import ParameterSaliency, SaliencyStats
from icasc.saliency.registry import SALIENCY_METHODS, build_method
from icasc.saliency.smoothgrad import SmoothGrad
from icasc.saliency.vanilla import VanillaGradient

__all__ = [
    "SALIENCY_METHODS",
    "Attribution",
    "ChannelWeightedAttention",
    "Deconvolution",
    "GradCAM",
    "GroupCAM",
    "GuidedBackprop",
    "GuidedGradCAM",
    "IntegratedGradients",
    "Occlusion",
    "ParameterSaliency",
    "SaliencyStats",
    "SmoothGrad",
    "VanillaGradient",
    "build_method",
    "normalize",
    "resolve_target",
]
