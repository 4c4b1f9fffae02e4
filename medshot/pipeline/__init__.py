"""One template (or several, fused) -> landmarks and label maps in any number of targets (2D images and volumes)."""

from .ensemble import Ensemble
from .oneshot import OneShot
from .result import LOW_CONFIDENCE_SCORE, LandmarkResult, TargetResult, score_status

__all__ = ["LOW_CONFIDENCE_SCORE", "Ensemble", "LandmarkResult", "OneShot", "TargetResult", "score_status"]
