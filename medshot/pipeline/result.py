"""What medshot found in one target: landmarks and a label map, with their scores."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.image import Image

# A target/label whose score falls below this is flagged ``low_confidence`` for review (see README):
# scores and confidences are calibrated probabilities of being right.
LOW_CONFIDENCE_SCORE = 0.5


def score_status(score: float) -> str:
    """``"ok"`` or ``"low_confidence"`` for a score or landmark confidence in [0, 1]."""
    return "ok" if score >= LOW_CONFIDENCE_SCORE else "low_confidence"


@dataclass
class LandmarkResult:
    """A landmark found in a target.

    Attributes
    ----------
    name : str
    point : ndarray (ndim,)
        Array indices of the target image (row, col[, slice]).
    world : ndarray (3,)
        World RAS millimetres.
    confidence : float
        Estimated probability that it lies within 2 % of the image diagonal of the truth (NaN when
        not estimated, e.g. for a baseline).
    mutual : bool
        Whether matching back from the target lands on the template point.
    reason : str
        Why the confidence is low, in words (empty when it is not).
    """

    name: str
    point: np.ndarray
    world: np.ndarray
    confidence: float
    mutual: bool = True
    reason: str = ""


@dataclass
class TargetResult:
    """What medshot found in one target (points are array indices of ``image``)."""

    image: Image
    landmarks: list[LandmarkResult] = field(default_factory=list)
    label_map: np.ndarray | None = None  # on the image's grid, the template's labels
    scores: dict[int, float] = field(default_factory=dict)  # label -> estimated P(Dice >= 0.5)
    reasons: dict[int, str] = field(default_factory=dict)  # label -> why its score is low, in words ("" if not)
    seconds: float = 0.0
    correspondence_score: float = 0.0
    correspondence: str = ""  # which candidate correspondence was chosen
    evidence: dict = field(default_factory=dict)  # label or landmark name -> what its score was computed from
    templates: dict[str, float] = field(default_factory=dict)  # several templates: image name -> fusion weight

    @property
    def landmark_points(self) -> np.ndarray:
        """``(N, ndim)`` array indices of the landmarks found."""
        return np.array([lm.point for lm in self.landmarks], float).reshape(-1, self.image.ndim)
