"""Metrics: functional core plus thin torchmetrics classes.

- Deletion / insertion AUC (Group-CAM §4.3): :func:`insertion_deletion`, :class:`InsertionDeletion`.
- Pointing game (Grad-CAM §4.3, Group-CAM §4.4): :func:`pointing_game_hits`, :class:`PointingGame`.
- Weakly-supervised localisation (Grad-CAM §4.1): :func:`localization_error`, :class:`LocalizationError`.
- KS separation of the true and the most confusing class (ICASC §4.2.1, Fig. 9): :func:`ks_statistic`,
  :func:`true_and_confused_probabilities`, :class:`KSStatistic` (:class:`KSThreshold`, :class:`KSSign`).
- Faithfulness vs occlusion (Grad-CAM §5.3): :func:`spearman`, :func:`faithfulness`, :class:`Faithfulness`.
- Sanity check (Group-CAM §4.5): :func:`sanity_check`, :func:`ssim`.
- Attention diagnostics per map (mass inside the box, peakedness, pointing game): :func:`mass_in_box`,
  :func:`peakedness`, :func:`attention_stats`; the overlap of the true and the most confusing class's maps
  (ICASC Eq. 3 as a fixed yardstick): :func:`attention_overlap`.
- What each ICASC term's descent does to each map's mass in the box: :func:`descent_effects`.
"""

from icasc.metrics.attention_stats import attention_overlap, attention_stats, mass_in_box, peakedness
from icasc.metrics.descent_effects import descent_effects
from icasc.metrics.faithfulness import Faithfulness, faithfulness, rankdata, spearman
from icasc.metrics.insertion_deletion import (
    InsertionDeletion,
    insertion_deletion,
    step_counts,
)
from icasc.metrics.ks import (
    KSSign,
    KSStatistic,
    KSThreshold,
    ecdf,
    ks_curves,
    ks_sign,
    ks_statistic,
    most_confused,
    true_and_confused_probabilities,
)
from icasc.metrics.localization import (
    LocalizationError,
    box_iou,
    connected_components,
    largest_component_boxes,
    localization_correct,
    localization_error,
)
from icasc.metrics.pointing_game import PointingGame, pointing_game_hits
from icasc.metrics.sanity import parameter_layers, sanity_check, ssim

__all__ = [
    "Faithfulness",
    "InsertionDeletion",
    "KSSign",
    "KSStatistic",
    "KSThreshold",
    "LocalizationError",
    "PointingGame",
    "attention_overlap",
    "attention_stats",
    "box_iou",
    "connected_components",
    "descent_effects",
    "ecdf",
    "faithfulness",
    "insertion_deletion",
    "ks_curves",
    "ks_sign",
    "ks_statistic",
    "largest_component_boxes",
    "localization_correct",
    "localization_error",
    "mass_in_box",
    "most_confused",
    "parameter_layers",
    "peakedness",
    "pointing_game_hits",
    "rankdata",
    "sanity_check",
    "spearman",
    "ssim",
    "step_counts",
    "true_and_confused_probabilities",
]
