"""Parameter-space saliency: per-sample filter profiles, reference stats, top filters, input-space maps.

from icasc.saliency import ParameterSaliency
ps = ParameterSaliency(model)
ps.profile(images, targets)  # [B, n_filters]: mean |dL/dW| per conv output filter, model.modules() order
"""

from icasc.saliency.parameter.input_saliency import (
    boost_profile,
    postprocess_input_saliency,
    top_filters,
)
from icasc.saliency.parameter.layers import GRANULARITIES
from icasc.saliency.parameter.per_sample import Magnitude
from icasc.saliency.parameter.profiles import SaliencyProfiles, cross_entropy_per_sample, split_batch
from icasc.saliency.parameter.saliency import PER_SAMPLE_GRADIENT_METHODS, ParameterSaliency
from icasc.saliency.parameter.stats import RunningMoments, SaliencyStats
from icasc.saliency.parameter.variants import L1ParameterSaliency, SmoothParameterSaliency

__all__ = [
    "GRANULARITIES",
    "PER_SAMPLE_GRADIENT_METHODS",
    "L1ParameterSaliency",
    "Magnitude",
    "ParameterSaliency",
    "RunningMoments",
    "SaliencyProfiles",
    "SaliencyStats",
    "SmoothParameterSaliency",
    "boost_profile",
    "cross_entropy_per_sample",
    "postprocess_input_saliency",
    "split_batch",
    "top_filters",
]
