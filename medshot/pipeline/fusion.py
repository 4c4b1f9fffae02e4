"""Fusing what several templates found in one target: label maps by a weighted vote, landmarks by a robust mean.

Each template's result comes with calibrated scores (:mod:`medshot.pipeline.confidence`). A
template's weight for one label is ``exp((score - best score) / temperature)``: the templates that
match best count fully and one that matches much worse than the best (another anatomy, a failed
placement) counts for almost nothing. In the *local* vote each template's weight is further
multiplied, voxel by voxel, by how well its warped image agrees with the target around that voxel
(local normalised cross-correlation); the plain *vote* leaves that out. Landmarks are fused as the
weighted geometric median of the templates' points (weight: template weight x confidence), so one
template that puts a landmark somewhere else cannot drag it.

Everything works on arrays of any dimension; points are array indices of the target.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .carry import sample_axes
from .grids import WorkGrid

FUSIONS = ("local", "vote")
# Score difference (calibrated probability) at which a template's weight falls by e.
TEMPERATURE = 0.1
# Local weights: exp(-SHARPNESS * (1 - LNCC)), LNCC over a Gaussian window of LOCAL_SIGMA working pixels.
SHARPNESS = 3.0
LOCAL_SIGMA = 2.0


def relative_weights(scores: list[float], temperature: float = TEMPERATURE) -> np.ndarray:
    """``exp((s - max s) / temperature)`` of each score (NaN counts as the worst); 1 for the best."""
    s = np.nan_to_num(np.asarray(scores, float), nan=0.0)
    if s.size == 0:
        return s
    return np.exp((s - s.max()) / float(temperature))


def local_agreement(template_work: np.ndarray, target_work: np.ndarray, backward: np.ndarray,
                    sigma: float = LOCAL_SIGMA, sharpness: float = SHARPNESS) -> np.ndarray:
    """How well the warped template agrees with the target around each target working pixel.

    Parameters
    ----------
    template_work, target_work : ndarray (M, N[, P])
        The two working images (intensities in [0, 1]).
    backward : ndarray (ndim, m, n[, p])
        For each target working pixel, its template working position (array order).

    Returns
    -------
    ndarray (m, n[, p]) float32
        ``exp(-sharpness * (1 - LNCC))`` in (0, 1]: 1 where the two agree perfectly.
    """
    warped = ndimage.map_coordinates(template_work.astype(np.float32), backward, order=1, mode="nearest")
    target = target_work.astype(np.float32)

    def smooth(a):
        return ndimage.gaussian_filter(a, sigma, mode="nearest")

    mw, mt = smooth(warped), smooth(target)
    cov = smooth(warped * target) - mw * mt
    var_w = np.maximum(smooth(warped * warped) - mw * mw, 0)
    var_t = np.maximum(smooth(target * target) - mt * mt, 0)
    lncc = cov / np.sqrt(var_w * var_t + 1e-6)
    return np.exp(-sharpness * (1 - np.clip(lncc, -1, 1))).astype(np.float32)


def on_image(values: np.ndarray, grid: WorkGrid, shape: tuple[int, ...]) -> np.ndarray:
    """A map on a working grid, linearly interpolated at every pixel of the image of ``shape``.

    Pixels outside the grid (a volume's box) take the value at the grid's nearest edge.
    """
    to_work = grid.to_work
    axes = [np.clip(to_work[a, a] * np.arange(n) + to_work[a, -1], 0, values.shape[a] - 1)
            for a, n in enumerate(shape)]
    return sample_axes(values.astype(np.float32), axes)


def fuse_label_maps(label_maps: list[np.ndarray], label_weights: list[dict[int, float]],
                    local: list[np.ndarray | None] | None = None) -> np.ndarray:
    """Voxel-wise weighted vote over the templates' label maps of one target.

    Parameters
    ----------
    label_maps : list of ndarray (M, N[, P])
        One label map per template, all on the target's grid (0 = background).
    label_weights : list of dict
        Per template, label -> its weight for that label; background is voted with the mean of them.
    local : list of ndarray (M, N[, P]) or None, optional
        Per template, its local agreement with the target (``None``: 1 everywhere).

    Returns
    -------
    ndarray (M, N[, P])
        The label with the largest weighted vote at each pixel (background wins ties).
    """
    shape = label_maps[0].shape
    out = np.zeros(shape, label_maps[0].dtype)
    labels = sorted({int(v) for m in label_maps for v in np.unique(m) if v != 0})
    if not labels:
        return out
    # Only the box that some template labels (plus a pixel) is voted on: elsewhere all say background.
    where = np.argwhere(np.any(np.stack([m != 0 for m in label_maps]), axis=0))
    box = tuple(slice(max(0, a - 1), b + 2) for a, b in zip(where.min(0), where.max(0)))
    votes = np.zeros((len(labels) + 1, *out[box].shape), np.float32)
    for i, label_map in enumerate(label_maps):
        sub = label_map[box]
        w_local = np.ones(sub.shape, np.float32) if local is None or local[i] is None else local[i][box]
        weights = label_weights[i]
        background = float(np.mean([weights.get(lab, 0.0) for lab in labels]))
        votes[0] += background * w_local * (sub == 0)
        for k, lab in enumerate(labels):
            votes[k + 1] += weights.get(lab, 0.0) * w_local * (sub == lab)
    winner = np.argmax(votes, axis=0)
    out[box] = np.asarray([0, *labels], out.dtype)[winner]
    return out


def geometric_median(points: np.ndarray, weights: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Weighted geometric median ``(ndim,)`` of ``points`` ``(T, ndim)`` (Weiszfeld iterations)."""
    points = np.asarray(points, float)
    w = np.maximum(np.asarray(weights, float), 0)
    if w.sum() <= 0:
        w = np.ones(len(points))
    x = (w[:, None] * points).sum(0) / w.sum()
    for _ in range(iterations):
        d = np.maximum(np.linalg.norm(points - x, axis=1), 1e-6)
        nxt = ((w / d)[:, None] * points).sum(0) / (w / d).sum()
        if np.linalg.norm(nxt - x) < 1e-4:
            return nxt
        x = nxt
    return x


def fuse_scores(scores: list[float], weights: np.ndarray) -> float:
    """The weighted mean of the templates' calibrated scores (NaN when none is finite)."""
    s = np.asarray(scores, float)
    w = np.asarray(weights, float)
    ok = np.isfinite(s) & (w > 0)
    return float((s[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")
