"""Calibrated scores: how likely a label's mask and a landmark are right, from evidence medshot has anyway.

A label's ``score`` estimates the probability that its Dice is at least 0.5; a landmark's
``confidence`` the probability that it lies within 2 % of the image diagonal of the truth. Both are
logistic models of a few measurements that do not depend on the task:

- how well the target's edges line up with the template's under the chosen correspondence, over the
  whole region and around the label or landmark alone (NGF agreement, :mod:`medshot.match.verify`);
- how much of the template's region the target's field of view holds;
- the *sharpness* of that agreement: how much better it is in place than a little to the side (a
  structure that is absent, or a match driven by noise, agrees about as well anywhere);
- the *margin*: by how much the chosen correspondence beats the best candidate that puts the
  structure somewhere else (two equally good, disagreeing answers mean the choice is a coin toss);
- *stability*: how much the label moves between the refinements of the chosen placement that were
  tried (the affine alone, demons, descriptor block matching) - the agreement of several
  registrations, as in multi-atlas segmentation;
- for masks, whether the carried region looks like the template's structure (its contrast against a
  ring around it, in normalised intensity), and the structure's share of the template image (small
  structures are harder); for
  landmarks, how distinct the re-matched descriptor peak is, whether the match is mutual, and how
  far re-matching moved the carried point.

The coefficients are fitted on the *tune* half of the development data (every tune-half 2D image as
template in turn, a few tune-half volumes as templates, plus negative controls: each template against
images of other tasks, where the structure is absent; ``benchmarks/calibrate_score.py`` prints them;
refitted for issue 21 on the evidence of the returned results, one model for images and one for
volumes), and are checked on the report half by ``benchmarks/evaldata_2d.py`` and
``benchmarks/score_quality.py`` (ROC AUC against Dice < 0.5, expected calibration error). Of
the measurements below the models use the few named in ``LABEL_FEATURES`` and
``LANDMARK_FEATURES``; the others are kept in each result's ``evidence`` for inspection.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .result import LOW_CONFIDENCE_SCORE as LOW


@dataclass
class LabelEvidence:
    """Measurements about one label's result in one target (all in [0, 1] unless said)."""

    agreement: float  # NGF agreement over the template's whole region of interest
    local: float  # NGF agreement around this label (a band of its size around it)
    present: float  # fraction of the region inside the target's field of view
    margin: float  # chosen verification minus that of the best candidate placing this label elsewhere
    stability: float  # mean Dice of the label carried by the chosen field and by each alternative refinement
    appearance: float  # exp(-|difference of the inside-minus-ring contrast, target vs template| / 0.1)
    sharpness: float  # agreement in place minus next to it (the region shifted by a quarter of its radius)
    local_sharpness: float  # likewise around this label, shifted by its radius
    relative_size: float  # log10 of the label's share of the template image
    size_ratio: float = 1.0  # the returned region's area / the carried region's (working grid)
    consistency: float = 1.0  # Dice of the returned region and the carried one


@dataclass
class LandmarkEvidence:
    agreement: float
    local: float  # NGF agreement on a disc around the landmark
    present: float
    margin: float
    peak: float  # distinctness of the re-matched descriptor peak, in [0, 1]
    mutual: float  # 1 when matching back from the target lands on the template point
    moved: float  # re-matching shift / search radius
    sharpness: float
    local_sharpness: float  # around this landmark, shifted by 2 % of the diagonal


# The evidence the models use, chosen on the tune half by held-out AUC (leave one task out, the negative
# controls a group of their own: ``benchmarks/calibrate_score.py --select``); the simplest of the best.
# Landmarks are fitted on every task (the mask tasks' label centroids as derived landmarks), no longer on
# the cephalograms alone; there the placement's margin over rival candidates and the field of view's
# share count (a landmark that an equally good placement puts elsewhere is a coin toss).
LABEL_FEATURES = ("stability", "appearance", "sharpness", "relative_size")
LANDMARK_FEATURES = ("present", "margin", "peak", "sharpness", "local_sharpness")
# Volumes (92 tune-half landmarks): the earlier three held out better than these five (AUC 0.759 vs 0.748, ECE
# 0.139 vs 0.301, leave one task out), so their model keeps them.
LANDMARK_FEATURES_3D = ("agreement", "peak", "local_sharpness")
# Fitted by benchmarks/calibrate_score.py on the tune half (standardised features: (x - mean) / sd).
LABEL_MODEL = {
    "mean": {"stability": 0.65996, "appearance": 0.51394, "sharpness": 0.08508, "relative_size": -1.9144},
    "sd": {"stability": 0.22919, "appearance": 0.28336, "sharpness": 0.05, "relative_size": 0.61638},
    "coef": {"stability": 1.491, "appearance": 0.3679, "sharpness": 1.9005, "relative_size": 0.8416},
    "intercept": -0.0271,
}
LANDMARK_MODEL = {
    "mean": {"present": 0.9827, "margin": 0.02591, "peak": 0.45661, "sharpness": 0.09646, "local_sharpness": 0.05864},
    "sd": {"present": 0.05324, "margin": 0.05, "peak": 0.2851, "sharpness": 0.05, "local_sharpness": 0.05345},
    "coef": {"present": 0.2467, "margin": 0.6583, "peak": 0.5534, "sharpness": 0.7197, "local_sharpness": 0.4855},
    "intercept": -0.0078,
}


def features(evidence) -> dict[str, float]:
    return {f.name: float(getattr(evidence, f.name)) for f in fields(evidence)}


def logistic(evidence, model: dict) -> float:
    """The model's probability for one piece of evidence."""
    x = features(evidence)
    z = model["intercept"] + sum(model["coef"][k] * (x[k] - model["mean"][k]) / model["sd"][k] for k in model["coef"])
    return float(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))))


# Volumes have their own models (fitted on the tune half of the volume tasks): their working grids,
# verifiers and evidence differ in scale from a 2D image's. Same features, same form.
LABEL_MODEL_3D = {
    "mean": {"stability": 0.43353, "appearance": 0.65355, "sharpness": 0.20575, "relative_size": -2.53578},
    "sd": {"stability": 0.30184, "appearance": 0.25504, "sharpness": 0.11283, "relative_size": 0.72709},
    "coef": {"stability": 1.4462, "appearance": -0.1054, "sharpness": 1.2993, "relative_size": 1.4349},
    "intercept": -0.5626,
}
LANDMARK_MODEL_3D = {
    "mean": {"agreement": 0.37223, "peak": 0.45006, "local_sharpness": 0.03088},
    "sd": {"agreement": 0.15436, "peak": 0.2749, "local_sharpness": 0.05},
    "coef": {"agreement": 0.9343, "peak": 1.1152, "local_sharpness": -0.4027},
    "intercept": -0.9284,
}


def label_model(ndim: int) -> dict:
    return LABEL_MODEL_3D if ndim == 3 else LABEL_MODEL


def landmark_model(ndim: int) -> dict:
    return LANDMARK_MODEL_3D if ndim == 3 else LANDMARK_MODEL


def label_score(evidence: LabelEvidence, ndim: int = 2) -> float:
    """Estimated probability that the label's Dice is at least 0.5."""
    return logistic(evidence, label_model(ndim))


def landmark_confidence(evidence: LandmarkEvidence, ndim: int = 2) -> float:
    """Estimated probability that the landmark lies within 2 % of the image diagonal of the truth."""
    return logistic(evidence, landmark_model(ndim))


# What a person is told when a result is flagged: the measurement that pulled its score down most.
LABEL_REASONS = {
    "agreement": "the target's edges disagree with the template's",
    "local": "the edges around this structure disagree with the template's",
    "present": "part of the structure lies outside the target's field of view",
    "margin": "another placement of the template verifies about as well (placement ambiguous)",
    "stability": "placement disagrees between the candidate registrations",
    "appearance": "the region's contrast is unlike the template structure's",
    "sharpness": "edges agree about as well off place as in place (the structure may be absent)",
    "local_sharpness": "around this structure, edges agree about as well off place (it may be absent)",
    "relative_size": "a small structure, hard to place",
}
LANDMARK_REASONS = {
    "agreement": "the target's edges disagree with the template's",
    "local": "the edges around this landmark disagree with the template's",
    "present": "the landmark's surroundings lie partly outside the target's field of view",
    "margin": "another placement of the template verifies about as well (placement ambiguous)",
    "peak": "no distinctive match near it (a flat or repetitive region): its position is uncertain",
    "mutual": "matching back from the target does not land on the template's point",
    "moved": "re-matching moved it far from where the registration put it",
    "sharpness": "edges agree about as well off place as in place (the anatomy may be absent)",
    "local_sharpness": "its surroundings agree about as well a little to the side (position ambiguous)",
}


def weakest(evidence, model: dict, phrases: dict[str, str]) -> str:
    """The phrase for the model term that lowers the probability most (the most negative contribution)."""
    x = features(evidence)
    terms = {k: model["coef"][k] * (x[k] - model["mean"][k]) / model["sd"][k] for k in model["coef"]}
    return phrases[min(terms, key=terms.get)]


def _agreeing(consistency: float) -> float:
    """Probability factor that a mask agreeing this much (Dice) with the placed structure is right.

    The model's evidence says whether the *placement* is right; a mask that then overlaps the placed
    structure by Dice ``c`` has a Dice with the truth of about ``c``, so it passes the bar of 0.5 about
    when ``c`` does: a logistic step at 0.5, its width (0.05) a tenth of the bar. For the default
    segmenter (the carried mask itself) ``c`` is about 1 and the factor 1.
    """
    return float(1.0 / (1.0 + np.exp(-(consistency - 0.5) / 0.05)))


def mask_score(evidence: LabelEvidence | None, own: float | None, nonempty: bool,
               ndim: int = 2) -> tuple[float, str]:
    """A label's score and, below :data:`LOW`, the reason a person understands.

    The calibrated probability that the placement is right, from evidence about the returned mask,
    times how well that mask agrees with the placed structure, times the segmenter's own estimate where
    it has one (SAM's predicted IoU, the random walker's
    decisiveness): the mask is right only where both are. A label with no template mask (prompt
    points only) has the segmenter's estimate alone; an empty mask scores 0.
    """
    if not nonempty:
        return 0.0, "the segmenter returned an empty mask"
    p = 1.0 if evidence is None else label_score(evidence, ndim) * _agreeing(evidence.consistency)
    if own is not None:
        p *= float(own)
    if p >= LOW:
        return p, ""
    if evidence is not None and evidence.size_ratio < 0.5:
        return p, "the region is much smaller than the template's"
    if evidence is not None and evidence.size_ratio > 2.0:
        return p, "the region is much larger than the template's"
    if evidence is not None and evidence.consistency < 0.5:
        return p, "the segmenter's mask disagrees with where the template's structure was placed"
    if own is not None and (evidence is None or own < 0.5):
        return p, f"the segmenter's own estimate is low ({own:.2f})"
    return p, weakest(evidence, label_model(ndim), LABEL_REASONS)


def point_score(evidence: LandmarkEvidence, ndim: int = 2) -> tuple[float, str]:
    """A landmark's confidence and, below :data:`LOW`, the reason a person understands."""
    p = landmark_confidence(evidence, ndim)
    return p, "" if p >= LOW else weakest(evidence, landmark_model(ndim), LANDMARK_REASONS)


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
