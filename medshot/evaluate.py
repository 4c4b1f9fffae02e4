"""Kept for callers of ``medshot.evaluate``: the metrics live in :mod:`medshot.evaluation.metrics`."""

from .evaluation.metrics import CLINICAL_NED, dice, dice_per_label, hd95, normalized_distance

__all__ = ["CLINICAL_NED", "dice", "dice_per_label", "hd95", "normalized_distance"]
