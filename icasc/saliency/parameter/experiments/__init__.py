"""Verification experiments of parameter-space saliency, one per file (Fig. 10, App. A.2–A.9, B.1).

Each is a pure function of a model, images and filter choices that returns a small result object with a
``summary()``; experiments that change weights work on a deep copy and never touch the caller's model.
Filters are profile columns: ``ParameterSaliency.filters[column] == (layer_name, output_channel)``.
"""

from icasc.saliency.parameter.experiments._common import ConfidenceChange, Filter
from icasc.saliency.parameter.experiments.masking import (
    MaskingResult,
    mask_pixels,
    masking_experiment,
    random_pixel_mask,
    top_pixel_mask,
)
from icasc.saliency.parameter.experiments.neighbours import (
    NeighbourAgreement,
    Neighbours,
    nearest,
    neighbour_agreement,
)
from icasc.saliency.parameter.experiments.perturbation import perturbation_experiment
from icasc.saliency.parameter.experiments.pruning import prune_filters, pruning_experiment
from icasc.saliency.parameter.experiments.tuning import (
    TuningResult,
    gradient_norm,
    masked_gradients,
    renormalize,
    tune_filters,
    tuning_experiment,
)

__all__ = [
    "ConfidenceChange",
    "Filter",
    "MaskingResult",
    "NeighbourAgreement",
    "Neighbours",
    "TuningResult",
    "gradient_norm",
    "mask_pixels",
    "masked_gradients",
    "masking_experiment",
    "nearest",
    "neighbour_agreement",
    "perturbation_experiment",
    "prune_filters",
    "pruning_experiment",
    "random_pixel_mask",
    "renormalize",
    "top_pixel_mask",
    "tune_filters",
    "tuning_experiment",
]
