"""Dense 3D correspondence between a template volume and a target volume from their descriptors.

The 2D method of :mod:`medshot.match.align`, in three dimensions, on grids that share one physical
voxel size (so scale differences are anatomical only):

1. **Global search** (coarse level): the template's region of interest is scaled and rotated over
   a small set of similarity transforms and slid over the whole target by FFT cross-correlation,
   so the structure may sit anywhere in the target's field of view.
2. **Affine fit** (medium level): 3D block matching of the warped template against the target,
   then an iteratively reweighted least-squares affine (12 parameters).
3. **Deformation** (fine level, cropped to where the template's region lands): repeated block
   matching with the displacement field smoothed by a confidence-weighted Gaussian.

Coordinates: arrays are ``(X, Y, Z)`` (canonical voxel order); points are ``(N, 3)`` voxel indices
in the same order; coordinate fields are ``(3, X, Y, Z)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from ..features.base import l2_normalize


@dataclass
class AlignOptions3D:
    """Knobs of the 3D correspondence search (levels are longest sides of the template's grid)."""

    scales: tuple[float, ...] = (0.85, 1.0, 1.18)
    rotations_deg: float = 10.0  # +-this about each axis, plus none
    coarse_side: int = 40  # global search level: template's longest side at most this ...
    coarse_roi_side: int = 32  # ... and the region of interest's longest side at most this
    coarse_channels: int = 16
    affine_side: int = 48
    affine_iterations: int = 3
    deform_voxels: int = 48**3  # cap on the deformation level's cropped grid
    deform_iterations: int = 6
    block_radius: int = 2  # affine stage search radius (voxels of its level)
    deform_radius: int = 1  # per-iteration search radius of the deformation (iterations compound)
    patch_sigma: float = 1.2
    smoothing: float = 2.0  # Gaussian sigma of the displacement field, voxels of the deformation level
    deformable: bool = True
    min_overlap: float = 0.6
    overlap_power: float = 0.5  # mean similarity x (overlap fraction)^power: partial overlaps must earn it
    roi_margin: float = 0.25  # fraction of the region's size added around it


@dataclass
class Correspondence3D:
    """Where each target working voxel comes from in the template working grid.

    Attributes
    ----------
    affine : ndarray (4, 4)
        Template voxel -> target voxel (working grids), the global transform.
    box : tuple of slice
        Target working-grid box that ``field`` covers; outside it the affine holds.
    field : ndarray (3, bx, by, bz) float32 or None
        Template coordinates of every voxel of ``box`` (None: affine only).
    target_shape : tuple of int
        Working grid of the target.
    score : float
        Mean cosine similarity of the aligned template region, in [-1, 1].
    """

    affine: np.ndarray
    box: tuple[slice, slice, slice]
    field: np.ndarray | None
    target_shape: tuple[int, int, int]
    score: float

    def backward(self, points: np.ndarray) -> np.ndarray:
        """Target working voxels ``(N, 3)`` -> template working voxels."""
        p = np.asarray(points, np.float64).reshape(-1, 3)
        out = apply_affine(np.linalg.inv(self.affine), p)
        if self.field is None or len(p) == 0:
            return out
        lo = np.array([s.start for s in self.box], float)
        hi = np.array([s.stop - 1 for s in self.box], float)
        inside = np.all((p >= lo) & (p <= hi), axis=1)
        if inside.any():
            q = (p[inside] - lo).T
            out[inside] = np.stack([ndimage.map_coordinates(c, q, order=1, mode="nearest") for c in self.field], 1)
        return out

    def backward_grid(self, coords: np.ndarray) -> np.ndarray:
        """Like :meth:`backward` for a coordinate grid ``(3, ...)`` (target working voxels)."""
        shape = coords.shape[1:]
        return self.backward(coords.reshape(3, -1).T).T.reshape((3, *shape))

    def forward(self, points: np.ndarray) -> np.ndarray:
        """Template working voxels ``(N, 3)`` -> target working voxels, inverting the backward map."""
        pts = np.asarray(points, np.float64).reshape(-1, 3)
        guess = apply_affine(self.affine, pts)
        if self.field is None:
            return guess
        out = np.empty_like(pts)
        for n, (p, g) in enumerate(zip(pts, guess)):
            t = g.copy()
            for _ in range(10):
                f = self.backward(t[None])[0]
                r = p - f
                if np.linalg.norm(r) < 1e-3:
                    break
                J = np.stack([self.backward((t + e)[None])[0] - f for e in np.eye(3)], axis=1)
                try:
                    step = np.linalg.solve(J, r)
                except np.linalg.LinAlgError:
                    break
                if not np.all(np.isfinite(step)):
                    break
                t = t + np.clip(step, -10, 10)
            out[n] = t
        return out


# ------------------------------------------------------------------------------------------------
# Geometry helpers
# ------------------------------------------------------------------------------------------------


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, np.float64).reshape(-1, 3)
    return p @ matrix[:3, :3].T + matrix[:3, 3]


def scale_matrix(factors) -> np.ndarray:
    """Pixel-centre-preserving resampling by per-axis ``factors``: u' = (u + 0.5) f - 0.5."""
    f = np.broadcast_to(np.asarray(factors, float), (3,))
    M = np.eye(4)
    M[:3, :3] = np.diag(f)
    M[:3, 3] = 0.5 * f - 0.5
    return M


def rotation_matrix(axis: int, angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def level_factor(shape: tuple[int, ...], side: int) -> float:
    return min(1.0, side / max(shape))


def level_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int, int]:
    return tuple(max(4, int(round(s * factor))) for s in shape)  # type: ignore[return-value]


def resample(data: np.ndarray, shape: tuple[int, int, int], order: int = 1, normalize: bool = False) -> np.ndarray:
    """Area-aware resampling of ``(X, Y, Z)`` or ``(C, X, Y, Z)`` onto a grid of ``shape`` covering the same extent."""
    multi = data.ndim == 4
    arr = data if multi else data[None]
    src = arr.shape[1:]
    f = np.array(shape, float) / np.array(src, float)
    sig = [max(0.0, 0.5 / fa - 0.5) if fa < 1 else 0.0 for fa in f]
    axes = [(np.arange(n) + 0.5) / fa - 0.5 for n, fa in zip(shape, f)]
    out = np.empty((arr.shape[0], *shape), np.float32)
    for c in range(arr.shape[0]):
        ch = ndimage.gaussian_filter(arr[c], sig, mode="nearest") if any(sig) else arr[c]
        out[c] = separable_interp(ch, axes, order)
    if normalize:
        out = l2_normalize(out, axis=0)
    return out if multi else out[0]


def separable_interp(a: np.ndarray, axes: list[np.ndarray], order: int, axis_order=(0, 1, 2)) -> np.ndarray:
    """Sample ``a`` on the axis-aligned grid ``axes`` one axis at a time (cheap for large volumes).

    ``axis_order`` says which axis to interpolate first; the one that shrinks most should go first.
    """
    out = a
    for ax in axis_order:
        coords = axes[ax]
        if order == 0:
            idx = np.clip(np.round(coords).astype(int), 0, out.shape[ax] - 1)
            out = np.take(out, idx, axis=ax)
            continue
        c = np.clip(coords, 0, out.shape[ax] - 1)
        lo = np.floor(c).astype(int)
        hi = np.minimum(lo + 1, out.shape[ax] - 1)
        w = (c - lo).astype(np.float32)
        shape = [1] * out.ndim
        shape[ax] = len(c)
        w = w.reshape(shape)
        out = np.take(out, lo, axis=ax) * (1 - w) + np.take(out, hi, axis=ax) * w
    return out.astype(np.float32)


def warp(data: np.ndarray, coords: np.ndarray, order: int = 1, cval: float | None = None) -> np.ndarray:
    """Sample every channel of ``(C, X, Y, Z)`` at ``coords`` ``(3, ...)``."""
    mode = "nearest" if cval is None else "constant"
    return np.stack([ndimage.map_coordinates(ch, coords, order=order, mode=mode, cval=cval or 0.0)
                     for ch in data]).astype(np.float32)


def affine_warp(data: np.ndarray, Minv: np.ndarray, shape: tuple[int, int, int], cval: float | None = None
                ) -> np.ndarray:
    """Every channel of ``(C, X, Y, Z)`` sampled on a grid of ``shape`` through target -> template ``Minv``.

    ``ndimage.affine_transform`` needs no coordinate arrays, so it is several times faster than
    :func:`warp` for a purely affine map.
    """
    mode = "nearest" if cval is None else "constant"
    return np.stack([ndimage.affine_transform(ch, Minv[:3, :3], Minv[:3, 3], output_shape=tuple(shape), order=1,
                                              mode=mode, cval=cval or 0.0) for ch in data]).astype(np.float32)


def affine_coords(Minv: np.ndarray, shape: tuple[int, int, int], offset=(0, 0, 0)) -> np.ndarray:
    """Grid of ``shape`` (starting at target voxel ``offset``) -> template coordinates under ``Minv``."""
    g = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) + o for n, o in zip(shape, offset)],
                             indexing="ij"))
    out = np.tensordot(Minv[:3, :3].astype(np.float32), g, axes=(1, 0))
    out += Minv[:3, 3].astype(np.float32)[:, None, None, None]
    return out


def _inside(coords: np.ndarray, roi: np.ndarray) -> np.ndarray:
    return ndimage.map_coordinates(roi.astype(np.float32), coords, order=1, mode="constant") > 0.5


def _fast_len(n: int) -> int:
    return sfft.next_fast_len(int(n), real=True)


# ------------------------------------------------------------------------------------------------
# Step 1: global search
# ------------------------------------------------------------------------------------------------


def _candidate_rotations(max_deg: float) -> list[np.ndarray]:
    rots = [np.eye(3)]
    if max_deg > 0:
        for axis in range(3):
            for sign in (-1, 1):
                rots.append(rotation_matrix(axis, sign * max_deg))
    return rots


def informativeness(features: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Weight in [0, 1] per voxel: how much the descriptors vary around it.

    Flat regions (air around a patient, the empty part of a field of view) all carry one and the
    same descriptor, so they would match each other perfectly and swamp the global search; the
    length of the locally averaged unit descriptor is 1 there and smaller where there is structure.
    """
    mean = np.stack([ndimage.gaussian_filter(ch, sigma, mode="nearest") for ch in features])
    spread = 1.0 - np.sqrt((mean * mean).sum(0))
    ref = float(np.percentile(spread, 75))
    return np.clip(spread / max(ref, 1e-6), 0.0, 1.0).astype(np.float32)


def global_search(template: np.ndarray, roi: np.ndarray, target: np.ndarray,
                  options: AlignOptions3D) -> tuple[np.ndarray, float]:
    """Best similarity transform (template -> target voxels of these grids) and its mean cosine score.

    ``roi`` is a mask or a weight in [0, 1] per template voxel.
    """
    tshape = target.shape[1:]
    pts = np.argwhere(roi > 0).astype(np.float64)
    center = (pts * roi[roi > 0][:, None]).sum(0) / roi[roi > 0].sum()
    lo, hi = pts.min(0) - 1, pts.max(0) + 1
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]) - center
    rotations = _candidate_rotations(options.rotations_deg)

    def extent(M):
        return np.ceil(np.abs(corners @ M.T).max(0)).astype(int) + 1

    max_size = np.max([2 * extent(s * R) + 1 for s in options.scales for R in rotations], axis=0)
    fft_shape = tuple(_fast_len(t + m) for t, m in zip(tshape, max_size))
    F = sfft.rfftn(target, s=fft_shape, axes=(1, 2, 3))
    Fv = sfft.rfftn(np.ones(tshape, np.float32), s=fft_shape)
    roi_f = roi.astype(np.float32)
    # Scales first (no rotation), then the rotations at the best scale: 3 + 6 placements, not 3 x 7.
    best = _search(template, roi_f, center, [s * np.eye(3) for s in options.scales], F, Fv, fft_shape,
                   extent, options)
    if len(rotations) > 1:
        scale = float(np.cbrt(np.linalg.det(best[1][:3, :3])))
        best = max(best, _search(template, roi_f, center, [scale * R for R in rotations[1:]], F, Fv, fft_shape,
                                 extent, options), key=lambda b: b[0])
    return best[1], (best[0] if np.isfinite(best[0]) else 0.0)


def _search(template, roi_f, center, matrices, F, Fv, fft_shape, extent, options) -> tuple[float, np.ndarray]:
    """Best placement (score, 4x4) over translations for each linear part in ``matrices``."""
    best = (-np.inf, np.eye(4))
    for M in matrices:
        half = extent(M)
        size = 2 * half + 1
        Minv = np.linalg.inv(M)
        g = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) - h for n, h in zip(size, half)], indexing="ij"))
        src = np.tensordot(Minv, g, axes=(1, 0)) + center[:, None, None, None]
        roi_w = ndimage.map_coordinates(roi_f, src, order=1, mode="constant").astype(np.float32)
        area = float(roi_w.sum())
        if area < 8:
            continue
        feat = warp(template, src) * roi_w
        Tf = sfft.rfftn(feat[:, ::-1, ::-1, ::-1], s=fft_shape, axes=(1, 2, 3))
        corr = sfft.irfftn((Tf * F).sum(0), s=fft_shape)
        ov = sfft.irfftn(sfft.rfftn(roi_w[::-1, ::-1, ::-1], s=fft_shape) * Fv, s=fft_shape)
        # The mean over the overlap alone favours placements that push the region's hard parts out of
        # the target's field of view; weighting by the overlap fraction counts what is missing.
        frac = np.clip(ov / area, 1e-6, 1.0)
        score = np.where(frac > options.min_overlap, corr / np.maximum(ov, 1.0) * frac**options.overlap_power,
                         -np.inf)
        k = np.unravel_index(int(np.argmax(score)), score.shape)
        if score[k] > best[0]:
            origin = np.array(k, float) - (size - 1)
            A = np.eye(4)
            A[:3, :3] = M
            A[:3, 3] = origin + half - M @ center
            best = (float(score[k]), A)
    return best


# ------------------------------------------------------------------------------------------------
# Steps 2-3: block matching, affine fit, deformation
# ------------------------------------------------------------------------------------------------


def block_match(warped: np.ndarray, target: np.ndarray, valid: np.ndarray, radius: int,
                patch_sigma: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Per target voxel t, the shift d (|d_a| <= radius) maximising patch similarity of warped(t) and target(t+d).

    Returns ``d`` ``(3, X, Y, Z)`` and a confidence ``(X, Y, Z)`` (peak minus mean score, zero
    outside ``valid``). Only a running best is kept (plus the six axis neighbours' scores for a
    sub-voxel parabola), so memory does not grow with the number of shifts.
    """
    C, X, Y, Z = target.shape
    r = radius
    tp = np.pad(target, ((0, 0), (r, r), (r, r), (r, r)), mode="edge")
    rng = range(-r, r + 1)
    shifts = [(a, b, c) for a in rng for b in rng for c in rng]
    side = 2 * r + 1
    scores = np.empty((len(shifts), X, Y, Z), np.float32) if len(shifts) * X * Y * Z <= 40_000_000 else None
    best = np.full((X, Y, Z), -np.inf, np.float32)
    best_i = np.zeros((X, Y, Z), np.int32)
    total = np.zeros((X, Y, Z), np.float32)
    for i, (a, b, c) in enumerate(shifts):
        sl = tp[:, r + a: r + a + X, r + b: r + b + Y, r + c: r + c + Z]
        # einsum without path optimisation: the optimised path copies the strided slice each time.
        s = np.einsum("cxyz,cxyz->xyz", warped, sl)
        s = ndimage.gaussian_filter(s, patch_sigma, mode="nearest", truncate=2.5)
        if scores is not None:
            scores[i] = s
        better = s > best
        np.copyto(best, s, where=better)
        best_i[better] = i
        total += s
    conf = np.maximum(best - total / len(shifts), 0.0) * valid
    sh = np.array(shifts, np.float64)
    d = np.stack([sh[best_i, k] for k in range(3)])
    if scores is not None:
        idx = np.stack(np.unravel_index(best_i, (side, side, side)))
        strides = (side * side, side, 1)
        for axis in range(3):
            b = idx[axis]
            ok = (b > 0) & (b < side - 1)
            lo = np.where(ok, best_i - strides[axis], best_i)
            hi = np.where(ok, best_i + strides[axis], best_i)
            s_lo = np.take_along_axis(scores, lo[None], 0)[0]
            s_hi = np.take_along_axis(scores, hi[None], 0)[0]
            denom = s_lo - 2 * best + s_hi
            off = np.where(ok & (denom < -1e-9), 0.5 * (s_lo - s_hi) / np.where(denom == 0, 1, denom), 0.0)
            d[axis] += np.clip(off, -0.5, 0.5)
    return d, conf


def fit_affine(src: np.ndarray, dst: np.ndarray, weights: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Weighted least-squares 3D affine src -> dst with Huber-like reweighting of outliers."""
    w = np.asarray(weights, np.float64).copy()
    A = np.hstack([src, np.ones((len(src), 1))])
    M = np.eye(4)
    for _ in range(iterations):
        sw = np.sqrt(w)[:, None]
        sol, *_ = np.linalg.lstsq(A * sw, dst * sw, rcond=None)
        M = np.vstack([sol.T, [0, 0, 0, 1]])
        res = np.linalg.norm(A @ sol - dst, axis=1)
        scale = 1.4826 * np.median(res[w > 0]) + 1e-3 if np.any(w > 0) else 1.0
        w = weights * np.minimum(1.0, 2.0 * scale / np.maximum(res, 1e-9))
    return M


def roi_box(roi: np.ndarray, margin: float, min_margin: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box ``(lo, hi)`` (inclusive voxel corners) of a mask plus a relative margin."""
    pts = np.argwhere(roi)
    lo, hi = pts.min(0).astype(float), pts.max(0).astype(float)
    m = np.maximum(margin * (hi - lo + 1), min_margin)
    return lo - m, hi + m


def align(template: np.ndarray, template_roi: np.ndarray, target: np.ndarray,
          options: AlignOptions3D | None = None, initial: np.ndarray | None = None) -> Correspondence3D:
    """Correspondence from template descriptors ``(C, tx, ty, tz)`` to target descriptors ``(C, sx, sy, sz)``.

    Both are unit descriptors on working grids with the same voxel size; ``template_roi`` marks
    the region whose match matters (annotations and some context). ``initial`` (template ->
    target voxels, 4x4) replaces the global search, e.g. when a coarser stage has already run.
    """
    options = options or AlignOptions3D()
    tshape = template.shape[1:]
    sshape = target.shape[1:]
    if not template_roi.any():
        template_roi = np.ones(tshape, bool)

    if initial is None:
        # 1. global similarity search at the coarse level (same factor on both sides: same voxel size)
        roi_extent = np.ptp(np.argwhere(template_roi), axis=0) + 1
        fc = min(level_factor(tshape, options.coarse_side), level_factor(tuple(roi_extent), options.coarse_roi_side))
        k = min(options.coarse_channels, template.shape[0])
        tc = resample(template[:k], level_shape(tshape, fc), normalize=True)
        sc = resample(target[:k], level_shape(sshape, fc), normalize=True)
        roi_c = resample(template_roi.astype(np.float32), tc.shape[1:]) > 0.5
        if not roi_c.any():
            roi_c[tuple(np.array(roi_c.shape) // 2)] = True
        roi_c = roi_c * informativeness(tc)
        St_c, Ss_c = scale_matrix(np.array(tc.shape[1:]) / tshape), scale_matrix(np.array(sc.shape[1:]) / sshape)
        M_c, score = global_search(tc, roi_c, sc, options)
        M = np.linalg.inv(Ss_c) @ M_c @ St_c
    else:
        M, score = np.asarray(initial, float), 0.0

    # 2. affine refinement by block matching at the medium level
    fa = level_factor(tshape, options.affine_side)
    ta_shape, sa_shape = level_shape(tshape, fa), level_shape(sshape, fa)
    ta = resample(template, ta_shape, normalize=True) if ta_shape != tshape else template
    sa = resample(target, sa_shape, normalize=True) if sa_shape != sshape else target
    roi_a = resample(template_roi.astype(np.float32), ta_shape) > 0.5
    St, Ss = scale_matrix(np.array(ta_shape) / tshape), scale_matrix(np.array(sa_shape) / sshape)
    M_l = Ss @ M @ np.linalg.inv(St)
    for _ in range(options.affine_iterations):
        Minv = np.linalg.inv(M_l)
        valid = affine_warp(roi_a[None].astype(np.float32), Minv, sa_shape, cval=0.0)[0] > 0.5
        if valid.sum() < 50:
            break
        warped = affine_warp(ta, Minv, sa_shape)
        d, conf = block_match(warped, sa, valid, options.block_radius, options.patch_sigma)
        sel = conf > 0
        if sel.sum() < 50:
            break
        tgt_pts = np.argwhere(sel).astype(np.float64)
        src = apply_affine(Minv, tgt_pts)
        dst = tgt_pts + np.stack([d[a][sel] for a in range(3)], 1)
        M_new = fit_affine(src, dst, conf[sel])
        # A fit that collapses or flips the region is a failed match; keep the previous estimate.
        det = np.linalg.det(M_new[:3, :3])
        if not (0.4 < det < 2.5):
            break
        M_l = M_new
    M = np.linalg.inv(Ss) @ M_l @ St
    del ta, sa

    # 3. deformation on a crop of the target around where the template's region lands
    lo, hi = roi_box(template_roi, options.roi_margin)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    mapped = apply_affine(M, corners)
    t_lo = np.clip(np.floor(mapped.min(0)).astype(int), 0, np.array(sshape) - 1)
    t_hi = np.clip(np.ceil(mapped.max(0)).astype(int) + 1, t_lo + 1, np.array(sshape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(t_lo, t_hi))
    box_shape = tuple(int(b - a) for a, b in zip(t_lo, t_hi))
    field = None
    if options.deformable and min(box_shape) >= 4:
        fd = min(1.0, (options.deform_voxels / float(np.prod(box_shape))) ** (1 / 3))
        d_shape = level_shape(box_shape, fd)
        fd_vec = np.array(d_shape) / np.array(box_shape)
        # Template level with the same factor (same voxel size on both sides).
        td_shape = level_shape(tshape, float(fd_vec.mean()))
        td = resample(template, td_shape, normalize=True) if td_shape != tshape else template
        roi_d = resample(template_roi.astype(np.float32), td_shape) > 0.5
        sd = target[:, box[0], box[1], box[2]]
        sd = resample(sd, d_shape, normalize=True) if d_shape != box_shape else sd
        St = scale_matrix(np.array(td_shape) / tshape)
        # crop-level voxel u -> target working voxel: (u + 0.5) / f - 0.5 + lo
        Sb = scale_matrix(fd_vec)
        Sb[:3, 3] -= fd_vec * t_lo
        M_d = Sb @ M @ np.linalg.inv(St)
        coords = affine_coords(np.linalg.inv(M_d), d_shape)
        grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in d_shape], indexing="ij"))
        for _ in range(options.deform_iterations):
            warped = warp(td, coords)
            valid = _inside(coords, roi_d)
            if valid.sum() < 50:
                break
            d, conf = block_match(warped, sd, valid, options.deform_radius, options.patch_sigma)
            wsum = ndimage.gaussian_filter(conf, options.smoothing) + 1e-6
            d_s = np.stack([ndimage.gaussian_filter(conf * d[a], options.smoothing) / wsum for a in range(3)])
            # Composition: new backward(t) = old backward(t - d(t)).
            pull = grid - d_s
            coords = np.stack([ndimage.map_coordinates(c, pull, order=1, mode="nearest") for c in coords])
        warped = warp(td, coords)
        valid = _inside(coords, roi_d)
        if valid.any():
            score = float((warped * sd).sum(0)[valid].mean())
        # Back to the working grids: template units and the crop's full working resolution.
        to_template = (coords + 0.5) / (np.array(td_shape) / np.array(tshape))[:, None, None, None] - 0.5
        axes = [(np.arange(n) + 0.5) * fa_ - 0.5 for n, fa_ in zip(box_shape, fd_vec)]
        field = np.stack([separable_interp(c, axes, 1) for c in to_template]).astype(np.float32)
    else:
        coords = affine_coords(np.linalg.inv(M), box_shape, t_lo)
        valid = _inside(coords, template_roi)
        if valid.any():
            warped = warp(template, coords)
            score = float((warped * target[:, box[0], box[1], box[2]]).sum(0)[valid].mean())
    return Correspondence3D(M, box, field, tuple(int(s) for s in sshape), score)  # type: ignore[arg-type]
