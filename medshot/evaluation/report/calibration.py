"""Are the scores right? Per method: ROC AUC, expected calibration error and a reliability diagram.

A label's ``score`` claims to be the probability that its Dice is at least 0.5, a landmark's
``confidence`` that it lies within 2 % of the image diagonal (:mod:`medshot.pipeline.confidence`).
The AUC says whether failures score lower than successes; the expected calibration error (ECE) and
the reliability diagram say whether the numbers mean what they claim (of the results scored about
0.8, about 80 % should be right). Methods without scores (registration baselines) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..metrics import expected_calibration_error, failure_auc, reliability

LANDMARK_BAR = 0.02  # a landmark is right within 2 % of the image diagonal (what its confidence claims)
KINDS = {"label": "label (Dice >= 0.5)", "landmark": "landmark (NED <= 0.02)"}


def _right(row: dict) -> bool | None:
    """Whether a scored row is right by its score's own definition (None: not a scorable row)."""
    if row.get("kind") == "label" and str(row.get("in_truth", "1")) in ("1", "True"):
        value = _number(row.get("dice"))
        return None if value is None else value >= 0.5
    if row.get("kind") == "landmark":
        value = _number(row.get("ned"))
        return None if value is None else value <= LANDMARK_BAR
    return None


def _number(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def scored(rows: Sequence[dict], method: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, right)`` of one method's scored rows of one kind (a failed case's rows score 0)."""
    scores, right = [], []
    for r in rows:
        if r.get("method") != method or r.get("kind") != kind:
            continue
        ok = _right(r)
        score = 0.0 if r.get("status") == "failed" else _number(r.get("score"))
        if ok is None or score is None:
            continue
        scores.append(score)
        right.append(ok)
    return np.array(scores, float), np.array(right, bool)


def calibration_table(rows: Sequence[dict], methods: Sequence[str]) -> list[list]:
    """Rows ``[method, kind, n, wrong, AUC, ECE]`` for every method and kind that has scores."""
    out = []
    for method in methods:
        for kind in KINDS:
            scores, right = scored(rows, method, kind)
            if len(scores):
                out.append([method, kind, len(scores), int((~right).sum()), failure_auc(scores, ~right),
                            expected_calibration_error(scores, right)])
    return out


def plot_reliability(rows: Sequence[dict], methods: Sequence[str]) -> bytes | None:
    """The reliability diagram (mean score against the share right, per score bin) of every scored method."""
    from .plots import _figure_png, _pyplot

    curves = [(m, k, reliability(*scored(rows, m, k))) for m in methods for k in KINDS]
    curves = [c for c in curves if c[2]]
    if not curves:
        return None
    pyplot = _pyplot()
    kinds = sorted({k for _, k, _ in curves}, key=list(KINDS).index)
    fig, axes = pyplot.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="perfectly calibrated")
        for method, k, table in curves:
            if k != kind:
                continue
            predicted, observed, counts = (np.array(v) for v in zip(*table))
            ax.plot(predicted, observed, marker="o", label=method)
            for x, y, n in zip(predicted, observed, counts):
                ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7, color="0.4")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("score (mean in its bin)")
        ax.set_ylabel("share right")
        ax.set_title(KINDS[kind], fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _figure_png(fig)
