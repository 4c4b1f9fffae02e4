"""Overlap and distance metrics, written once for arrays of any number of dimensions.

Masks and label maps are arrays of one shape (2D ``(H, W)`` or 3D ``(I, J, K)``); ``spacing``
is the size of one pixel or voxel in mm along each array axis, in the same order. Points are
``(..., ndim)`` coordinates in the same units as the arrays' indices (any fixed axis order, as
long as ``spacing`` follows it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..core.labels import dice  # noqa: F401 - medshot's own Dice (the template also uses it), part of the metrics

CLINICAL_NED = 0.05  # landmark error below 5 % of the image diagonal is the usual clinical bar


def dice_per_label(prediction: np.ndarray, truth: np.ndarray, labels: Sequence[int] | None = None) -> dict[int, float]:
    """Dice for each label of ``truth`` (or of ``labels``) between two label maps of one shape.

    Raises
    ------
    ValueError
        When the shapes differ.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"label maps differ in shape: {prediction.shape} vs {truth.shape}")
    if labels is None:
        labels = [int(v) for v in np.unique(truth) if v != 0]
    return {int(k): dice(prediction == k, truth == k) for k in labels}


def _surface(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary elements: those with a face neighbour outside it (the array edge counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(prediction: np.ndarray, truth: np.ndarray,
                      spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distances from each boundary element of one mask to the nearest boundary element of the other.

    Parameters
    ----------
    prediction, truth : ndarray of bool, shape (...)
        Non-empty masks of one shape.
    spacing : sequence of float, optional
        Element size along each axis (mm); default 1 (distances in pixels / voxels).

    Returns
    -------
    ndarray, shape (n_prediction_surface + n_truth_surface,)
        Prediction-to-truth distances followed by truth-to-prediction distances.
    """
    p, t = np.asarray(prediction, bool), np.asarray(truth, bool)
    sp = np.ones(p.ndim) if spacing is None else np.asarray(spacing, float)
    if sp.shape != (p.ndim,):
        raise ValueError(f"spacing needs {p.ndim} values (one per axis), got {tuple(np.atleast_1d(sp))}")
    sp_, st_ = _surface(p), _surface(t)
    dt_t = ndimage.distance_transform_edt(~st_, sampling=sp)
    dt_p = ndimage.distance_transform_edt(~sp_, sampling=sp)
    return np.concatenate([dt_t[sp_], dt_p[st_]])


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the boundaries of two masks.

    Parameters
    ----------
    prediction, truth : ndarray of bool, shape (...)
        Masks of one shape (2D or 3D).
    spacing : sequence of float, optional
        Element size along each array axis (mm); without it the distance is in pixels / voxels.

    Returns
    -------
    float
        The 95th percentile of :func:`surface_distances` (both directions pooled); 0.0 when both
        masks are empty, ``inf`` when exactly one is.
    """
    p, t = np.asarray(prediction, bool), np.asarray(truth, bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("inf")
    return float(np.percentile(surface_distances(p, t, spacing), 95))


def point_distance(predicted: np.ndarray, true: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Euclidean distance between points, scaled per axis by ``spacing`` (mm) when given.

    Parameters
    ----------
    predicted, true : ndarray, shape (..., ndim)
        Coordinates in array-index units.
    spacing : sequence of float, optional
        Element size along each coordinate axis (mm). Exact for grids whose axes are orthogonal
        in the world (any rotation of the grid), as NIfTI/DICOM volumes and 2D images are.

    Returns
    -------
    ndarray, shape (...)
    """
    d = np.asarray(predicted, float) - np.asarray(true, float)
    if spacing is not None:
        d = d * np.asarray(spacing, float)
    # hypot.reduce: accurate without overflow, and for two axes exactly np.hypot(dx, dy).
    return np.hypot.reduce(d, axis=-1)


def normalized_distance(predicted_xy: np.ndarray, true_xy: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """Euclidean landmark error divided by the image diagonal.

    Parameters
    ----------
    predicted_xy, true_xy : ndarray, shape (..., ndim)
        Points in pixels / voxels (any axis order; both alike).
    image_shape : tuple of int
        ``(H, W)`` or ``(I, J, K)``: the diagonal is ``sqrt(sum(shape**2))`` elements.

    Returns
    -------
    ndarray, shape (...)
    """
    predicted_xy = np.asarray(predicted_xy, float)
    true_xy = np.asarray(true_xy, float)
    diag = float(np.sqrt(np.sum(np.square(image_shape))))
    return np.linalg.norm(predicted_xy - true_xy, axis=-1) / diag


def reliability(probability: np.ndarray, outcome: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """Per probability bin (equal width on [0, 1]): ``(mean predicted, observed frequency, count)``.

    Non-finite probabilities are left out; empty bins are omitted.
    """
    p = np.asarray(probability, float)
    y = np.asarray(outcome, float)
    keep = np.isfinite(p)
    p, y = p[keep], y[keep]
    which = np.minimum((p * bins).astype(int), bins - 1)
    return [(float(p[which == b].mean()), float(y[which == b].mean()), int(np.sum(which == b)))
            for b in range(bins) if np.any(which == b)]


def expected_calibration_error(probability: np.ndarray, outcome: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the count-weighted mean |predicted - observed| over :func:`reliability`'s bins.

    0 for a perfectly calibrated score (of the results given 0.8, 80 % are right); NaN with no finite score.
    """
    table = reliability(probability, outcome, bins)
    total = sum(n for _, _, n in table)
    return float(sum(n * abs(p - o) for p, o, n in table) / total) if total else float("nan")


def failure_auc(scores: np.ndarray, failed: np.ndarray) -> float:
    """ROC AUC of a score as a detector of failures: the probability that a random failure scores below a random
    success (ties count half); 1.0 = every failure below every success, 0.5 = chance, NaN without both kinds."""
    scores, failed = np.asarray(scores, float), np.asarray(failed, bool)
    keep = np.isfinite(scores)
    pos, neg = scores[keep & failed], scores[keep & ~failed]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    below = (pos[:, None] < neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(below / (len(pos) * len(neg)))
