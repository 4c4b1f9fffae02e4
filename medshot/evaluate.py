"""Metrics: Dice per label, 95th-percentile Hausdorff distance, normalised Euclidean distance."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CLINICAL_NED = 0.05  # landmark error below 5 % of the image diagonal is the usual clinical bar


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    p, t = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = p.sum() + t.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(p, t).sum() / total)


def dice_per_label(prediction: np.ndarray, truth: np.ndarray, labels=None) -> dict[int, float]:
    """Dice for each label of ``truth`` (or of ``labels``) between two label maps."""
    if prediction.shape != truth.shape:
        raise ValueError(f"label maps differ in shape: {prediction.shape} vs {truth.shape}")
    if labels is None:
        labels = [int(v) for v in np.unique(truth) if v != 0]
    return {int(k): dice(prediction == k, truth == k) for k in labels}


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing=None) -> float:
    """Symmetric 95th-percentile surface distance (pixels, or mm with ``spacing``); inf if one is empty."""
    p, t = np.asarray(prediction, bool), np.asarray(truth, bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("inf")
    sp = np.ones(p.ndim) if spacing is None else np.asarray(spacing, float)

    def surface(m):
        return m & ~ndimage.binary_erosion(m, border_value=0)

    sp_, st_ = surface(p), surface(t)
    dt_t = ndimage.distance_transform_edt(~st_, sampling=sp)
    dt_p = ndimage.distance_transform_edt(~sp_, sampling=sp)
    d = np.concatenate([dt_t[sp_], dt_p[st_]])
    return float(np.percentile(d, 95))


def normalized_distance(predicted_xy: np.ndarray, true_xy: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """Euclidean landmark error divided by the image diagonal (``image_shape`` = (H, W)[, D])."""
    predicted_xy = np.asarray(predicted_xy, float)
    true_xy = np.asarray(true_xy, float)
    diag = float(np.sqrt(np.sum(np.square(image_shape))))
    return np.linalg.norm(predicted_xy - true_xy, axis=-1) / diag
