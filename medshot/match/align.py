"""Dense correspondence between a template and a target from their feature maps.

Three steps, coarse to fine, all driven by cosine similarity of descriptors:

1. **Global search**: the template's region of interest is rotated and scaled over a grid of
   similarity transforms and slid over the whole target with FFT cross-correlation, so the
   structure may sit anywhere in the target's field of view.
2. **Affine fit**: block matching between the warped template and the target gives many local
   matches; an iteratively reweighted least-squares affine fit keeps the consistent ones.
3. **Deformation**: repeated block matching, with the displacement field smoothed by a
   confidence-weighted Gaussian, corrects what an affine cannot.

The result is a :class:`Correspondence`: a backward map (every target pixel -> template pixel)
from which masks are pulled, and a forward map for points.

Coordinates: images are ``(H, W)``; points are ``(x, y)`` pixels; internal grids are ``(2, H, W)``
arrays holding ``(y, x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from ..features.base import l2_normalize


@dataclass
class AlignOptions:
    """Knobs of the correspondence search (defaults hold for every task measured)."""

    max_rotation_deg: float = 20.0
    rotation_step_deg: float = 5.0
    scale_range: tuple[float, float] = (0.7, 1.4)
    scale_steps: int = 8
    coarse_side: int = 64
    coarse_channels: int = 8
    affine_side: int = 128
    affine_radius: int = 3
    affine_iterations: int = 3
    deform_sides: tuple[int, ...] = (128,)
    deform_iterations: int = 5
    block_radius: int = 4
    smoothing: float = 0.04  # Gaussian sigma of the displacement field, as a fraction of the side
    deformable: bool = True
    min_overlap: float = 0.6
    candidates: int = 4  # global placements refined before choosing one


@dataclass
class Correspondence:
    """Where each target pixel comes from in the template (and the global affine found).

    Attributes
    ----------
    backward_yx : ndarray (2, Hs, Ws)
        For each target working-grid pixel, the template pixel ``(y, x)`` it corresponds to.
    affine : ndarray (3, 3)
        Template ``(x, y, 1)`` -> target ``(x, y, 1)`` global transform.
    score : float
        Mean cosine similarity of the aligned template region, in [-1, 1].
    """

    backward_yx: np.ndarray
    affine: np.ndarray
    score: float

    def forward(self, points_xy: np.ndarray) -> np.ndarray:
        """Template pixels ``(x, y)`` -> target pixels ``(x, y)`` by inverting the backward map."""
        pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        if len(pts) == 0:
            return pts
        guess = apply_affine(self.affine, pts)
        by, bx = self.backward_yx
        H, W = by.shape
        out = np.empty_like(pts)
        for i, (p, g) in enumerate(zip(pts, guess)):
            out[i] = _invert_at(by, bx, p, g, H, W)
        return out


def _invert_at(by, bx, p, guess, H, W, iterations: int = 8) -> np.ndarray:
    """Solve backward(t) = p for t near ``guess`` by damped Newton steps on the sampled field."""
    t = np.array(guess, dtype=np.float64)
    for _ in range(iterations):
        ty, tx = np.clip(t[1], 0, H - 1), np.clip(t[0], 0, W - 1)
        f = np.array([_bilinear(bx, ty, tx), _bilinear(by, ty, tx)])
        r = p - f
        if np.hypot(*r) < 1e-3:
            break
        eps = 1.0
        jx = (np.array([_bilinear(bx, ty, min(tx + eps, W - 1)), _bilinear(by, ty, min(tx + eps, W - 1))]) - f)
        jy = (np.array([_bilinear(bx, min(ty + eps, H - 1), tx), _bilinear(by, min(ty + eps, H - 1), tx)]) - f)
        J = np.stack([jx, jy], axis=1)
        try:
            step = np.linalg.solve(J, r)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(step)):
            break
        t = t + np.clip(step, -20, 20)
    return t


def _bilinear(a: np.ndarray, y: float, x: float) -> float:
    return float(ndimage.map_coordinates(a, [[y], [x]], order=1, mode="nearest")[0])


# ---------------------------------------------------------------------------------------------
# Small geometry helpers
# ---------------------------------------------------------------------------------------------


def apply_affine(matrix: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
    p = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    return p @ matrix[:2, :2].T + matrix[:2, 2]


def scale_matrix(factor: float) -> np.ndarray:
    """Pixel-centre-preserving resampling by ``factor``: u' = (u + 0.5) * factor - 0.5."""
    return np.array([[factor, 0, 0.5 * factor - 0.5], [0, factor, 0.5 * factor - 0.5], [0, 0, 1.0]])


def similarity_matrix(scale: float, angle_deg: float, center_xy) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    cx, cy = center_xy
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    T1 = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1.0]])
    T2 = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1.0]])
    return T2 @ R @ T1


def resize_features(data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-aware resampling of a ``(C, h, w)`` map to ``(C, H', W')``, renormalised."""
    C, h, w = data.shape
    fy, fx = shape[0] / h, shape[1] / w
    if fy < 1 or fx < 1:
        data = ndimage.gaussian_filter(data, (0, max(0.0, 0.5 / fy - 0.5), max(0.0, 0.5 / fx - 0.5)))
    ys = (np.arange(shape[0]) + 0.5) / fy - 0.5
    xs = (np.arange(shape[1]) + 0.5) / fx - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return l2_normalize(warp_channels(data, np.stack([yy, xx])), axis=0)


def warp_channels(data: np.ndarray, coords_yx: np.ndarray) -> np.ndarray:
    """Bilinear samples of every channel of ``(C, h, w)`` at ``coords_yx`` ``(2, H, W)`` (edges clamped).

    One gather for all channels: several times faster than a ``map_coordinates`` call per channel.
    """
    C, h, w = data.shape
    out_shape = coords_yx.shape[1:]
    y = np.clip(coords_yx[0].ravel(), 0, h - 1)
    x = np.clip(coords_yx[1].ravel(), 0, w - 1)
    y0 = np.minimum(np.floor(y).astype(np.intp), max(h - 2, 0))
    x0 = np.minimum(np.floor(x).astype(np.intp), max(w - 2, 0))
    wy = (y - y0).astype(np.float32)
    wx = (x - x0).astype(np.float32)
    flat = data.reshape(C, -1)
    i00 = y0 * w + x0
    dy = w if h > 1 else 0
    dx = 1 if w > 1 else 0
    top = flat[:, i00] * (1 - wx) + flat[:, i00 + dx] * wx
    bottom = flat[:, i00 + dy] * (1 - wx) + flat[:, i00 + dy + dx] * wx
    return (top * (1 - wy) + bottom * wy).reshape((C,) + out_shape).astype(np.float32, copy=False)


def _level_shape(shape: tuple[int, int], side: int) -> tuple[tuple[int, int], float]:
    f = side / max(shape)
    f = min(f, 1.0)
    return (max(8, int(round(shape[0] * f))), max(8, int(round(shape[1] * f)))), f


# ---------------------------------------------------------------------------------------------
# Step 1: global search over similarity transforms with FFT correlation
# ---------------------------------------------------------------------------------------------


def global_search(template: np.ndarray, template_roi: np.ndarray, target: np.ndarray,
                  options: AlignOptions, candidates: int = 1) -> list[tuple[float, np.ndarray]]:
    """Best similarity transforms (template -> target, (x, y) pixels of these maps) with their scores.

    Returns up to ``candidates`` distinct placements (their ROI centres apart by at least a quarter
    of the ROI radius), best first; a finer level then decides between them.
    """
    C, ht, wt = template.shape
    _, hs, ws = target.shape
    ys, xs = np.nonzero(template_roi)
    center = np.array([xs.mean(), ys.mean()])
    angles = np.arange(-options.max_rotation_deg, options.max_rotation_deg + 1e-6, options.rotation_step_deg)
    if len(angles) == 0:
        angles = np.array([0.0])
    scales = np.geomspace(options.scale_range[0], options.scale_range[1], options.scale_steps)
    if 1.0 not in scales:
        scales = np.sort(np.append(scales, 1.0))
    # The transformed ROI is drawn into a canvas (size of the ROI's bounding circle) centred at the origin.
    radius = np.sqrt(((np.stack([xs, ys], 1) - center) ** 2).sum(1).max()) + 2
    # Pad so every placement of the canvas is a linear (not cyclic) shift.
    max_size = 2 * (int(np.ceil(radius * scales.max())) + 1) + 1
    fft_shape = (_fft_size(hs + max_size), _fft_size(ws + max_size))
    F = sfft.rfft2(target.astype(np.float32), s=fft_shape)
    Fv = sfft.rfft2(np.ones((hs, ws), np.float32), s=fft_shape)
    found: list[tuple[float, np.ndarray]] = []
    for s in scales:
        R = int(np.ceil(radius * s)) + 1
        size = 2 * R + 1
        for a in angles:
            M = similarity_matrix(s, a, (0, 0)) @ np.array([[1, 0, -center[0]], [0, 1, -center[1]], [0, 0, 1.0]])
            # canvas pixel (u, v) = M @ template + R  ->  template = M^-1 (canvas - R)
            Minv = np.linalg.inv(M)
            vv, uu = np.mgrid[0:size, 0:size].astype(np.float64)
            src = apply_affine(Minv, np.stack([uu.ravel() - R, vv.ravel() - R], 1))
            coords = np.stack([src[:, 1].reshape(size, size), src[:, 0].reshape(size, size)])
            roi_w = ndimage.map_coordinates(template_roi.astype(np.float32), coords, order=1, mode="constant") > 0.5
            area = roi_w.sum()
            if area < 4:
                continue
            feat_w = warp_channels(template, coords) * roi_w
            Tf = sfft.rfft2(feat_w[:, ::-1, ::-1], s=fft_shape)
            corr = sfft.irfft2((Tf * F).sum(axis=0), s=fft_shape)
            ov = sfft.irfft2(sfft.rfft2(roi_w[::-1, ::-1].astype(np.float32), s=fft_shape) * Fv, s=fft_shape)
            # corr[k] pairs canvas (0,0) with target k - (size-1); keep placements whose overlap is large.
            valid = ov > options.min_overlap * area
            score = np.where(valid, corr / np.maximum(ov, 1.0), -np.inf)
            peaks = (score == ndimage.maximum_filter(score, size=max(3, R // 2))) & np.isfinite(score)
            idx = np.flatnonzero(peaks)
            for k in idx[np.argsort(score.ravel()[idx])[::-1][:candidates]]:
                ky, kx = np.unravel_index(k, score.shape)
                ty, tx = ky - (size - 1), kx - (size - 1)
                # canvas origin sits at target (tx, ty); template centre at canvas (R, R)
                T = np.array([[1, 0, tx + R], [0, 1, ty + R], [0, 0, 1.0]])
                found.append((float(score[ky, kx]), T @ M))
    if not found:
        return [(0.0, np.eye(3))]
    found.sort(key=lambda f: -f[0])
    chosen: list[tuple[float, np.ndarray]] = []
    for sc, M in found:
        c = apply_affine(M, center)[0]
        if all(np.hypot(*(c - apply_affine(N, center)[0])) > 0.25 * radius for _, N in chosen):
            chosen.append((sc, M))
        if len(chosen) == candidates:
            break
    return chosen


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast FFT lengths)."""
    best = 1 << int(np.ceil(np.log2(n)))
    for a in (1, 3, 9, 5, 15, 25):
        m = a
        while m < n:
            m *= 2
        best = min(best, m)
    return best


# ---------------------------------------------------------------------------------------------
# Steps 2-3: block matching, robust affine fit, smooth deformation
# ---------------------------------------------------------------------------------------------


def block_match(warped: np.ndarray, target: np.ndarray, valid: np.ndarray, radius: int,
                patch_size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per target pixel t, the shift d (|d| <= radius) maximising patch similarity of warped(t) and target(t+d).

    Returns ``d`` as ``(2, H, W)`` ``(dy, dx)`` and a confidence ``(H, W)`` (peak minus mean score,
    zero outside ``valid``).
    """
    C, H, W = target.shape
    pad = radius
    tp = np.pad(target, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    shifts = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    scores = np.empty((len(shifts), H, W), np.float32)
    for i, (dy, dx) in enumerate(shifts):
        sl = tp[:, pad + dy: pad + dy + H, pad + dx: pad + dx + W]
        s = np.einsum("chw,chw->hw", warped, sl)
        scores[i] = ndimage.uniform_filter(s, patch_size, mode="nearest")
    best = np.argmax(scores, axis=0)
    peak = np.take_along_axis(scores, best[None], 0)[0]
    sh = np.array(shifts, dtype=np.float64)
    # Confidence = margin over the best shift at least 2 pixels away: along an edge the displacement is
    # ambiguous (aperture problem) and the runner-up scores almost as high, so such matches get ~0 weight.
    far = (np.abs(sh[:, 0, None, None] - sh[best, 0]) >= 2) | (np.abs(sh[:, 1, None, None] - sh[best, 1]) >= 2)
    runner_up = np.where(far, scores, -np.inf).max(axis=0)
    conf = np.maximum(peak - runner_up, 0.0) * valid
    d = np.stack([sh[best, 0], sh[best, 1]])
    # Sub-pixel: parabola through the neighbours along each axis.
    side = 2 * radius + 1
    by, bx = best // side, best % side
    for axis, (b, step) in enumerate(((by, side), (bx, 1))):
        lo_ok = b > 0
        hi_ok = b < side - 1
        idx_lo = np.where(lo_ok, best - step, best)
        idx_hi = np.where(hi_ok, best + step, best)
        s_lo = np.take_along_axis(scores, idx_lo[None], 0)[0]
        s_hi = np.take_along_axis(scores, idx_hi[None], 0)[0]
        denom = s_lo - 2 * peak + s_hi
        off = np.where((denom < -1e-9) & lo_ok & hi_ok, 0.5 * (s_lo - s_hi) / np.where(denom == 0, 1, denom), 0.0)
        d[axis] += np.clip(off, -0.5, 0.5)
    return d, conf


def fit_affine(src_xy: np.ndarray, dst_xy: np.ndarray, weights: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Weighted least-squares affine src -> dst with Huber-like reweighting of outliers."""
    w = np.asarray(weights, dtype=np.float64).copy()
    A = np.hstack([src_xy, np.ones((len(src_xy), 1))])
    M = np.eye(3)
    for _ in range(iterations):
        sw = np.sqrt(w)[:, None]
        sol, *_ = np.linalg.lstsq(A * sw, dst_xy * sw, rcond=None)
        M = np.vstack([sol.T, [0, 0, 1]])
        r = np.linalg.norm(A @ sol - dst_xy, axis=1)
        scale = 1.4826 * np.median(r[w > 0]) + 1e-3 if np.any(w > 0) else 1.0
        w = weights * np.minimum(1.0, 2.0 * scale / np.maximum(r, 1e-9))
    return M


def _affine_coords(Minv: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Target grid of ``shape`` -> template ``(y, x)`` coordinates under template->target affine."""
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    src = apply_affine(Minv, np.stack([xx.ravel(), yy.ravel()], 1))
    return np.stack([src[:, 1].reshape(H, W), src[:, 0].reshape(H, W)])


def _inside(coords_yx: np.ndarray, roi: np.ndarray) -> np.ndarray:
    return ndimage.map_coordinates(roi.astype(np.float32), coords_yx, order=1, mode="constant") > 0.5


def align(template: np.ndarray, template_roi: np.ndarray, target: np.ndarray,
          options: AlignOptions | None = None) -> Correspondence:
    """Correspondence from template features ``(C, ht, wt)`` to target features ``(C, hs, ws)``.

    Both maps are unit-normalised descriptors on their images' working grids; ``template_roi``
    ``(ht, wt)`` marks the region whose match matters (the annotated structures and some context).
    """
    options = options or AlignOptions()
    ht_wt = template.shape[1:]
    hs_ws = target.shape[1:]

    # 1. global similarity at a coarse level
    (tc_shape, f) = _level_shape(ht_wt, options.coarse_side)
    (sc_shape, _) = _level_shape(hs_ws, options.coarse_side)
    f_t = tc_shape[0] / ht_wt[0]
    f_s = sc_shape[0] / hs_ws[0]
    t_coarse = resize_features(template, tc_shape)
    s_coarse = resize_features(target, sc_shape)
    roi_coarse = ndimage.zoom(template_roi.astype(np.float32),
                              (tc_shape[0] / ht_wt[0], tc_shape[1] / ht_wt[1]), order=1) > 0.5
    if not roi_coarse.any():
        roi_coarse[:] = True
    t_coarse, s_coarse = _project_pair(t_coarse, s_coarse, options.coarse_channels)
    found = global_search(t_coarse, roi_coarse, s_coarse, options, options.candidates)
    to_work = [np.linalg.inv(scale_matrix(f_s)) @ M_c @ scale_matrix(f_t) for _, M_c in found]

    # 2. affine refinement of each candidate at a medium level; the best-matching one wins
    level = _level(template, template_roi, target, options.affine_side)
    refined = [_refine_affine(M, level, options) for M in to_work]
    M, score = max(refined, key=lambda r: r[1])

    # 3. deformation, coarse to fine: each level's block matching corrects what the previous left
    if not options.deformable:
        return Correspondence(_affine_coords(np.linalg.inv(M), hs_ws), M, score)
    backward = _affine_coords(np.linalg.inv(M), hs_ws)  # target work grid -> template work (y, x)
    for side in options.deform_sides:
        t_l, s_l, roi_l, S_t, S_s, t_shape, s_shape = _level(template, template_roi, target, side)
        ft = S_t[0, 0]
        # The field on this level's target grid, in this level's template pixels.
        coords = (_resample_field(backward, s_shape) + 0.5) * ft - 0.5
        sigma = options.smoothing * max(s_shape)
        yy, xx = np.mgrid[0:s_shape[0], 0:s_shape[1]].astype(np.float64)
        for _ in range(options.deform_iterations):
            warped = warp_channels(t_l, coords)
            valid = _inside(coords, roi_l)
            d, conf = block_match(warped, s_l, valid, options.block_radius)
            wsum = ndimage.gaussian_filter(conf, sigma) + 1e-6
            d_s = np.stack([ndimage.gaussian_filter(conf * d[k], sigma) / wsum for k in range(2)])
            # Composition: new backward(t) = old backward(t - d(t)).
            pull = np.stack([yy - d_s[0], xx - d_s[1]])
            coords = np.stack([ndimage.map_coordinates(c, pull, order=1, mode="nearest") for c in coords])
        warped = warp_channels(t_l, coords)
        valid = _inside(coords, roi_l)
        if valid.any():
            score = float((warped * s_l).sum(0)[valid].mean())
        backward = _resample_field((coords + 0.5) / ft - 0.5, hs_ws)
    return Correspondence(backward, M, score)


def _level(template, template_roi, target, side):
    """Template/target features and ROI resampled so their longest side is ``side``, with the scalings."""
    ht_wt, hs_ws = template.shape[1:], target.shape[1:]
    t_shape, _ = _level_shape(ht_wt, side)
    s_shape, _ = _level_shape(hs_ws, side)
    ft, fs = t_shape[0] / ht_wt[0], s_shape[0] / hs_ws[0]
    t_l = resize_features(template, t_shape) if t_shape != ht_wt else template
    s_l = resize_features(target, s_shape) if s_shape != hs_ws else target
    roi_l = ndimage.zoom(template_roi.astype(np.float32), (ft, t_shape[1] / ht_wt[1]), order=1) > 0.5
    return t_l, s_l, roi_l, scale_matrix(ft), scale_matrix(fs), t_shape, s_shape


def _project_pair(template: np.ndarray, target: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Both maps projected on the template's first ``channels`` principal axes (fewer FFTs in the search)."""
    C = template.shape[0]
    if C <= channels:
        return template, target
    x = template.reshape(C, -1)
    x = x - x.mean(axis=1, keepdims=True)
    u = np.linalg.svd(x @ x.T)[0][:, :channels].T.astype(np.float32)
    return (l2_normalize(np.einsum("kc,chw->khw", u, template), axis=0),
            l2_normalize(np.einsum("kc,chw->khw", u, target), axis=0))


def _refine_affine(M: np.ndarray, level: tuple, options: AlignOptions) -> tuple[np.ndarray, float]:
    """IRLS affine fits to block matches on a ``_level``; returns the affine and its mean similarity."""
    t_l, s_l, roi_l, S_t, S_s, _, s_shape = level
    M_l = S_s @ M @ np.linalg.inv(S_t)
    for _ in range(options.affine_iterations):
        coords = _affine_coords(np.linalg.inv(M_l), s_shape)
        warped = warp_channels(t_l, coords)
        valid = _inside(coords, roi_l)
        d, conf = block_match(warped, s_l, valid, options.affine_radius)
        sel = conf > 0
        if sel.sum() < 12:
            break
        ty, tx = np.nonzero(sel)
        src = np.stack([coords[1][sel], coords[0][sel]], 1)  # template (x, y)
        dst = np.stack([tx + d[1][sel], ty + d[0][sel]], 1)  # target (x, y)
        M_l = fit_affine(src, dst, conf[sel])
    coords = _affine_coords(np.linalg.inv(M_l), s_shape)
    valid = _inside(coords, roi_l)
    score = float((warp_channels(t_l, coords) * s_l).sum(0)[valid].mean()) if valid.any() else -1.0
    return np.linalg.inv(S_s) @ M_l @ S_t, score


def _resample_field(field_yx: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A ``(2, h, w)`` field (values unchanged) bilinearly resampled onto a grid of ``shape``."""
    h, w = field_yx.shape[1:]
    if (h, w) == tuple(shape):
        return field_yx
    ys = np.clip((np.arange(shape[0]) + 0.5) * h / shape[0] - 0.5, 0, h - 1)
    xs = np.clip((np.arange(shape[1]) + 0.5) * w / shape[1] - 0.5, 0, w - 1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([ndimage.map_coordinates(c, np.stack([yy, xx]), order=1, mode="nearest") for c in field_yx])
