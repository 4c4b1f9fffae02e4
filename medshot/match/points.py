"""Point correspondence: cosine similarity, sub-pixel argmax, mutual-nearest-neighbour check, confidence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..features.base import FeatureMap, l2_normalize


@dataclass
class PointMatches:
    """Matches of template points in a target, all in target pixels.

    Attributes
    ----------
    xy : ndarray (N, 2)
        Matched ``(x, y)``.
    similarity : ndarray (N,)
        Cosine similarity of the template descriptor and the target descriptor at ``xy``.
    mutual : ndarray (N,) bool
        Whether the target point's own best match in the template lies back at the template point.
    confidence : ndarray (N,)
        In [0, 1]: how distinct the peak is, halved when the match is not mutual.
    """

    xy: np.ndarray
    similarity: np.ndarray
    mutual: np.ndarray
    confidence: np.ndarray


def similarity_maps(queries: np.ndarray, feature_map: FeatureMap) -> np.ndarray:
    """Cosine similarity of each query ``(N, C)`` with every cell of ``feature_map``: ``(N, h, w)``."""
    C, h, w = feature_map.data.shape
    q = l2_normalize(np.asarray(queries, np.float32), axis=1)
    f = l2_normalize(feature_map.data.reshape(C, -1), axis=0)
    return np.einsum("nc,cp->np", q, f).reshape(-1, h, w)


def subpixel_peak(score: np.ndarray) -> tuple[float, float, float]:
    """Argmax of a 2D map refined by a parabola along each axis: ``(y, x, peak value)``."""
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    peak = float(score[iy, ix])
    off = []
    for axis, i in ((0, iy), (1, ix)):
        n = score.shape[axis]
        if 0 < i < n - 1:
            lo = score[iy - 1, ix] if axis == 0 else score[iy, ix - 1]
            hi = score[iy + 1, ix] if axis == 0 else score[iy, ix + 1]
            denom = lo - 2 * peak + hi
            off.append(float(np.clip(0.5 * (lo - hi) / denom, -0.5, 0.5)) if denom < 0 else 0.0)
        else:
            off.append(0.0)
    return iy + off[0], ix + off[1], peak


def _patch_offsets(radius_px: float, step_px: float) -> np.ndarray:
    """``(K, 2)`` pixel offsets ``(x, y)`` of a square patch of descriptors (just ``(0, 0)`` for radius 0)."""
    if radius_px <= 0:
        return np.zeros((1, 2))
    r = np.arange(-radius_px, radius_px + 1e-9, step_px)
    xx, yy = np.meshgrid(r, r)
    return np.stack([xx.ravel(), yy.ravel()], 1)


def _window_scores(queries: np.ndarray, offsets: np.ndarray, fmap: FeatureMap, center_xy: np.ndarray,
                   radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patch similarity on the pixel window around ``center_xy``: (scores, ys, xs).

    ``queries`` ``(K, C)`` are unit descriptors taken at ``offsets`` ``(K, 2)`` around the source
    point; a window pixel's score is the mean cosine similarity of each query with the target
    descriptor at the same offset from that pixel. Only the feature cells the window needs are used,
    so a large (log-binned) map costs no more than a small one.
    """
    H, W = fmap.image_shape
    cx, cy = center_xy
    x0, x1 = int(max(0, np.floor(cx - radius))), int(min(W - 1, np.ceil(cx + radius)))
    y0, y1 = int(max(0, np.floor(cy - radius))), int(min(H - 1, np.ceil(cy + radius)))
    x1, y1 = max(x0, x1), max(y0, y1)
    ys = np.arange(y0, y1 + 1, dtype=np.float64)
    xs = np.arange(x0, x1 + 1, dtype=np.float64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    lo = fmap.pixel_to_grid([[x0 + offsets[:, 0].min(), y0 + offsets[:, 1].min()]])[0]
    hi = fmap.pixel_to_grid([[x1 + offsets[:, 0].max(), y1 + offsets[:, 1].max()]])[0]
    gh, gw = fmap.grid_shape
    gx0, gy0 = int(np.clip(np.floor(lo[0]) - 1, 0, gw - 1)), int(np.clip(np.floor(lo[1]) - 1, 0, gh - 1))
    gx1, gy1 = int(np.clip(np.ceil(hi[0]) + 1, 0, gw - 1)), int(np.clip(np.ceil(hi[1]) + 1, 0, gh - 1))
    crop = fmap.data[:, gy0:gy1 + 1, gx0:gx1 + 1]
    C, ch, cw = crop.shape
    # einsum, not BLAS: for these small products BLAS thread start-up costs ~30x the arithmetic here.
    sims = np.einsum("kc,cp->kp", queries, l2_normalize(crop.reshape(C, -1), axis=0)).reshape(-1, ch, cw)
    total = np.zeros(yy.shape)
    if fmap.stride_yx == (1.0, 1.0) and fmap.offset_yx == (0.0, 0.0) and np.all(offsets % 1 == 0):
        # Cells are pixels and offsets whole pixels: shifted slices of the edge-padded map, no interpolation.
        pad = int(np.abs(offsets).max()) + 1
        padded = np.pad(sims, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        r0, c0 = y0 - gy0 + pad, x0 - gx0 + pad
        for k, (ox, oy) in enumerate(offsets.astype(int)):
            total += padded[k, r0 + oy: r0 + oy + len(ys), c0 + ox: c0 + ox + len(xs)]
        return total / len(offsets), ys, xs
    for k, (ox, oy) in enumerate(offsets):
        g = fmap.pixel_to_grid(np.stack([xx.ravel() + ox, yy.ravel() + oy], 1))
        total += ndimage.map_coordinates(sims[k], [g[:, 1] - gy0, g[:, 0] - gx0], order=1,
                                         mode="nearest").reshape(yy.shape)
    return total / len(offsets), ys, xs


def _patch_queries(fmap: FeatureMap, point_xy: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return l2_normalize(fmap.sample(np.asarray(point_xy, float)[None] + offsets), axis=1)


def match_points(template: FeatureMap, target: FeatureMap, template_xy: np.ndarray,
                 initial_xy: np.ndarray | None = None, radius: float | None = None,
                 prior_sigma: float | None = None, patch_radius: float = 4.0,
                 patch_step: float = 2.0) -> PointMatches:
    """Find template points in the target by descriptor similarity.

    Parameters
    ----------
    template, target : FeatureMap
    template_xy : ndarray (N, 2)
        Points in template pixels.
    initial_xy : ndarray (N, 2), optional
        Expected target positions (from a global correspondence); the search is then limited to
        ``radius`` pixels around them and weighted by a Gaussian prior of width ``prior_sigma``.
        Without it the whole target is searched.
    patch_radius, patch_step : float
        Pixels: each point is described by the descriptors on a square patch around it (radius 0 =
        the point's own descriptor). A patch is more distinctive than one descriptor where a
        landmark sits on an edge or a ring.
    """
    template_xy = np.asarray(template_xy, np.float64).reshape(-1, 2)
    n = len(template_xy)
    step = max(patch_step, 0.5 * min(target.stride_yx))
    offsets = _patch_offsets(patch_radius, step)
    H, W = target.image_shape
    diag = float(np.hypot(H, W))
    out_xy = np.zeros((n, 2))
    out_sim = np.zeros(n)
    out_conf = np.zeros(n)
    mutual = np.zeros(n, bool)
    for i in range(n):
        if initial_xy is None:
            center, rad = np.array([(W - 1) / 2, (H - 1) / 2]), diag
        else:
            center, rad = np.asarray(initial_xy[i], np.float64), radius or 0.08 * diag
        scores, ys, xs = _window_scores(_patch_queries(template, template_xy[i], offsets), offsets, target,
                                        center, rad)
        weighted = scores.copy()
        if initial_xy is not None and prior_sigma:
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            d2 = (yy - center[1]) ** 2 + (xx - center[0]) ** 2
            weighted = (scores + 1) / 2 * np.exp(-d2 / (2 * prior_sigma**2))
        py, px, _ = subpixel_peak(weighted)
        out_xy[i] = (xs[0] + px, ys[0] + py)
        peak = float(ndimage.map_coordinates(scores, [[py], [px]], order=1)[0])
        out_sim[i] = peak
        background = float(np.median(scores))
        out_conf[i] = np.clip((peak - background) / max(1e-6, 1 - background), 0, 1)

    # Mutual nearest neighbours: search back from each target match around its template point.
    Ht, Wt = template.image_shape
    tol = max(2.0, 0.6 * max(template.stride_yx), 0.01 * np.hypot(Ht, Wt))
    for i in range(n):
        rad = (radius or 0.08 * np.hypot(Ht, Wt)) if initial_xy is not None else np.hypot(Ht, Wt)
        scores, ys, xs = _window_scores(_patch_queries(target, out_xy[i], offsets), offsets, template,
                                        template_xy[i], rad)
        py, px, _ = subpixel_peak(scores)
        mutual[i] = np.hypot(ys[0] + py - template_xy[i, 1], xs[0] + px - template_xy[i, 0]) <= tol
    out_conf = np.where(mutual, out_conf, 0.5 * out_conf)
    return PointMatches(out_xy, out_sim, mutual, out_conf)
