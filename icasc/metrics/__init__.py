"""Metrics: functional core plus thin torchmetrics classes."""

from icasc.metrics.pointing_game import pointing_game_hits

__all__ = ["pointing_game_hits"]
