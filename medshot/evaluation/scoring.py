"""One prediction against the ground truth -> the rows of cases.csv (any number of dimensions).

A case that raised an error is scored too (:func:`failure_rows`): every label it should have
segmented gets Dice 0 and every landmark it should have found the worst distance an image allows,
so that failures count in the means instead of vanishing from them.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import MedshotError
from .cases import Case
from .metrics import dice, hd95, normalized_distance, point_distance
from .runner import Prediction


def score_case(prediction: Prediction, template_labels: dict[int, str], target: Case, truth: np.ndarray | None,
               truth_points: dict[str, np.ndarray], label_names: dict[int, str],
               point_columns: dict[str, int]) -> list[dict]:
    """cases.csv rows (without template/target/method/timing) of one prediction against the truth.

    One row per label of the template or the truth (``in_truth`` = 0 marks labels the truth lacks;
    they are kept here and left out of the statistics) and one per landmark the prediction and the
    truth share by name.

    Parameters
    ----------
    prediction : Prediction
        Label map (``target.shape``) and points (array-axis order) in the target's array space.
    template_labels : dict of int to str
        The template's labels and names.
    target : Case
        Its ``shape`` and ``spacing`` (mm per array axis; None = pixels / voxels only) scale the
        distances; its ``labels`` say which labels the truth holds.
    truth : ndarray of int, shape = target.shape, or None
        Ground-truth label map.
    truth_points : dict of str to ndarray, shape (ndim,)
        Ground-truth landmarks, array-axis order, in the order rows are written.
    label_names : dict of int to str
        Names from the dataset (take precedence over the template's).
    point_columns : dict of str to int
        cases.csv coordinate column suffix -> array axis (2D ``{"x": 1, "y": 0}``).

    Returns
    -------
    list of dict
        ``hd95_px`` / ``distance_px`` are in array elements (pixels or voxels); the ``_mm``
        columns are filled when the spacing is known; ``ned`` is the distance over the diagonal of
        ``target.shape``.

    Raises
    ------
    MedshotError
        When nothing can be scored (no shared label or landmark).
    """
    rows: list[dict] = []
    if prediction.label_map is not None and truth is not None:
        for label in sorted(set(template_labels) | set(target.labels)):
            p, t = prediction.label_map == label, truth == label
            row = {"kind": "label", "item": label, "in_truth": int(label in target.labels),
                   "item_name": label_names.get(label) or template_labels.get(label, f"label {label}"),
                   "dice": dice(p, t), "hd95_px": hd95(p, t), "score": prediction.scores.get(label)}
            if target.spacing is not None:
                row["hd95_mm"] = hd95(p, t, target.spacing)
            rows.append(row)
    if truth_points and prediction.points:
        for name, true in truth_points.items():
            if name not in prediction.points:
                continue
            pred = np.asarray(prediction.points[name], float)
            true = np.asarray(true, float)
            row = {"kind": "landmark", "item": name, "item_name": name, "in_truth": 1,
                   "ned": float(normalized_distance(pred, true, target.shape)),
                   "distance_px": float(np.linalg.norm(pred - true)),
                   "score": prediction.confidence.get(name)}
            for suffix, axis in point_columns.items():
                row[f"pred_{suffix}"], row[f"true_{suffix}"] = pred[axis], true[axis]
            if target.spacing is not None:
                row["distance_mm"] = float(point_distance(pred, true, target.spacing))
            rows.append(row)
    if not rows:
        raise MedshotError("nothing to score: the template and the truth share no label or landmark name")
    return rows


def failure_rows(template_labels: dict[int, str], template_landmarks: list[str], target: Case, has_truth_mask: bool,
                 truth_points: dict[str, np.ndarray], label_names: dict[int, str], reason: str) -> list[dict]:
    """cases.csv rows of a case that raised an error, scored as a failure.

    The rows :func:`score_case` would have written, with ``status = failed`` and ``reason``: each
    label Dice 0 and HD95 ``inf`` (as an empty prediction); each landmark the template and the
    truth share NED 1, the target's diagonal (``distance_px``, ``distance_mm``: as far off as a
    point in the image can be). A case with nothing to score still gets one ``kind = case`` row,
    so that it is listed.
    """
    failed = {"status": "failed", "reason": reason}
    rows: list[dict] = []
    if has_truth_mask:
        for label in sorted(set(template_labels) | set(target.labels)):
            row = {"kind": "label", "item": label, "in_truth": int(label in target.labels),
                   "item_name": label_names.get(label) or template_labels.get(label, f"label {label}"),
                   "dice": 0.0, "hd95_px": float("inf"), **failed}
            if target.spacing is not None:
                row["hd95_mm"] = float("inf")
            rows.append(row)
    shape = np.asarray(target.shape, float)
    for name in truth_points:
        if name not in template_landmarks:
            continue
        row = {"kind": "landmark", "item": name, "item_name": name, "in_truth": 1, "ned": 1.0,
               "distance_px": float(np.sqrt(np.sum(shape**2))), **failed}
        if target.spacing is not None:
            row["distance_mm"] = float(np.sqrt(np.sum((shape * np.asarray(target.spacing, float)) ** 2)))
        rows.append(row)
    return rows or [{"kind": "case", "item": "", "item_name": "", "in_truth": "", **failed}]
